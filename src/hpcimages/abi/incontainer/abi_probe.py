"""What the MPI library injected into this container does for mpi4py, printed as one JSON line (run *inside*).

Standard library, mpi4py and numpy only; `invoke abi` mounts it read-only and runs it under the stand-in's launcher::

    PYTHONPATH=/opt/hpcimages-bench mpiexec -n 1 python3 /opt/hpcimages-abi/abi_probe.py

(the project's bench/ mounted at /opt/hpcimages-bench, for ``mpiloaded.py``: which MPI library was loaded).

Facts: whether mpi4py loads an MPI at all (and the loader's reasons when it does not: a missing symbol,
``GLIBC_x.y not found``), the file it loaded (``/proc/self/maps``: the proof by path), the library's version
line, the MPI ABI mpi4py chose (the extension module it imported), the MPI standard version, and whether two
MPI-4.0 calls exist in the library (mpi4py raises NotImplementedError for functions an older library lacks).
"""

from __future__ import annotations

import json
import sys


def loaded_files() -> list[str]:
    try:
        from mpiloaded import loaded_files as files  # bench/mpiloaded.py: the runner puts bench/ on PYTHONPATH
    except ModuleNotFoundError:
        raise SystemExit("mpiloaded.py is not importable: mount the project's bench/ folder and put it on "
                         "PYTHONPATH (PYTHONPATH=/opt/hpcimages-bench)") from None

    return files()


def mpi4_calls(MPI) -> dict[str, str]:
    """Two MPI-4.0 functions, called on COMM_SELF: 'ok', or what happened instead."""
    import numpy as np

    out = {}
    calls = {
        "MPI_Isendrecv": lambda: MPI.COMM_SELF.Isendrecv(np.zeros(4), 0, 0, np.zeros(4), 0, 0).Wait(),
        "MPI_Info_create_env": lambda: MPI.Info.Create_env().Free(),
    }
    for name, call in calls.items():
        try:
            call()
            out[name] = "ok"
        except NotImplementedError:
            out[name] = "NotImplementedError (mpi4py's fallback: the library lacks it)"
        except Exception as exc:  # an MPI error is a fact too
            out[name] = f"{exc.__class__.__name__}: {str(exc)[:200]}"
    return out


def main() -> None:
    facts: dict[str, object] = {"python": sys.version.split()[0]}
    try:
        import mpi4py

        facts["mpi4py"] = mpi4py.__version__
    except Exception as exc:
        facts["error"] = f"mpi4py is not installed: {exc}"
        print(json.dumps(facts))
        return
    try:
        from mpi4py import MPI
    except Exception as exc:
        facts["error"] = f"{exc.__class__.__name__}: {exc}"
        facts["files"] = loaded_files()
        print(json.dumps(facts))
        return
    facts["files"] = loaded_files()
    facts["library_version"] = MPI.Get_library_version().strip().splitlines()[0].strip()
    facts["extension"] = MPI.__file__.rsplit("/", 1)[-1]
    facts["mpiabi"] = facts["extension"].split(".")[1] if facts["extension"].count(".") > 2 else "built-in"
    abi_version = getattr(MPI, "Get_abi_version", lambda: (-1, -1))()
    facts["abi_version"] = list(abi_version)
    if facts["mpiabi"] == "built-in" and abi_version[0] >= 1:
        facts["mpiabi"] = "mpiabi"  # built for the MPI-5 standard ABI (MPI4PY_BUILD_MPIABI=1)
    facts["mpi_version"] = "{}.{}".format(*MPI.Get_version())
    facts["mpi4"] = mpi4_calls(MPI)
    print(json.dumps(facts))


if __name__ == "__main__":
    main()

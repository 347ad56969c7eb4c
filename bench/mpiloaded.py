"""Which MPI library this process loaded: the project's one answer, for the benchmark scripts, the in-image probes
(``invoke check``, ``invoke abi``) and the Slurm bind-model pre-flight.

Standard library only, so it runs wherever the scripts of ``bench/`` run (``mpirun -n 2 python3 osu_bw.py``, with
nothing else on the path): a script imports it from its own folder. A soname proves nothing (the loader may satisfy
``libmpi.so.12`` with the image's own copy); the file the process mapped does, so the answer is read from
``/proc/self/maps`` after mpi4py has chosen and loaded its library. Run alone it prints that answer as JSON::

    python3 mpiloaded.py      # {"files": ["/usr/local/lib/libmpi.so.12"], "version": "MPICH Version: ...", ...}
"""

from __future__ import annotations

import json
import re

#: the MPI library files of every implementation the project binds (libmpi.so.12/.40, libmpich, libmpi_abi)
LIBRARY_RE = re.compile(r"/lib(mpi|mpich)[^/ ]*[.]so")


def loaded_files(maps: str = "/proc/self/maps") -> list[str]:
    """The MPI library files this process has mapped, sorted ([] where /proc cannot be read)."""
    try:
        with open(maps, encoding="utf-8") as lines:
            return sorted({line.split()[-1] for line in lines if LIBRARY_RE.search(line)})
    except OSError:
        return []


def library_file() -> str:
    """The loaded MPI library files as one line ("unknown" when none is mapped)."""
    return " ".join(loaded_files()) or "unknown"


def mpi_abi(MPI) -> str:
    """The MPI ABI mpi4py selected for the loaded library: its extension module, MPI.<abi>.cpython-*.so
    (``mpich``, ``openmpi``, ``mpiabi``), ``mpiabi`` too for an mpi4py compiled for the standard ABI alone, or
    ``built-in`` for one compiled against a single MPI's own ABI."""
    parts = (getattr(MPI, "__file__", "") or "").rsplit("/", 1)[-1].split(".")
    if len(parts) > 3:
        return parts[1]
    standard = getattr(MPI, "Get_abi_version", lambda: (-1, -1))()[0] >= 1
    return "mpiabi" if standard else "built-in"  # mpiabi: built for the MPI-5 standard ABI (MPI4PY_BUILD_MPIABI)


def main() -> None:
    import mpi4py

    mpi4py.rc.initialize = False
    mpi4py.rc.finalize = False
    from mpi4py import MPI

    print(json.dumps({"files": loaded_files(), "version": MPI.Get_library_version().strip(), "abi": mpi_abi(MPI)}))


if __name__ == "__main__":
    main()

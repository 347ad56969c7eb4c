"""Facts about the image it runs in, printed as one JSON object (run *inside* a container).

Standard library only: it runs with the image's own ``python3``, mounted read-only by ``invoke check``::

    docker run --rm -v .../incontainer:/opt/hpcimages-probe:ro -v .../bench:/opt/hpcimages-bench:ro \\
        -e PYTHONPATH=/opt/hpcimages-bench IMAGE python3 /opt/hpcimages-probe/probe.py \\
        --import mpi4py --import numpy --extension mpi4py.MPI

(bench/ is mounted for ``mpiloaded.py``, the one reader of which MPI library a process loaded.)
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

LOCK_DIR = Path("/usr/local/share/hpcimages/requirements")
DT_NEEDED, DT_STRTAB, DT_RPATH, DT_RUNPATH = 1, 5, 15, 29
PT_LOAD, PT_DYNAMIC = 1, 2
ALLOWED_WHEEL_DIRS = ("/usr/share/python-wheels",)  # Debian's ensurepip wheels, part of python3-venv
SECRET_NAMES = (".netrc", ".pypirc", ".git-credentials", "credentials.json", "id_rsa", "id_ed25519")


def elf_dynamic(path: str) -> dict[str, list[str]]:
    """DT_NEEDED, DT_RPATH and DT_RUNPATH of a 64-bit little-endian ELF shared object."""
    data = Path(path).read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError(f"{path} is not a 64-bit little-endian ELF file")
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    loads, dynamic = [], None
    for i in range(phnum):
        p_type, _, p_offset, p_vaddr, _, p_filesz, _, _ = struct.unpack_from("<IIQQQQQQ", data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == PT_DYNAMIC:
            dynamic = (p_offset, p_filesz)
    if dynamic is None:
        return {"needed": [], "rpath": [], "runpath": [], "static": ["no dynamic section"]}
    entries = []
    for off in range(dynamic[0], dynamic[0] + dynamic[1], 16):
        tag, value = struct.unpack_from("<qQ", data, off)
        if tag == 0:
            break
        entries.append((tag, value))
    strtab_vaddr = next(v for t, v in entries if t == DT_STRTAB)
    strtab = next(off + strtab_vaddr - vaddr for vaddr, off, size in loads if vaddr <= strtab_vaddr < vaddr + size)

    def string(offset: int) -> str:
        end = data.index(b"\0", strtab + offset)
        return data[strtab + offset:end].decode()

    names = {DT_NEEDED: "needed", DT_RPATH: "rpath", DT_RUNPATH: "runpath"}
    result: dict[str, list[str]] = {"needed": [], "rpath": [], "runpath": []}
    for tag, value in entries:
        if tag in names:
            result[names[tag]].append(string(value))
    return result


def ldd(path: str) -> dict[str, str]:
    proc = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
    resolved = {}
    for line in proc.stdout.splitlines():
        match = re.match(r"\s*(\S+)\s+=>\s+(\S+)", line)
        if match:
            resolved[match.group(1)] = match.group(2)
    return resolved


def extension_facts(module: str) -> dict[str, object]:
    """Where a compiled module lives and how it links (mpi4py.MPI resolves to MPI.mpich.*.so)."""
    if module.startswith("/"):  # a shared library by path (HDF5's, which h5py loads): no module to find
        return _elf_facts(module) if os.path.isfile(module) else {"error": f"{module} does not exist"}
    try:
        spec = importlib.util.find_spec(module)
    except ImportError as exc:  # the parent package is missing
        return {"error": f"module {module} not found ({exc})"}
    if spec is None or spec.origin is None:
        return {"error": f"module {module} not found"}
    origin = spec.origin
    loaded = getattr(sys.modules.get(module), "__file__", "") or ""
    if not origin.endswith(".so") and loaded.endswith(".so"):
        origin = loaded  # the extension mpi4py chose for this image's MPI (MPI.openmpi.*.so in an Open MPI image)
    if not origin.endswith(".so"):  # mpi4py 4 loads MPI.<abi>.*.so from a small Python shim
        candidates = sorted(Path(origin).parent.glob(f"{module.rsplit('.', 1)[-1]}.mpich.*.so")) or \
            sorted(Path(origin).parent.glob(f"{module.rsplit('.', 1)[-1]}*.so"))
        if not candidates:
            return {"error": f"no compiled extension found for {module} next to {origin}"}
        origin = str(candidates[0])
    return _elf_facts(origin)


def _elf_facts(origin: str) -> dict[str, object]:
    facts: dict[str, object] = {"path": origin}
    try:
        facts.update(elf_dynamic(origin))
    except (OSError, ValueError, StopIteration) as exc:
        facts["error"] = f"cannot read {origin}: {exc}"
    facts["ldd"] = ldd(origin)
    return facts


def locked_pins() -> dict[str, str]:
    pins = {}
    for lock in sorted(LOCK_DIR.glob("*.txt")):
        for line in lock.read_text().splitlines():
            match = re.match(r"^([A-Za-z0-9_.-]+)==([^\s\\;]+)", line)
            if match:
                pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def installed(names: list[str]) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def try_import(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # any failure to import is a finding, not a crash of the probe
        return f"{exc.__class__.__name__}: {exc}"
    return None


def mpi_library_version() -> str | None:
    try:
        from mpi4py import MPI
    except Exception as exc:
        return f"ERROR {exc.__class__.__name__}: {exc}"
    return MPI.Get_library_version().strip()


def mpi_abi_version() -> list | None:
    """MPI_Abi_get_version through mpi4py: [1, 0] for the MPI-5 standard ABI, [-1, -1] for an MPICH-ABI build,
    None where mpi4py (before 4.1) or the library cannot say."""
    try:
        from mpi4py import MPI

        return list(MPI.Get_abi_version())
    except Exception:
        return None


def loaded_mpi_libraries() -> list:
    """The MPI library files this process mapped (after mpi4py chose and loaded one): the proof by path."""
    try:
        from mpiloaded import loaded_files  # bench/mpiloaded.py: the checker puts bench/ on PYTHONPATH
    except ModuleNotFoundError:
        raise SystemExit("mpiloaded.py is not importable: mount the project's bench/ folder and put it on "
                         "PYTHONPATH (PYTHONPATH=/opt/hpcimages-bench)") from None

    return loaded_files()


def ompi_version() -> str | None:
    """Open MPI's version by its own tool (None where there is no Open MPI)."""
    try:
        proc = subprocess.run(["ompi_info", "--version"], capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"Open MPI v(\S+)", proc.stdout)
    return match.group(1) if match else None


def mpi4py_abi() -> str | None:
    """The ABI whose extension mpi4py chose for the library it found (mpiloaded.mpi_abi): mpich, openmpi, mpiabi."""
    try:
        from mpi4py import MPI
        from mpiloaded import mpi_abi
    except Exception:  # mpi4py that does not load is reported by mpi_library_version
        return None
    return mpi_abi(MPI)


def mpichversion() -> str | None:
    try:
        proc = subprocess.run(["mpichversion"], capture_output=True, text=True, check=False)
    except OSError:
        return None
    match = re.search(r"MPICH Version:\s*(\S+)", proc.stdout)
    return match.group(1) if match else None


def _system_trust_or_package_data(folder: str) -> bool:
    """The distribution's trust store, and data files of installed packages (certifi's bundle, test keys)."""
    return folder.startswith(("/etc/ssl", "/usr/share/ca-certificates", "/usr/lib/ssl")) or \
        "/dist-packages/" in folder + "/" or "/site-packages/" in folder + "/"


#: an MPI library's file name: what an image of one MPI must hold of no other (libmpich in an Open MPI image)
MPI_LIBRARY_RE = re.compile(r"^lib(mpi|mpich|mpi_abi|mpi_abi_mpich|pmpi|mpicxx|mpifort|open-pal|open-rte)\.so")


def scan() -> tuple[list[str], list[str]]:
    """One walk of the file system: (leftovers, the MPI library files found)."""
    found, libraries = [], []
    for root, dirs, files in os.walk("/", topdown=True):
        if root in ("/proc", "/sys", "/dev") or root.startswith((*ALLOWED_WHEEL_DIRS, "/opt/hpcimages")):
            dirs[:] = []
            continue
        dirs[:] = [d for d in dirs if not os.path.ismount(os.path.join(root, d))]
        if root.endswith("/.cache/pip"):
            found.append(root)
        for name in files:
            path = os.path.join(root, name)
            if MPI_LIBRARY_RE.match(name):
                libraries.append(path)
            key_material = name.endswith((".pem", ".key")) and not _system_trust_or_package_data(root)
            if name.endswith(".whl") or name in SECRET_NAMES or key_material:
                found.append(path)
    extra_ca = Path("/usr/local/share/ca-certificates")
    if extra_ca.is_dir():
        found += [str(p) for p in extra_ca.rglob("*") if p.is_file()]
    for conf in (Path("/etc/pip.conf"), Path("/root/.config/pip/pip.conf"), Path("/root/.pip/pip.conf")):
        if conf.is_file():
            found.append(str(conf))
    return found, sorted(libraries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--import", dest="imports", action="append", default=[])
    parser.add_argument("--extension", dest="extensions", action="append", default=[])
    parser.add_argument("--scan", action="store_true", help="scan the file system for leftovers")
    args = parser.parse_args()
    pins = locked_pins()
    found, libraries = scan() if args.scan else ([], [])
    facts = {
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "mpichversion": mpichversion(),
        "ompi_version": ompi_version(),
        "mpi_library_version": mpi_library_version(),
        "mpi_abi_version": mpi_abi_version(),
        "mpi4py_abi": mpi4py_abi(),
        "mpi4py_mpiabi_env": os.environ.get("MPI4PY_MPIABI", ""),
        "mpi_library_files": loaded_mpi_libraries(),
        "ld_library_path": os.environ.get("LD_LIBRARY_PATH", ""),
        "pins": pins,
        "installed": installed(sorted(pins)),
        "imports": {m: try_import(m) for m in args.imports},
        "extensions": {m: extension_facts(m) for m in args.extensions},
        "leftovers": found,
        "mpi_libraries": libraries,
    }
    print(json.dumps(facts))


if __name__ == "__main__":
    main()

"""Runs inside an image (no network, read-only mount): what the catalogue and the SBOM say the image holds, as one
JSON line: Python, the OS, the MPI library, mpi4py and HDF5 as the image reports them, pip's installed
distributions and dpkg's installed packages. Only the standard library; it imports nothing of hpcimages."""

import importlib.metadata as md
import json
import platform
import re
import subprocess


def first_line(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr).strip() else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"ERROR {exc}"


def mpi_library():
    code = "from mpi4py import MPI; print(MPI.Get_library_version().strip().splitlines()[0])"
    return first_line(["python3", "-c", code])


def debian_packages():
    """name -> (version, architecture) of every package dpkg knows as installed."""
    try:
        fields = "${Package}\t${Version}\t${Architecture}\t${db:Status-Abbrev}\n"
        out = subprocess.run(["dpkg-query", "-W", "-f", fields], capture_output=True, text=True, timeout=60,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 4 and parts[3].startswith("ii"):
            found[parts[0]] = (parts[1], parts[2])
    return found


def module_version(code):
    """What a one-line Python expression prints in a fresh interpreter ("" when the import fails)."""
    line = first_line(["python3", "-c", code])
    return "" if line.startswith(("ERROR", "Traceback")) or " " in line else line


def os_release():
    try:
        with open("/etc/os-release", encoding="utf-8") as handle:
            pairs = dict(line.rstrip("\n").split("=", 1) for line in handle if "=" in line)
        return pairs.get("PRETTY_NAME", "").strip('"')
    except OSError:
        return ""


def main():
    pip = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name:
            pip[name.lower()] = dist.version
    debian = debian_packages()
    library = mpi_library()
    version = re.search(r"(\d+\.\d+(?:\.\d+)?)", library)  # "MPICH Version: 4.3.2", "Open MPI v5.0.11, ..."
    print(json.dumps({
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "os": os_release(),
        "mpichversion": first_line(["mpichversion", "--version"]).replace("MPICH Version:", "").strip(),
        "mpi_library": library,
        "mpi_version": version.group(1) if version and not library.startswith("ERROR") else "",
        "mpi4py": module_version("import mpi4py; print(mpi4py.__version__)"),
        "hdf5": module_version("import h5py; print(h5py.version.hdf5_version)"),
        "pip": dict(sorted(pip.items())),
        "debian": {name: version for name, (version, _) in sorted(debian.items())},
        "debian_arch": {name: arch for name, (_, arch) in sorted(debian.items())},
    }))


if __name__ == "__main__":
    main()

"""Runs inside an image (no network, read-only mount): what the catalogue says the image holds, as one JSON line.
Only the standard library; it imports nothing of hpcimages."""

import importlib.metadata as md
import json
import platform
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
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Package}\t${Version}\n"], capture_output=True,
                             text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


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
    print(json.dumps({
        "python": platform.python_version(),
        "os": os_release(),
        "mpichversion": first_line(["mpichversion", "--version"]).replace("MPICH Version:", "").strip(),
        "mpi_library": mpi_library(),
        "pip": dict(sorted(pip.items())),
        "debian": dict(sorted(debian_packages().items())),
    }))


if __name__ == "__main__":
    main()

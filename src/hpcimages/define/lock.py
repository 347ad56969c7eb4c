"""Pinned, hashed requirement locks per image family and Python (and CUDA) version.

``invoke lock`` compiles each family's ``requirements.in`` with ``uv pip compile --generate-hashes``
*for the target Python version* (not the host's). A child family (hpc-python, cuda-python) is
compiled against its parent's lock, so it never moves a package the parent pinned. The MPI wheels
(``mpich==X``) get a lock of their own, shared by every cell that installs them.

Every lock starts with a header that names the command that regenerates it, the sha256 of its inputs and the
sha256 of its own content, so ``lock_drift`` can tell a stale lock, and a lock edited by hand, without the
network.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import LockError
from ..files import write_text
from .matrix import Cell, Matrix, Profile

TARGET_PLATFORM = "x86_64-unknown-linux-gnu"
INPUT_MARK = "# input-sha256: "
CONTENT_MARK = "# content-sha256: "


#: What compiling mpi4py's sdist for the MPI-5 standard ABI needs besides a C compiler (its pyproject and
#: conf/requirements-build-cython.txt); a build stage installs them, the image never holds them.
MPIABI_BUILD_INPUT = (
    "# build dependencies of mpi4py's sdist for the MPI-5 standard ABI (MPI4PY_BUILD_MPIABI=1)\n"
    "cython>=3.0.1\nsetuptools>=42\n"
)

#: What compiling h5py's sdist against a parallel HDF5 needs besides numpy and mpi4py (the parent's pins), the
#: compiler and HDF5 (its pyproject's build-system); `wheel` repacks the wheel once RUNPATH is stripped.
H5PY_BUILD_INPUT = (
    "# build dependencies of h5py's sdist with HDF5_MPI=ON (a build stage installs them, the image never does)\n"
    "cython>=3.0.0,<4\npackaging>=23.0\npkgconfig>=1.5.5\nsetuptools>=77.0.1\nwheel\n"
)


@dataclass(frozen=True)
class LockJob:
    """One lock to compile: output path, input text, optional constraint lock, target Python."""

    output: str
    input_text: str
    input_name: str
    python: str
    constraint: str | None

    def input_digest(self, root: Path) -> str:
        h = hashlib.sha256(self.input_text.encode())
        if self.constraint:
            h.update(b"\0constraint\0")
            h.update(_strip_header((root / self.constraint).read_text(encoding="utf-8")).encode())
        h.update(f"\0python {self.python}\0platform {TARGET_PLATFORM}".encode())
        return h.hexdigest()


def lock_jobs(matrix: Matrix, profile: str | Profile | None = None) -> list[LockJob]:
    """Every lock the matrix (or one profile) needs, parents before children (a child is constrained by its
    parent's lock)."""
    jobs: dict[str, LockJob] = {}
    for cell in matrix.all_cells if profile is None else matrix.cells(profile):
        mpi_out = cell.mpi_lock
        if mpi_out and mpi_out not in jobs:
            jobs[mpi_out] = LockJob(mpi_out, _mpi_wheel_input(cell.mpi.name, cell.mpi.version),
                                    f"{cell.mpi.name}=={cell.mpi.version}", "3.11", None)
        build_out = cell.build_lock
        if build_out and build_out not in jobs:
            text, what = (H5PY_BUILD_INPUT, "h5py's sdist build with MPI") if cell.sdist == "h5py" else \
                (MPIABI_BUILD_INPUT, "mpi4py's sdist build for the standard ABI")
            jobs[build_out] = LockJob(build_out, text, what, cell.python, None)
        out = cell.lock
        if out and out not in jobs:
            jobs[out] = LockJob(out, _input_text(matrix, cell), cell.family.requirements or "", cell.python,
                                _parent_lock(matrix, cell))
    if profile is None or jobs:
        for host in matrix.host_mpis.values():
            # a stand-in that an image cell also installs shares that cell's lock (same input, same file)
            if host.lock and host.lock not in jobs:
                cells_install = any(c.mpi.name == host.package and c.mpi.version == host.version
                                    and c.mpi.method == "wheel" for c in matrix.all_cells)
                text = _mpi_wheel_input(host.package, host.version) if cells_install else \
                    _swap_input(host.package, host.version) if host.swap else \
                    f"# a host-MPI stand-in of the ABI table (invoke abi)\n{host.package}=={host.version}\n"
                jobs[host.lock] = LockJob(host.lock, text, f"{host.package}=={host.version}", "3.11", None)
    return list(jobs.values())


def _mpi_wheel_input(name: str, version: str) -> str:
    return f"# the MPI of the cells that install {name} {version} as a wheel\n{name}=={version}\n"


def _swap_input(name: str, version: str) -> str:
    return f"# the stand-in host MPI of the bind-model checks (invoke check)\n{name}=={version}\n"


def _input_text(matrix: Matrix, cell: Cell) -> str:
    assert cell.family.requirements is not None
    text = (matrix.root / cell.family.requirements).read_text(encoding="utf-8")
    return text.replace("${CUDA_VERSION}", cell.cuda or "")


def _parent_lock(matrix: Matrix, cell: Cell) -> str | None:
    if cell.family.parent is None:
        return None
    parent = matrix.families[cell.family.parent]
    parent_cell = Cell(parent, cell.python, cell.mpi, cell.cuda if "cuda" in parent.axes else None)
    return parent_cell.lock


def _strip_header(text: str) -> str:
    return "".join(line for line in text.splitlines(True) if not line.startswith("#"))


def content_digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def header(job: LockJob, root: Path, body: str) -> str:
    constraint = f", constrained by {job.constraint}" if job.constraint else ""
    return (
        "# GENERATED FILE - DO NOT EDIT. Regenerate with `invoke lock`.\n"
        f"# From {job.input_name} for Python {job.python} ({TARGET_PLATFORM}){constraint}.\n"
        f"{INPUT_MARK}{job.input_digest(root)}\n"
        f"{CONTENT_MARK}{content_digest(body)}\n"
    )


def compile_lock(job: LockJob, root: Path, upgrade: bool = False) -> Path:
    """Run uv for one lock; write it atomically; return its path."""
    out = root / job.output
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "requirements.in"
        src.write_text(job.input_text, encoding="utf-8")
        raw = Path(tmp) / "lock.txt"
        # --no-python-downloads: without an interpreter of the lock's Python, uv would try to download one (for
        # building sdists' metadata) and, offline, wait 12 s on retries per lock before using the one it has; the
        # lock is the same either way (measured: dask against hpc-python's Python 3.10 pins)
        cmd = [_uv(), "pip", "compile", str(src), "--quiet", "--no-python-downloads", "--generate-hashes",
               "--no-header", "--python-version", job.python, "--python-platform", TARGET_PLATFORM,
               "--output-file", str(raw), "--no-annotate"]
        if job.constraint:
            cmd += ["--constraint", str(root / job.constraint)]
        if out.is_file() and not upgrade:
            # keep existing pins unless asked to upgrade: a lock refresh should not move everything
            seed = Path(tmp) / "previous.txt"
            seed.write_text(out.read_text(encoding="utf-8"), encoding="utf-8")
            raw.write_text(seed.read_text(encoding="utf-8"), encoding="utf-8")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LockError(f"{job.output}: uv pip compile failed:\n{proc.stderr.strip()}")
        body = raw.read_text(encoding="utf-8")
    return write_text(out, header(job, root, body) + body)


def _marked(text: str, mark: str) -> str | None:
    return next((line[len(mark):].strip() for line in text.splitlines() if line.startswith(mark)), None)


def lock_drift(matrix: Matrix) -> list[str]:
    """Locks that are missing, whose inputs changed since they were compiled, or whose own content was changed
    (an edited pin or hash would otherwise only show in the locks compiled against it)."""
    problems = []
    for job in lock_jobs(matrix):
        path = matrix.root / job.output
        if not path.is_file():
            problems.append(f"{job.output}: missing (run `invoke lock`)")
            continue
        text = path.read_text(encoding="utf-8")
        if _marked(text, CONTENT_MARK) != content_digest(_strip_header(text)):
            problems.append(f"{job.output}: its content differs from what `invoke lock` wrote (edited by hand?): "
                            "run `invoke lock` (or `git checkout` it)")
        elif _marked(text, INPUT_MARK) != job.input_digest(matrix.root):
            problems.append(f"{job.output}: its inputs changed since it was compiled (run `invoke lock`)")
    return problems


def locked_pins(path: Path) -> dict[str, str]:
    """name -> version of a lock file."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, _, rest = line.partition("==")
            pins[name.strip().lower()] = rest.split()[0].rstrip("\\").strip()
    return pins


def _uv() -> str:
    candidate = Path(sys.executable).parent / "uv"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    try:
        from uv import find_uv_bin  # the `uv` wheel ships its binary and this helper
    except ImportError:  # pragma: no cover - uv is a pinned dependency
        raise LockError("uv is not installed: run the set-up command from the README") from None
    return find_uv_bin()


def requirement_block(path: Path, package: str) -> str:
    """One package's pin and hash lines of a lock, as a requirements file of its own (``--require-hashes``)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.lower().startswith(f"{package.lower()}=="):
            block = [line]
            for follow in lines[i + 1:]:
                if not follow.startswith(" "):
                    break
                block.append(follow)
            return "\n".join(block).rstrip(" \\") + "\n"
    raise LockError(f"{path.name} pins no {package}")

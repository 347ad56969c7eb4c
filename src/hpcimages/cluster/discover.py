"""``invoke site discover``: the bind model of a site, found from what its host MPI really loads.

On a node of the site (through the site's own launcher, or on this machine), ``bench/hostmpi_probe.py`` (standard
library only) reads the host MPI library: its ABI, its load closure as the loader resolves it, the symbol versions
every file needs; then two ranks of the host MPI exchange messages and report every file they mapped, which names the
transport plugins the library opened at run time (UCX's modules, libfabric's providers) that no closure shows.

From that come:

- the bind set: every host file the MPI needs, bound one by one into one folder of the container (``HOST_LIB``),
  the plugin folders placed where the bound libraries look for them (UCX looks in ``ucx/`` beside ``libucs``), and
  never what must stay the image's own (``IMAGE_OWN``: the loader, the C library family, the C++ runtime);
- the fit table: for every cell of a matrix profile, whether this host MPI can run in it, and why not (its ABI, the
  highest ``GLIBC_``/``GLIBCXX_`` versions the bound files need against the image's);
- ``slurm/sites/<name>.toml`` (the existing schema: ``[host_mpi] bind`` and ``lib_path``), the users' Lmod module
  ``slurm/modules/hpcimages-bind/<name>.lua``, and the record ``slurm/sites/<name>.discovery.json`` that
  ``invoke site verify`` reads.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tomlkit

from .. import mpirun, tables
from .. import state as statefile
from ..define.matrix import Cell, Matrix, select_cells
from ..define.sites import ENV_NAME_RE, SAFE_CHARS, SAFE_RE, SITE_NAME_RE, Site, SiteError, load_site, parse_site
from ..engine import find_image
from ..errors import HpcImagesError
from ..files import write_json, write_text
from ..sif import apptainer
from ..validate import shown
from .slurm import SlurmClient

PROBE = "hostmpi_probe.py"
#: where the bound host files land inside the container: a folder of its own, so nothing of the image is hidden
HOST_LIB = "/opt/hpcimages/host-mpi/lib"
#: never bound: the image's own. The loader and the C library are one set the image's programs were built for (a
#: host libc bound over it would break every program of the image); the C++ runtime is one per process and the
#: image's Python extensions load it first. The fit table compares the versions the host files need from them.
IMAGE_OWN = re.compile(r"^(ld-linux[^/]*|ld64|libc|libm|libmvec|libpthread|libdl|librt|libutil|libresolv|libanl|"
                       r"libnsl|libBrokenLocale|libthread_db|libcrypt|libnss_[a-z0-9]+|libstdc\+\+|libgcc_s|"
                       r"libatomic)[.]so")
IMAGE_OWN_RULE = ("not bound, the image's own: the loader and the C library family (one set, which the image's "
                  "programs were built for) and the C++ runtime (libstdc++, libgcc_s: one per process, which the "
                  "image's extensions load first); the host files' GLIBC_/GLIBCXX_ needs are compared with the "
                  "image's instead")
SONAMES = {"mpich": "libmpi.so.12", "standard": "libmpi_abi.so.1", "openmpi": "libmpi.so.40"}
ABI_NAMES = {"mpich": "the MPICH ABI (libmpi.so.12)", "standard": "the MPI-5 standard ABI (libmpi_abi.so.1)",
             "openmpi": "Open MPI's ABI (libmpi.so.40)", "another ABI": "another ABI"}
CELL_ABI = {"mpich": "mpich", "mpi": "standard"}
PROBE_TIMEOUT_S = 300
LIBRARY_FILE_RE = re.compile(r"[.]so([.]\d+)*$")
ANSWER_RE = re.compile(r"^@probe (\S+) (\d{1,6}) (\d{1,6}) (.*)$")
Progress = Callable[[str], None]


class DiscoverError(HpcImagesError):
    """Discovery cannot go on: names what is wrong and what to do."""


@dataclass
class FitRow:
    cell: str
    image: str
    fits: bool
    reason: str
    glibc: str = ""
    glibcxx: str = ""


@dataclass
class Discovery:
    """What ``slurm/sites/<name>.discovery.json`` holds: the findings and the fit table ``verify`` starts from."""

    site: str
    node: str
    library: str  # the host MPI library as named (--mpi-lib or found)
    abi: str
    version: str
    libraries: dict[str, str]  # soname the images load (libmpi.so.12, libmpi_abi.so.1) -> host file
    binds: list[str]  # SRC:DST, as in the profile
    plugins: list[str]  # host files the two ranks mapped at run time that no closure names
    plugin_dirs: list[str]  # host folders bound whole: SRC:DST
    needs_glibc: str
    needs_glibcxx: str
    fit: list[FitRow]
    env: dict[str, str]  # what the host MPI needs set, as given on the node (bare metal)
    profile_sha256: str
    created: str
    seconds: float
    notes: list[str] = field(default_factory=list)


def record_path(sites_dir: Path, name: str) -> Path:
    return sites_dir / f"{name}.discovery.json"


def module_path(root: Path, name: str) -> Path:
    return root / "slurm" / "modules" / "hpcimages-bind" / f"{name}.lua"


def profile_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_discovery(sites_dir: Path, name: str) -> Discovery:
    path = record_path(sites_dir, name)
    if not path.exists():
        raise DiscoverError(f"{path} does not exist: run `invoke site discover --name {name} ...` first")
    return statefile.typed(Discovery, statefile.load_json(path, "discovery record"), path, "discovery")


# -------------------------------------------------------------------------------------------------------------------
# running the probe on a node


class Node:
    """Runs the probe where the host MPI is: through the launcher of a site profile (``--via``), or here."""

    def __init__(self, root: Path, via: Site | None, mpiexec: str = "") -> None:
        self.root, self.via, self.mpiexec = root, via, mpiexec
        bench = via.container.bench_dir if via and via.container.bench_dir else str(root / "bench")
        self.probe = f"{bench.rstrip('/')}/{PROBE}"

    def where(self) -> str:
        return f"a node of {self.via.name} (through {self.via.launcher.command})" if self.via else "this machine"

    def argv(self, ranks: int, args: list[str], env: dict[str, str] | None = None) -> list[str]:
        # the host MPI's environment goes in through `env`, before the interpreter starts: the loader reads
        # LD_LIBRARY_PATH once, at start (Intel MPI dlopens its libfabric.so.1 by name)
        python = ["env", *(f"{k}={v}" for k, v in (env or {}).items()), "python3" if self.via else sys.executable]
        if self.via:
            site = self.via
            launcher = SlurmClient(self.root, site).command(site.launcher.command) if site.slurm.commands else \
                self._which(site.launcher.command, "is not on the PATH: discover through a site whose launcher "
                                                   "runs here, or on a login node of the site")
            words = [launcher, "--nodes=1", f"--ntasks={ranks}", "--time=5"]
            words += [f"--partition={site.slurm.partition}"] if site.slurm.partition else []
            words += [f"--account={site.slurm.account}"] if site.slurm.account else []
            words += [f"--mpi={site.launcher.mpi}"] if site.launcher.mpi != "none" else []
            words += list(site.launcher.options)
            return [*words, *python, self.probe, *args]
        if ranks == 1:
            return [*python, self.probe, *args]
        launcher = self.mpiexec or self._which("mpiexec", "is not on this machine's PATH: name the host MPI's "
                                                          "launcher with --mpiexec, or discover through a site "
                                                          "(--via SITE)")
        return [launcher, "-n", str(ranks), *python, self.probe, *args]

    @staticmethod
    def _which(name: str, why: str) -> str:
        found = shutil.which(name)
        if not found:
            raise DiscoverError(f"the launcher `{name}` {why}")
        return found

    def run(self, ranks: int, args: list[str], env: dict[str, str] | None = None) -> list[dict]:
        """One JSON object per rank, or the probe's own error."""
        argv = self.argv(ranks, args, env)
        try:
            proc = subprocess.run(argv, cwd=self.root, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S,
                                  check=False)
        except FileNotFoundError:
            raise DiscoverError(f"the launcher {argv[0]} cannot be run on {self.where()}") from None
        except subprocess.TimeoutExpired:
            raise DiscoverError(f"`{' '.join(argv)}` did not finish in {PROBE_TIMEOUT_S}s on {self.where()}") \
                from None
        found = answers(proc.stdout)
        errors = [f["error"] for f in found if isinstance(f, dict) and "error" in f]
        if errors:
            raise DiscoverError(f"on {self.where()}: {errors[0]}")
        found = [f for f in found if isinstance(f, dict)]
        if proc.returncode != 0 or len(found) != ranks:
            tail = "; ".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
            raise DiscoverError(f"`{' '.join(argv)}` on {self.where()} failed (exit {proc.returncode}, "
                                f"{len(found)} of {ranks} answers): {tail[:600] or 'no output'}")
        return found


def answers(text: str) -> list[dict]:
    """The probe's answers in some output, put back together from its numbered lines (``@probe ID I N TEXT``), in
    the order they began; an answer cut short or not JSON is left out."""
    parts: dict[str, dict[int, str]] = {}
    counts: dict[str, int] = {}
    for line in text.splitlines():
        match = ANSWER_RE.match(line)
        if match:
            ident, index, count, part = match.groups()
            parts.setdefault(ident, {})[int(index)] = part
            counts[ident] = int(count)
    found = []
    for ident, pieces in parts.items():
        if len(pieces) != counts[ident]:
            continue
        try:
            value = json.loads("".join(pieces[i] for i in range(counts[ident])))
        except (json.JSONDecodeError, KeyError):
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


# -------------------------------------------------------------------------------------------------------------------
# what to bind


def version_key(name: str) -> tuple:
    match = re.match(r"[A-Z]+_(\d+(?:\.\d+)*)$", name)
    return tuple(int(x) for x in match.group(1).split(".")) if match else ()


def highest(names: Iterable[str], family: str) -> str:
    found = [n for n in names if re.fullmatch(rf"{family}_\d+(\.\d+)*", n)]
    return max(found, key=version_key) if found else ""


def image_own(path_or_name: str) -> bool:
    return bool(IMAGE_OWN.match(os.path.basename(path_or_name)))


@dataclass
class BindSet:
    files: dict[str, list[str]]  # host file -> the names it gets in HOST_LIB
    plugin_dirs: dict[str, str]  # host folder -> container folder
    plugins: list[str]
    needs: dict[str, list[str]]  # host file -> its version needs (GLIBC_x, GLIBCXX_y)

    def binds(self) -> list[str]:
        entries = [f"{src}:{HOST_LIB}/{name}" for src, names in sorted(self.files.items()) for name in names]
        return entries + [f"{src}:{dst}" for src, dst in sorted(self.plugin_dirs.items())]

    def highest(self, family: str) -> str:
        return highest((n for needs in self.needs.values() for n in needs), family)


SYSTEM_FOLDER_RE = re.compile(r"^/(usr/)?(local/)?lib(32|64|x32)?(/[a-z0-9_]+-linux-gnu[a-z0-9_]*)?/?$")


def system_folder(folder: str) -> bool:
    """A folder never bound whole: bound over the image's own, it would hide the image's C library."""
    return bool(SYSTEM_FOLDER_RE.match(folder)) or any(
        os.path.exists(os.path.join(folder, name)) for name in ("libc.so.6", "ld-linux-x86-64.so.2"))


def container_env(env: dict[str, str], found: BindSet) -> dict[str, str]:
    """The host MPI's environment as the container must see it: a bound file or folder by its container path."""
    # by folder and name: a value names a file as the node has it (a symlink, libpmi2.so.0), which this machine may
    # not have to resolve
    named = {(os.path.dirname(src), n) for src, names in found.files.items() for n in [*names, os.path.basename(src)]}
    folders = {os.path.dirname(src) for src in found.files}
    out = {}
    for name, value in env.items():
        if name == "LD_LIBRARY_PATH":  # inside, [host_mpi] lib_path is the library path
            continue
        plain = value.rstrip("/")
        if (os.path.dirname(plain), os.path.basename(plain)) in named:
            out[name] = f"{HOST_LIB}/{os.path.basename(plain)}"
        elif plain in found.plugin_dirs:
            out[name] = found.plugin_dirs[plain]
        elif plain in folders:
            out[name] = HOST_LIB  # the folder the bound files came from
        else:
            out[name] = value
    return out


def bind_set(inspected: list[dict], ranks: list[dict]) -> BindSet:
    """The host files to bind: each inspected library's closure and what the ranks mapped after exchanging
    messages, less the image's own; files in a folder no closure file lives in are plugins, bound as their folder,
    placed under HOST_LIB when that folder lies below a closure folder (UCX finds ``ucx/`` beside libucs)."""
    files: dict[str, list[str]] = {}
    needs: dict[str, list[str]] = {}

    def add(path: str, soname: str, file_needs: dict[str, list[str]], *extra: str) -> None:
        names = files.setdefault(path, [])
        for name in (soname or os.path.basename(path), *extra):
            if name and name not in names:
                names.append(name)
        needs[path] = sorted({n for vs in file_needs.values() for n in vs})

    for found in inspected:
        for path, entry in found["files"].items():
            if not image_own(entry["soname"] or path):
                add(path, entry["soname"], entry["needs"])
        root = found["realpath"]
        add(root, found["soname"], found["files"].get(root, {}).get("needs", {}), SONAMES.get(found["abi"], ""))
    closure_dirs = {os.path.dirname(p) for p in files}
    plugin_dirs: dict[str, str] = {}
    plugins: set[str] = set()
    foreign: list[str] = []
    for rank in ranks:
        for path, entry in rank.get("libraries", {}).items():
            if image_own(entry["soname"] or path) or not LIBRARY_FILE_RE.search(path) or path in files:
                continue
            plugins.add(path)
            folder = os.path.dirname(path)
            if folder in closure_dirs or system_folder(folder):
                # a library a plugin needs (or Slurm's libpmi2): bound one by one; a system folder is never bound
                # whole, it holds the C library
                add(path, entry["soname"], entry["needs"])
            else:
                foreign.append(path)
                needs[path] = sorted({n for vs in entry["needs"].values() for n in vs})
    bound_dirs = {os.path.dirname(p) for p in files}
    for path in foreign:
        folder = os.path.dirname(path)
        # below a folder bound files came from: the same place below HOST_LIB (UCX opens ucx/ beside libucs)
        parent = next((d for d in sorted(bound_dirs, key=len, reverse=True) if folder.startswith(d + "/")), "")
        plugin_dirs[folder] = f"{HOST_LIB}/{folder[len(parent) + 1:]}" if parent else folder
    return BindSet(files, plugin_dirs, sorted(plugins), needs)


# -------------------------------------------------------------------------------------------------------------------
# the fit table


def image_facts(client_factory: Callable[[], object], root: Path, image: str) -> dict | None:
    """glibc and GLIBCXX of a local image, read inside it (None when the engine does not hold it)."""
    client = client_factory()
    if find_image(client, image) is None:
        return None
    code, output = mpirun.run_in_image(client, image, ["python3", f"{mpirun.BENCH_MOUNT}/{PROBE}", "facts"],
                                       timeout=120, mounts=[mpirun.bench_mount(root)])
    found = answers(output)
    if code != 0 or not found:
        raise DiscoverError(f"cannot read the C library of {image}: {output.strip()[-300:]}")
    return found[-1]


def glibc_number(text: str) -> tuple:
    match = re.search(r"(\d+(?:\.\d+)+)", text)
    return tuple(int(x) for x in match.group(1).split(".")) if match else ()


def fit_row(cell: Cell, image: str, facts: dict | None, host: dict[str, str], needs_glibc: str,
            needs_glibcxx: str, host_abi: str) -> FitRow:
    abi = CELL_ABI.get(cell.mpi.abi, cell.mpi.abi)
    if abi == "openmpi":  # discover writes [host_mpi] (MPICH ABI) and verifies through srun; [open_mpi] by hand
        return FitRow(cell.ref, image, False, "an Open MPI image: discover does not write [open_mpi] yet; add it by "
                      "hand (docs/slurm.md, Open MPI images)")
    if abi not in host:
        return FitRow(cell.ref, image, False, f"the image loads {ABI_NAMES[abi]}, the host MPI offers "
                      f"{' and '.join(ABI_NAMES[a] for a in host) or ABI_NAMES[host_abi]}: another ABI")
    if facts is None:
        return FitRow(cell.ref, image, False, f"{image} is not in the local engine: build it (invoke build --only "
                      f"{cell.ref}) and discover again")
    glibc, glibcxx = facts.get("glibc", ""), facts.get("glibcxx", "")
    reasons = []
    if needs_glibc and glibc_number(needs_glibc) > glibc_number(glibc):
        reasons.append(f"needs {needs_glibc}, {cell.ref} has {glibc or 'no glibc'}")
    if needs_glibcxx and version_key(needs_glibcxx) > version_key(glibcxx or "GLIBCXX_0"):
        reasons.append(f"needs {needs_glibcxx}, {cell.ref}'s libstdc++ has {glibcxx or 'none'}")
    if reasons:
        return FitRow(cell.ref, image, False, "; ".join(reasons), glibc, glibcxx)
    return FitRow(cell.ref, image, True, f"fits: {ABI_NAMES[abi]}; {glibc} >= {needs_glibc or 'any'}", glibc, glibcxx)


def advise(rows: list[FitRow], needs_glibc: str) -> None:
    """Add to a glibc refusal which images would do."""
    fitting = [r.cell for r in rows if r.fits]
    for row in rows:
        if not row.fits and row.reason.startswith("needs GLIBC_"):
            hint = f"use an image with glibc {needs_glibc.split('_', 1)[1]} or newer"
            row.reason += f": {hint}" + (f" (here: {', '.join(fitting)})" if fitting else
                                         ", or host libraries built for an older glibc")


# -------------------------------------------------------------------------------------------------------------------
# the files discover writes


def parse_env(items: Iterable[str]) -> dict[str, str]:
    """--env NAME=VALUE, checked as a site profile checks [host_mpi] vars (they become them)."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not ENV_NAME_RE.fullmatch(name) or not SAFE_RE.fullmatch(value) or not value:
            raise DiscoverError(f"--env {shown(item)}: NAME=VALUE, a variable name and a value of {SAFE_CHARS}")
        out[name] = value
    return out


def profile_text(name: str, via: Site | None, template: Path, found: dict, binds: list[str], command: str,
                 env: dict[str, str] | None = None) -> str:
    """The site profile: the via site's (or the template's) Slurm, container and launcher sections, with a
    [host_mpi] written from what was found."""
    source = via.path if via else template
    doc = tomlkit.parse(source.read_text(encoding="utf-8"))
    header = tomlkit.document()
    header.add(tomlkit.comment(f"Written by `{command}` on {dt.date.today().isoformat()}."))
    header.add(tomlkit.comment("The [host_mpi] table is what discover found; re-run it rather than edit it by hand "
                               "(`invoke site verify` marks only the profile it verified)."))
    header.add(tomlkit.comment(f"The rest comes from {source.name}."))
    header.add(tomlkit.nl())
    header["description"] = (f"{found['version']} ({found['library']}) on {found['node']}, found by invoke site "
                             "discover")
    for key, value in doc.items():
        if key not in ("description", "host_mpi"):
            header[key] = value
    host = tomlkit.table()
    host.add(tomlkit.comment(f"Every host file the MPI needs, bound one by one into {HOST_LIB}, and plugin folders"))
    host.add(tomlkit.comment("where the bound libraries look for them. Never bound: the image's own loader, C library "
                             "and C++ runtime (docs/site.md)."))
    host["lib_path"] = [HOST_LIB]
    array = tomlkit.array()
    array.multiline(True)
    array.extend(binds)
    host["bind"] = array
    if env:
        host.add(tomlkit.nl())
        host.add(tomlkit.comment("the host MPI's environment (--env), paths as the container sees them"))
        variables = tomlkit.table()
        for key, value in env.items():
            variables[key] = value
        host["vars"] = variables
    header["host_mpi"] = host
    return tomlkit.dumps(header)


def module_text(site: Site, discovery: Discovery, command: str) -> str:
    """The users' Lmod module: the bind set and the library path, for Apptainer and SingularityCE alike."""
    lines = [f"-- hpcimages bind model for the site {site.name}: {discovery.version} ({discovery.library}).",
             f"-- Written by `{command}` on {discovery.created[:10]}; regenerate it rather than edit it.",
             f"-- Usage: module use {module_path(Path('.'), site.name).parent.parent}; "
             f"module load hpcimages-bind/{site.name}",
             "--        srun apptainer exec image.sif python3 app.py",
             f'whatis("Description: binds the host MPI ({discovery.version}) into hpcimages containers")',
             f'help([[Binds {len(discovery.binds)} host files and folders into {HOST_LIB} and puts that folder '
             'first on the\ncontainer\'s library path, for images that fit this host MPI:\n' +
             "\n".join(f"  {r.cell}" for r in discovery.fit if r.fits) + "\n]])"]
    env = [("LD_LIBRARY_PATH", ":".join(site.host_mpi.lib_path)),
           *site.host_mpi.vars, *sorted(apptainer.MPI_ENV_IN_CONTAINER.items())]
    for runtime in ("APPTAINER", "SINGULARITY"):
        for bind in site.host_mpi.bind:
            lines.append(f'append_path("{runtime}_BINDPATH", "{bind}", ",")')
        for name, value in env:
            lines.append(f'setenv("{runtime}ENV_{name}", "{value}")')
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------------------------
# discover


def locate_library(mpi_lib: str, mpicc: str, mpiexec: str) -> str:
    """The host MPI library to inspect, from one of the three ways a maintainer may name it."""
    named = [n for n, v in (("--mpi-lib", mpi_lib), ("--mpicc", mpicc), ("--mpiexec", mpiexec)) if v]
    if not named:
        raise DiscoverError("name the host MPI: --mpi-lib PATH (its libmpi.so.12 or libmpi_abi.so.1), --mpicc PATH "
                            "or --mpiexec PATH")
    if mpi_lib:
        return mpi_lib
    if mpicc:
        proc = subprocess.run([mpicc, "-show"], capture_output=True, text=True, check=False, timeout=60)
        words = proc.stdout.split()
        dirs = [w[2:] for w in words if w.startswith("-L")] + [w.split("=", 1)[-1][2:] for w in words
                                                               if w.startswith("-Wl,-rpath")]
        libs = [w[2:] for w in words if w.startswith("-l") and "mpi" in w]
        for folder in dirs:
            for lib in libs:
                for candidate in (f"{folder}/lib{lib}.so.12", f"{folder}/lib{lib}.so.40", f"{folder}/lib{lib}.so"):
                    if os.path.exists(candidate):
                        return candidate
        raise DiscoverError(f"`{mpicc} -show` names no MPI library that exists here "
                            f"({proc.stdout.strip()[:200] or proc.stderr.strip()[:200]}): give --mpi-lib")
    prefix = Path(mpiexec).resolve().parent.parent
    for folder in ("lib", "lib64", "lib/x86_64-linux-gnu", "lib/aarch64-linux-gnu"):
        for name in ("libmpi.so.12", "libmpi_abi.so.1", "libmpi.so.40"):
            if (prefix / folder / name).exists():
                return str(prefix / folder / name)
    raise DiscoverError(f"no libmpi.so.12, libmpi_abi.so.1 or libmpi.so.40 under {prefix}/lib*: give --mpi-lib")


def discover(root: Path, matrix: Matrix, name: str, *, mpi_lib: str = "", mpicc: str = "", mpiexec: str = "",
             via: Site | None = None, profile: str = "ci", only: Iterable[str] = (), env: Iterable[str] = (),
             client_factory: Callable[[], object] | None = None, command: str = "",
             progress: Progress = print) -> Discovery:
    started = time.monotonic()
    if not SITE_NAME_RE.fullmatch(name or ""):
        raise DiscoverError(f"site name {shown(name)}: lower-case letters, digits and '-', starting with a letter")
    sites_dir = root / "slurm" / "sites"
    if via is not None and via.name == name:
        raise DiscoverError(f"--name {name} would overwrite the profile discover reaches the nodes through (--via)")
    cells = select_cells(matrix, profile, only, with_parents=False)
    if via is not None and (mpicc or mpiexec) and not mpi_lib:
        raise DiscoverError("through a site (--via), name the library on the node with --mpi-lib PATH (--mpicc and "
                            "--mpiexec are read on this machine)")
    library = locate_library(mpi_lib, mpicc, mpiexec)
    host_env = parse_env(env)
    node = Node(root, via, mpiexec)
    progress(f"discover: inspecting {library} on {node.where()} ...")
    main = node.run(1, ["inspect", "--mpi-lib", library], host_env)[0]
    inspected = [main]
    for soname, path in main.get("siblings", {}).items():
        if path != main["realpath"]:
            progress(f"discover: inspecting {soname} beside it ({path}) ...")
            inspected.append(node.run(1, ["inspect", "--mpi-lib", os.path.join(os.path.dirname(library), soname)],
                                      host_env)[0])
    host = {f["abi"]: f["realpath"] for f in inspected if f["abi"] in SONAMES}
    notes = []
    ranks: list[dict] = []
    runner = next((f for f in inspected if f["abi"] == "mpich"), None)
    if runner is not None:
        progress("discover: two ranks of the host MPI exchange messages; reading what they mapped ...")
        ranks = node.run(2, ["run", "--mpi-lib", runner["library"]], host_env)
    else:
        notes.append(f"the run-time plugins were not read: the probe's two-rank run speaks the MPICH ABI, the host "
                     f"MPI is {ABI_NAMES[main['abi']]}")
    found = bind_set(inspected, ranks)
    needs_glibc, needs_glibcxx = found.highest("GLIBC"), found.highest("GLIBCXX")
    client_factory = client_factory or _engine
    rows = [fit_row(c, c.image(matrix.profile(profile).registry),
                    image_facts(client_factory, root, c.image(matrix.profile(profile).registry)), host,
                    needs_glibc, needs_glibcxx, main["abi"]) for c in cells]
    advise(rows, needs_glibc)
    if not any(r.fits for r in rows):
        notes.append("no image of the profile fits this host MPI")
    version = " ".join(ranks[0]["version"].split()) if ranks else main["soname"] or os.path.basename(library)
    path = sites_dir / f"{name}.toml"
    command = command or f"invoke site discover --name {name} --mpi-lib {library}"
    template = root / "slurm" / "site-template.toml"
    binds = found.binds()
    payload = {"library": library, "node": main["node"], "version": version}
    text = profile_text(name, via, template, payload, binds, command, container_env(host_env, found))
    try:
        parse_site(name, path, tomlkit.parse(text).unwrap())  # what is written must load
    except SiteError as exc:
        raise DiscoverError(f"the profile discover would write does not validate: {exc}") from None
    write_text(path, text)
    discovery = Discovery(site=name, node=main["node"], library=library, abi=main["abi"], version=version,
                          libraries={SONAMES[a]: p for a, p in host.items()}, binds=binds, plugins=found.plugins,
                          plugin_dirs=[f"{s}:{d}" for s, d in sorted(found.plugin_dirs.items())],
                          needs_glibc=needs_glibc, needs_glibcxx=needs_glibcxx, fit=rows, env=host_env,
                          profile_sha256=profile_digest(path), created=dt.datetime.now(dt.UTC).isoformat(),
                          seconds=round(time.monotonic() - started, 1), notes=notes)
    write_json(record_path(sites_dir, name), asdict(discovery))
    site = load_site(sites_dir, name)
    write_text(module_path(root, name), module_text(site, discovery, command))
    return discovery


def _engine() -> object:
    from ..engine import connect

    return connect()


def report(discovery: Discovery, root: Path) -> str:
    lines = [f"site {discovery.site}: {discovery.version} ({discovery.library}, {ABI_NAMES[discovery.abi]}) on "
             f"{discovery.node}, in {discovery.seconds:.1f} s",
             "  libraries for the images: " + ", ".join(f"{k} -> {v}" for k, v in discovery.libraries.items()),
             f"  bound: {len(discovery.binds)} entries into {HOST_LIB} ({len(discovery.plugin_dirs)} plugin "
             f"folder(s)); the host files need {discovery.needs_glibc or 'no GLIBC_'}"
             + (f" and {discovery.needs_glibcxx}" if discovery.needs_glibcxx else ""),
             f"  plugins the ranks loaded at run time: {len(discovery.plugins)}"
             + "".join(f"\n    {p}" for p in discovery.plugins),
             f"  {IMAGE_OWN_RULE}",
             tables.terminal([[r.cell, "yes" if r.fits else "no", r.reason] for r in discovery.fit],
                             ["cell", "fits", "why"]),
             f"  wrote slurm/sites/{discovery.site}.toml, {module_path(root, discovery.site).relative_to(root)}, "
             f"slurm/sites/{discovery.site}.discovery.json",
             *[f"  note: {n}" for n in discovery.notes]]
    return "\n".join(lines)


def jsonable(discovery: Discovery) -> str:
    return json.dumps(asdict(discovery), indent=2)

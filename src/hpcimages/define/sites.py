"""Site profiles: ``slurm/sites/<site>.toml`` validated into a typed object.

A site profile describes one cluster the way its users submit there: partition, account, layout, modules,
container runtime, bind paths, the host MPI of the bind model, the launcher, how Open MPI images start
(``[open_mpi]``) and GPU options. Every value ends
up in a batch script, so each is checked against a strict pattern here (no spaces, no shell
metacharacters) and the templates quote them again::

    >>> site = load_site(Path("slurm/sites"), "local")       # doctest: +SKIP
    >>> site.launcher.mpi                                     # doctest: +SKIP
    'pmi2'
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import state
from ..errors import HpcImagesError
from ..validate import free_text_problem, problem, shown

SITE_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,40}")
# What a value may contain: it is written into a shell script. No blanks, quotes, $, ;, |, &, <, >, *, ...
SAFE_RE = re.compile(r"[A-Za-z0-9_@%+=:,./-]*")
SAFE_CHARS = "letters, digits and _ @ % + = : , . / -"
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,80}")
TIME_RE = re.compile(r"(\d{1,3}-)?\d{1,2}(:\d{2}){0,2}")
SBATCH_OPTION_RE = re.compile(r"--[a-z][a-z-]*(=[A-Za-z0-9_@%+:,./-]+)?")
RUNTIMES = ("apptainer", "singularity")
LAUNCHER_MPI = ("pmi2", "pmix", "cray_shasta", "none")
GPU_FLAGS = ("--nv", "--rocm", "")
KIND_NAMES = {str: "a string", int: "an integer", bool: "true or false", list: "a list", dict: "a table"}

SCHEMA: dict[str, dict[str, type | tuple[type, type]]] = {
    "": {"description": str},
    "slurm": {"partition": str, "account": str, "qos": str, "time": str, "nodes": int, "ntasks_per_node": int,
              "cpus_per_task": int, "options": list, "commands": str, "runs_dir": str},
    "environment": {"modules": list, "vars": dict},
    "container": {"runtime": str, "binary": str, "cleanenv": bool, "bind": list, "sif_dir": str, "bench_dir": str,
                  "sharens": bool},
    "host_mpi": {"lib_dirs": list, "lib_path": list, "bind": list, "vars": dict},
    "launcher": {"command": str, "mpi": str, "options": list},
    "open_mpi": {"launcher": str, "mpi": str, "options": list, "lib_dirs": list, "bind": list, "vars": dict},
    "gpu": {"gres": str, "flag": str},
}


class SiteError(HpcImagesError):
    """A site profile is wrong: names the file and every offending key."""


@dataclass(frozen=True)
class Slurm:
    partition: str = ""
    account: str = ""
    qos: str = ""
    time: str = "00:10:00"
    nodes: int = 2
    ntasks_per_node: int = 1
    cpus_per_task: int = 0
    options: tuple[str, ...] = ()
    commands: str = ""  # directory of sbatch/squeue/...; "" = the PATH
    runs_dir: str = ""  # where job scripts, outputs and records go (a file system the jobs see); "" = build/slurm/runs


@dataclass(frozen=True)
class Container:
    runtime: str = "apptainer"
    binary: str = ""
    cleanenv: bool = True
    bind: tuple[str, ...] = ()
    sif_dir: str = ""  # where the .sif files are on the cluster; "" = this project's build/sif
    bench_dir: str = ""  # where the benchmark scripts are on the cluster; "" = this checkout's bench/
    #: `apptainer exec --sharens`: the ranks a launcher starts on a node share one user namespace (default for
    #: Apptainer, which has it since 1.1; SingularityCE has not). Separate namespaces measured 0.62-0.77 x the
    #: bandwidth at 1 MiB under srun on the test cluster (4 interleaved rounds).
    sharens: bool = True

    @property
    def executable(self) -> str:
        return self.binary or self.runtime

    @property
    def env_prefix(self) -> str:
        """APPTAINERENV_ / SINGULARITYENV_: variables with it reach the container even with --cleanenv."""
        return f"{self.runtime.upper()}ENV_"

    @property
    def bindpath_var(self) -> str:
        return f"{self.runtime.upper()}_BINDPATH"


@dataclass(frozen=True)
class HostMpi:
    lib_dirs: tuple[str, ...] = ()
    lib_path: tuple[str, ...] = ()  # more directories for LD_LIBRARY_PATH, not bound (where `bind` files land)
    bind: tuple[str, ...] = ()
    vars: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Launcher:
    command: str = "srun"
    mpi: str = "pmi2"
    options: tuple[str, ...] = ()


@dataclass(frozen=True)
class OpenMpi:
    """How this site starts the ranks of an Open MPI image (``[open_mpi]``): Open MPI's ranks speak PMIx, which a
    Slurm without PMIx cannot give them, so the host's own ``mpirun`` runs inside the allocation and starts one
    ``apptainer exec`` per rank (``launcher`` its path; it starts its daemons on the other nodes through srun).
    Where Slurm has PMIx, ``launcher = "srun"`` with ``mpi = "pmix"`` does it instead. ``lib_dirs``: the host Open
    MPI's library folders for the bind model; ``vars``: what the launcher needs (``OPAL_PREFIX`` for a relocated
    install), exported for it and, under the bind model, into the container too."""

    launcher: str = ""  # "": the site runs no Open MPI images
    mpi: str = "none"
    options: tuple[str, ...] = ()
    lib_dirs: tuple[str, ...] = ()
    bind: tuple[str, ...] = ()  # more of the host Open MPI for the bind model (its etc/, share/, UCX, ...)
    vars: tuple[tuple[str, str], ...] = ()

    @property
    def uses_srun(self) -> bool:
        return self.launcher.rsplit("/", 1)[-1] == "srun"


@dataclass(frozen=True)
class Gpu:
    gres: str = ""
    flag: str = "--nv"


@dataclass(frozen=True)
class Site:
    name: str
    path: Path
    description: str = ""
    slurm: Slurm = field(default_factory=Slurm)
    modules: tuple[str, ...] = ()
    vars: tuple[tuple[str, str], ...] = ()
    container: Container = field(default_factory=Container)
    host_mpi: HostMpi = field(default_factory=HostMpi)
    launcher: Launcher = field(default_factory=Launcher)
    open_mpi: OpenMpi = field(default_factory=OpenMpi)
    gpu: Gpu = field(default_factory=Gpu)
    warnings: tuple[str, ...] = ()  # what the profile leaves to defaults that a maintainer should know about

    @property
    def has_bind_model(self) -> bool:
        """Folders of the host MPI bound whole (lib_dirs), or its files bound one by one into a folder of the
        container that lib_path names (what `invoke site discover` writes)."""
        return bool(self.host_mpi.lib_dirs or (self.host_mpi.lib_path and self.host_mpi.bind))

    @property
    def host_dirs(self) -> tuple[str, ...]:
        """Where the host MPI library lies inside the container: the proof by path of a bind-model run."""
        return self.host_mpi.lib_dirs or self.host_mpi.lib_path

    def host_dirs_for(self, abi: str) -> tuple[str, ...]:
        """host_dirs for an image of this MPI ABI: the [open_mpi] lib_dirs for an Open MPI image."""
        return self.open_mpi.lib_dirs if abi == "openmpi" else self.host_dirs


def site_names(sites_dir: Path) -> list[str]:
    """The site profiles: the ``*.toml`` files of the folder (a folder named ``x.toml`` is none)."""
    return sorted(p.stem for p in sites_dir.glob("*.toml") if p.is_file())


BIND_OPTS = ("ro", "rw")


def load_site(sites_dir: Path, name: str) -> Site:
    if problem(name, SITE_NAME_RE):
        raise SiteError(f"site name {shown(name)}: use lower-case letters, digits and '-'")
    path = sites_dir / f"{name}.toml"
    if not path.exists():
        known = ", ".join(site_names(sites_dir)) or "none"
        raise SiteError(f"no site profile {path} (known sites: {known})")
    try:
        data = tomllib.loads(state.read_text(path, "site profile"))
    except state.StateError as exc:
        raise SiteError(str(exc)) from None
    except tomllib.TOMLDecodeError as exc:
        raise SiteError(f"{path}: not valid TOML: {exc}") from None
    return parse_site(name, path, data)


def parse_site(name: str, path: Path, data: dict[str, Any]) -> Site:
    """Validate everything first and report every problem at once: a maintainer fixes the file in one go."""
    problems: list[str] = []
    _check_shape(data, problems)
    if problems:
        raise SiteError(f"{path}: " + "; ".join(problems))
    get = _Getter(data, problems)
    runtime = get.choice("container", "runtime", RUNTIMES, "apptainer")
    site = Site(
        name=name, path=path,
        description=get.text("", "description", free=True),
        slurm=Slurm(
            partition=get.text("slurm", "partition"), account=get.text("slurm", "account"),
            qos=get.text("slurm", "qos"), time=get.time("slurm", "time", "00:10:00"),
            nodes=get.count("slurm", "nodes", 2), ntasks_per_node=get.count("slurm", "ntasks_per_node", 1),
            cpus_per_task=get.count("slurm", "cpus_per_task", 0, minimum=0),
            options=get.sbatch_options("slurm", "options"), commands=get.text("slurm", "commands"),
            runs_dir=get.directory("slurm", "runs_dir"),
        ),
        modules=get.words("environment", "modules"),
        vars=get.variables("environment", "vars"),
        container=Container(
            runtime=runtime,
            binary=get.text("container", "binary"), cleanenv=get.flag("container", "cleanenv", True),
            bind=get.binds("container", "bind"), sif_dir=get.text("container", "sif_dir"),
            bench_dir=get.text("container", "bench_dir"), sharens=_sharens(get, runtime),
        ),
        host_mpi=HostMpi(lib_dirs=get.absolute("host_mpi", "lib_dirs"), lib_path=get.absolute("host_mpi", "lib_path"),
                         bind=get.binds("host_mpi", "bind"), vars=get.variables("host_mpi", "vars")),
        launcher=Launcher(command=get.text("launcher", "command") or "srun",
                          mpi=get.choice("launcher", "mpi", LAUNCHER_MPI, "pmi2"),
                          options=get.words("launcher", "options")),
        open_mpi=_open_mpi(get),
        gpu=Gpu(gres=get.text("gpu", "gres"), flag=get.choice("gpu", "flag", GPU_FLAGS, "--nv")),
        warnings=() if "slurm" in data else (
            f"{path}: no [slurm] table: jobs get the defaults (nodes = {Slurm.nodes}, ntasks_per_node = "
            f"{Slurm.ntasks_per_node}, time = {Slurm.time}, the cluster's default partition)",),
    )
    if problems:
        raise SiteError(f"{path}: " + "; ".join(problems))
    return site


def _open_mpi(get: _Getter) -> OpenMpi:
    """[open_mpi]: the launcher is a command (srun) or an absolute path (the host's mpirun); ``mpi`` is srun's
    --mpi= plug-in and means nothing to mpirun; the rest needs a launcher to belong to."""
    found = OpenMpi(launcher=get.text("open_mpi", "launcher"),
                    mpi=get.choice("open_mpi", "mpi", LAUNCHER_MPI, "none"), options=get.words("open_mpi", "options"),
                    lib_dirs=get.absolute("open_mpi", "lib_dirs"), bind=get.binds("open_mpi", "bind"),
                    vars=get.variables("open_mpi", "vars"))
    given = get.data.get("open_mpi") or {}
    if not found.launcher:
        if given:
            get.problems.append("[open_mpi] without a launcher: say how the site starts Open MPI ranks (launcher = "
                                "\"/path/to/mpirun\", or \"srun\" with mpi = \"pmix\")")
        return found
    if not (found.uses_srun or found.launcher.startswith("/")):
        get.problems.append(f"open_mpi.launcher = {shown(found.launcher)}: the absolute path of the host's Open MPI "
                            "mpirun, or srun (with mpi = \"pmix\") where Slurm has PMIx")
    elif found.uses_srun and found.mpi != "pmix":
        get.problems.append(f"open_mpi.mpi = {shown(found.mpi)}: srun can start Open MPI ranks only as their PMIx "
                            "server (mpi = \"pmix\"); without PMIx in Slurm, launch with the host's mpirun")
    elif not found.uses_srun and found.mpi != "none":
        get.problems.append(f"open_mpi.mpi = {shown(found.mpi)}: srun's --mpi plug-in; mpirun starts its ranks "
                            "itself (leave it out)")
    return found


def _sharens(get: _Getter, runtime: str) -> bool:
    """[container] sharens: Apptainer's default; SingularityCE has no --sharens, so asking for it there is refused."""
    value = get.flag("container", "sharens", runtime == "apptainer")
    if value and runtime != "apptainer":
        get.problems.append(f"[container] sharens = true: only Apptainer (1.1 or newer) has --sharens, the runtime is "
                            f"{shown(runtime)}")
        return False
    return value


def _check_shape(data: dict[str, Any], problems: list[str]) -> None:
    for key, value in data.items():
        if key in SCHEMA and key != "":
            if not isinstance(value, dict):
                problems.append(f"[{key}] must be a table")
                continue
            unknown = sorted(set(value) - set(SCHEMA[key]))
            if unknown:
                problems.append(f"[{key}]: unknown key(s) {', '.join(_key(u) for u in unknown)} "
                                f"(known: {', '.join(sorted(SCHEMA[key]))})")
        elif key not in SCHEMA[""]:
            known = sorted({*SCHEMA[""], *(f"[{s}]" for s in SCHEMA if s)})
            problems.append(f"unknown key {shown(key)} (known: {', '.join(known)})")


def _key(name: str) -> str:
    """A key as a message names it: plain when it is a plain word, else quoted and shortened."""
    return name if re.fullmatch(r"[\w.-]{1,60}", name) else shown(name)


class _Getter:
    """Reads typed values and records problems in the form `section.key = value: what is wrong`."""

    def __init__(self, data: dict[str, Any], problems: list[str]) -> None:
        self.data = data
        self.problems = problems

    def _raw(self, section: str, key: str) -> Any:
        table = self.data if section == "" else self.data.get(section, {})
        return table.get(key)

    def _where(self, section: str, key: str) -> str:
        return f"{section}.{key}" if section else key

    def _typed(self, section: str, key: str, kind: type) -> Any:
        value = self._raw(section, key)
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problems.append(f"{self._where(section, key)} = {shown(value)}: must be {KIND_NAMES[kind]}")
            return None
        return value

    def _safe(self, where: str, value: str, pattern: re.Pattern[str] = SAFE_RE) -> bool:
        """The one rule of validate.py (whole match, one line, bounded), with the offending characters named."""
        reason = problem(value, pattern)
        if reason is None:
            return True
        bad = "".join(sorted({c for c in value if not SAFE_RE.fullmatch(c)}))
        if bad and pattern is SAFE_RE and reason.startswith("must match"):
            reason = (f"{bad!r} not allowed: values reach a shell script, so only {SAFE_CHARS} may be used")
        self.problems.append(f"{where} = {shown(value)}: {reason}")
        return False

    def text(self, section: str, key: str, free: bool = False) -> str:
        value = self._typed(section, key, str)
        if value is None:
            return ""
        if free:  # a description: only shown in comments, but never over two lines
            reason = free_text_problem(value)
            if reason:
                self.problems.append(f"{self._where(section, key)} = {shown(value)}: {reason}")
                return ""
            return value
        return value if self._safe(self._where(section, key), value) else ""

    def time(self, section: str, key: str, default: str) -> str:
        value = self.text(section, key) or default
        if problem(value, TIME_RE):
            self.problems.append(f"{self._where(section, key)} = {shown(value)}: Slurm time like 00:10:00 or "
                                 "1-00:00:00")
        return value

    def count(self, section: str, key: str, default: int, minimum: int = 1) -> int:
        value = self._typed(section, key, int)
        if value is None:
            return default
        if not minimum <= value <= 100000:
            self.problems.append(f"{self._where(section, key)} = {value}: must be between {minimum} and 100000")
        return value

    def flag(self, section: str, key: str, default: bool) -> bool:
        value = self._typed(section, key, bool)
        return default if value is None else value

    def choice(self, section: str, key: str, allowed: tuple[str, ...], default: str) -> str:
        value = self._typed(section, key, str)
        if value is None:
            return default
        if value not in allowed:
            self.problems.append(f"{self._where(section, key)} = {shown(value)}: one of "
                                 f"{', '.join(map(repr, allowed))}")
        return value

    def words(self, section: str, key: str) -> tuple[str, ...]:
        value = self._typed(section, key, list)
        if value is None:
            return ()
        out = []
        for i, item in enumerate(value):
            where = f"{self._where(section, key)}[{i}]"
            if not isinstance(item, str) or not item:
                self.problems.append(f"{where} = {shown(item)}: must be a non-empty string")
            elif self._safe(where, item):
                out.append(item)
        return tuple(out)

    def _kept(self, section: str, key: str, why: Callable[[str], str | None]) -> tuple[str, ...]:
        """The list's words that ``why`` has nothing against; each other one is a problem naming its index."""
        out = []
        for i, item in enumerate(self.words(section, key)):
            reason = why(item)
            if reason:
                self.problems.append(f"{self._where(section, key)}[{i}] = {shown(item)}: {reason}")
            else:
                out.append(item)
        return tuple(out)

    def absolute(self, section: str, key: str) -> tuple[str, ...]:
        """Directories on the compute node: absolute, or they would resolve against the job's working directory."""
        return self._kept(section, key, lambda item: None if item.startswith("/") and ":" not in item else
                          "must be an absolute directory on the compute node (starting with /, no ':')")

    def directory(self, section: str, key: str) -> str:
        """One absolute directory (a file system the jobs see), or ''."""
        value = self.text(section, key)
        if value and (not value.startswith("/") or ":" in value or ".." in value.split("/")):
            self.problems.append(f"{self._where(section, key)} = {shown(value)}: must be an absolute directory "
                                 "(starting with /, no ':' or '..')")
            return ""
        return value

    def binds(self, section: str, key: str) -> tuple[str, ...]:
        """Bind specs ``SRC[:DST[:OPTS]]`` as Apptainer reads them: absolute paths, OPTS ``ro`` or ``rw``."""
        def why(item: str) -> str | None:
            if "," in item:  # Apptainer's list separator: one entry would carry binds the rule never saw
                return "one bind per list entry (',' separates binds in APPTAINER_BINDPATH): write each as its own item"
            parts = item.split(":")
            if len(parts) <= 3 and all(p.startswith("/") for p in parts[:2]) and all(o in BIND_OPTS for o in parts[2:]):
                return None
            return f"a bind is SRC[:DST[:OPTS]] with absolute paths and OPTS one of {', '.join(BIND_OPTS)}"
        return self._kept(section, key, why)

    def sbatch_options(self, section: str, key: str) -> tuple[str, ...]:
        return self._kept(section, key, lambda option: "a long sbatch option like --exclusive or --constraint=mc"
                          if problem(option, SBATCH_OPTION_RE) else None)

    def variables(self, section: str, key: str) -> tuple[tuple[str, str], ...]:
        value = self._typed(section, key, dict)
        if value is None:
            return ()
        out = []
        for name, item in value.items():
            where = f"{self._where(section, key)}.{name}"
            if problem(name, ENV_NAME_RE):
                self.problems.append(f"{self._where(section, key)}.{shown(name)}: not a valid environment variable "
                                     "name")
            elif not isinstance(item, str | int) or isinstance(item, bool):
                self.problems.append(f"{where} = {shown(item)}: must be a string or a number")
            elif self._safe(where, str(item)):
                out.append((name, str(item)))
        return tuple(out)

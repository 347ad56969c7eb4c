"""Host-MPI stand-ins: the MPIs a site might bind into the images, declared in ``matrix.toml``. Every host MPI the
project injects anywhere is one of these (``invoke abi``'s rows, the bind-model swap of ``invoke check`` and the
benchmarks, the test cluster's host MPIs); images/hostmpi.py installs them.

Each ``[[host_mpi]]`` entry is one library a cluster could have::

    [[host_mpi]]
    from = "pypi"            # the package's manylinux wheel, through a hashed lock (invoke lock)
    package = "impi-rt"
    version = "2021.19.0"
    env = { I_MPI_FABRICS = "shm" }   # what its ranks need in a container without a network
    swap = true              # the one stand-in of the bind-model swap (invoke check, the bench's container+impi,
                             # the test cluster's /opt/host-mpi); at most one entry says so

    [[host_mpi]]
    from = "debian"          # Debian's own MPICH of another suite, with the libraries it needs
    package = "libmpich12"
    suite = "bookworm"

``abi`` says which ABI the library implements (``mpich``: ``libmpi.so.12``; ``openmpi``: ``libmpi.so.40``); a
wheel's ``launcher`` is its own ``bin/mpiexec`` unless ``launcher = "image"`` (the image's hydra) is given.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from ..validate import problem, shown

SOURCES = ("pypi", "debian")
ABIS = ("mpich", "openmpi")
LAUNCHERS = ("own", "image")
KEYS = {"from", "package", "version", "suite", "abi", "env", "launcher", "swap"}
PACKAGE_RE = re.compile(r"[a-z][a-z0-9-]{0,40}[a-z0-9]")
VERSION_RE = re.compile(r"\d{1,6}(\.\d{1,6}){1,3}(\.post\d{1,3})?")
SUITE_RE = re.compile(r"[a-z]{2,20}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,80}")
ENV_VALUE_RE = re.compile(r"[A-Za-z0-9_=,.:/+@ -]{0,200}")
#: The soname each ABI's library carries: what the stand-in's lib/ must hold.
SONAMES = {"mpich": "libmpi.so.12", "openmpi": "libmpi.so.40"}
#: How each package's library begins its MPI_Get_library_version text: the proof that this vendor's library ran.
BANNERS = {"impi-rt": "Intel(R) MPI Library", "mpich": "MPICH Version:", "libmpich12": "MPICH Version:",
           "openmpi": "Open MPI"}


@dataclass(frozen=True)
class HostMpi:
    source: str  # pypi | debian
    package: str
    version: str = ""  # pypi
    suite: str = ""  # debian
    abi: str = "mpich"
    env: Mapping[str, str] = field(default_factory=dict)
    launcher: str = "own"
    swap: bool = False  # the stand-in of the bind-model swap

    @property
    def name(self) -> str:
        """How tables and ``--host`` name it: ``impi-rt-2021.19.0``, ``debian-bookworm-libmpich12``."""
        return f"{self.package}-{self.version}" if self.source == "pypi" else f"debian-{self.suite}-{self.package}"

    @property
    def lock(self) -> str | None:
        """The hashed lock of a wheel stand-in (shared with image cells that install the same MPI wheel)."""
        return f"pip-requirements/mpi/{self.package}-{self.version}.txt" if self.source == "pypi" else None

    @property
    def soname(self) -> str:
        return SONAMES[self.abi]

    @property
    def banner(self) -> str:
        """The start of its MPI_Get_library_version text ('' for a package whose banner is not known)."""
        return BANNERS.get(self.package, "")

    @property
    def proof(self) -> str:
        """What its MPI_Get_library_version text must begin with to show that this library ran: Open MPI's names its
        version (two Open MPIs differ only there), other vendors' their name."""
        return f"Open MPI v{self.version}," if self.package == "openmpi" and self.version else self.banner

    @property
    def vendor(self) -> str:
        """Its name in a check's detail: ``Intel MPI``, ``Open MPI 4.1.8``."""
        if self.package == "openmpi":
            return f"Open MPI {self.version}"
        return self.banner.split(" Library")[0].replace("(R)", "") or self.name


Fail = Callable[[str, str], Exception]


def load_host_mpis(entries: Any, fail: Fail,
                   entry: Callable[[], AbstractContextManager[None]] = contextlib.nullcontext) -> dict[str, HostMpi]:
    """The ``[[host_mpi]]`` entries, validated; keyed by name. ``entry``: the matrix reader's context that notes one
    entry's problem and goes on with the next (the default stops at the first)."""
    if not isinstance(entries, list):
        raise fail("host_mpi", "must be an array of tables ([[host_mpi]])")
    found: dict[str, HostMpi] = {}
    for i, table in enumerate(entries):
        with entry():
            host = _one(table, f"host_mpi[{i}]", fail)
            if host.name in found:
                raise fail(f"host_mpi[{i}]", f"{host.name!r} is declared twice")
            found[host.name] = host
    swaps = [name for name, host in found.items() if host.swap]
    if len(swaps) > 1:
        raise fail("host_mpi", f"only one stand-in may be the bind-model swap (swap = true): {', '.join(swaps)}")
    return found


def _one(entry: Any, key: str, fail: Fail) -> HostMpi:
    if not isinstance(entry, dict):
        raise fail(key, f"must be a table, got {type(entry).__name__}")
    unknown = sorted(set(entry) - KEYS)
    if unknown:
        raise fail(f"{key}.{str(unknown[0])[:60]}", f"unknown key; allowed keys: {', '.join(sorted(KEYS))}")
    source = _choice(entry.get("from"), f"{key}.from", SOURCES, fail)
    package = _string(entry.get("package"), f"{key}.package", PACKAGE_RE, "package name", fail)
    abi = _choice(entry.get("abi", "mpich"), f"{key}.abi", ABIS, fail)
    launcher = _choice(entry.get("launcher", "own"), f"{key}.launcher", LAUNCHERS, fail)
    env = entry.get("env", {})
    if not isinstance(env, dict):
        raise fail(f"{key}.env", f"must be a table of variables, got {type(env).__name__}")
    checked_env = {_string(name, f"{key}.env", ENV_NAME_RE, "variable name", fail):
                   _string(value, f"{key}.env.{name}", ENV_VALUE_RE, "variable value", fail)
                   for name, value in env.items()}
    swap = entry.get("swap", False)
    if not isinstance(swap, bool):
        raise fail(f"{key}.swap", f"must be true or false, got {shown(swap)}")
    if swap and (source != "pypi" or abi != "mpich" or launcher != "own"):
        raise fail(f"{key}.swap", "the bind-model swap needs a wheel (from = \"pypi\") of the MPICH ABI with its own "
                                  "launcher: the checks start its ranks with its bin/mpiexec")
    if source == "pypi":
        if "suite" in entry:
            raise fail(f"{key}.suite", "only a Debian stand-in has a suite; a PyPI one has a version")
        version = _string(entry.get("version"), f"{key}.version", VERSION_RE, "version (X.Y[.Z])", fail)
        return HostMpi(source, package, version=version, abi=abi, env=checked_env, launcher=launcher, swap=swap)
    if "version" in entry:
        raise fail(f"{key}.version", "a Debian stand-in takes the suite's version; give `suite` only")
    suite = _string(entry.get("suite"), f"{key}.suite", SUITE_RE, "Debian suite", fail)
    return HostMpi(source, package, suite=suite, abi=abi, env=checked_env, launcher=launcher)


def _choice(value: Any, key: str, allowed: tuple[str, ...], fail: Fail) -> str:
    if value is None:
        raise fail(key, "required key is missing")
    if value not in allowed:
        raise fail(key, f"{shown(value)} is not one of: {', '.join(allowed)}")
    return str(value)


def _string(value: Any, key: str, pattern: re.Pattern[str], what: str, fail: Fail) -> str:
    if value is None:
        raise fail(key, "required key is missing")
    if not isinstance(value, str):
        raise fail(key, f"must be a string ({what}), got {type(value).__name__}")
    reason = problem(value, pattern)
    if reason:
        raise fail(key, f"{shown(value)} is not a valid {what} ({reason})")
    return value

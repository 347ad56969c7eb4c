"""mpi4py's own test suite, from the sdist of the version an image carries, checked against the project's locks.

The sdist is fetched once from the package index (its sha256 must be one of the hashes the locks pin for that
mpi4py version), kept in ``<cache>/sources/`` and its ``test/`` folder unpacked into
``<cache>/mpi4py-tests/<version>/``: a second run, or an air-gapped one after the first, fetches nothing.
"""

from __future__ import annotations

import re
import shutil
import tarfile
from pathlib import Path

from ..errors import HpcImagesError
from ..images import wheelhouse


class SuiteSourceError(HpcImagesError):
    """The mpi4py test suite could not be prepared."""


def pinned_hashes(root: Path, version: str) -> set[str]:
    """Every sha256 that a lock of the repository pins for ``mpi4py==version`` (wheels and the sdist)."""
    return wheelhouse.pinned_hashes(root, "mpi4py", version)


def test_dir(root: Path, version: str, cache: Path | None = None) -> Path:
    """The sdist's ``test/`` folder for this mpi4py version, prepared once."""
    if not re.fullmatch(r"\d{1,4}(\.\d{1,4}){1,3}", version):
        raise SuiteSourceError(f"{version!r} is not an mpi4py version")
    cache = cache or wheelhouse.cache_root()
    target = cache / "mpi4py-tests" / version
    if (target / "test" / "main.py").is_file():
        return target / "test"
    try:
        sdist = wheelhouse.fetch_sdist(root, "mpi4py", version, cache / "sources")
    except wheelhouse.CacheError as exc:
        raise SuiteSourceError(str(exc)) from None
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    prefix = f"mpi4py-{version}/test/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (m.isfile() or m.isdir())]
        for member in members:
            member.name = "test/" + member.name[len(prefix):]
        tar.extractall(partial, members=members, filter="data")
    if not (partial / "test" / "main.py").is_file():
        raise SuiteSourceError(f"{sdist.name} has no test/main.py")
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)
    return target / "test"

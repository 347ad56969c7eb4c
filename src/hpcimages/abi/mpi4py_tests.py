"""mpi4py's own test suite, from the sdist of the version an image carries, checked against the project's locks.

The sdist is fetched once from the package index (its sha256 must be one of the hashes the locks pin for that
mpi4py version), kept in ``<cache>/sources/`` and its ``test/`` folder unpacked into
``<cache>/mpi4py-tests/<version>/``: a second run, or an air-gapped one after the first, fetches nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import HpcImagesError
from ..images import wheelhouse

DEFAULT_INDEX = "https://pypi.org/simple"  # pip's own default, used when neither the environment nor pip says
JSON_API = "application/vnd.pypi.simple.v1+json"


class SuiteSourceError(HpcImagesError):
    """The mpi4py test suite could not be prepared."""


def pinned_hashes(root: Path, version: str) -> set[str]:
    """Every sha256 that a lock of the repository pins for ``mpi4py==version`` (wheels and the sdist)."""
    found: set[str] = set()
    pin = re.compile(rf"^mpi4py=={re.escape(version)}\b")
    for lock in sorted((root / "pip-requirements").rglob("*.txt")):
        lines = lock.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            if pin.match(line):
                for follow in lines[i + 1:]:
                    match = re.search(r"--hash=sha256:([0-9a-f]{64})", follow)
                    if not match:
                        break
                    found.add(match.group(1))
    return found


def index_url() -> str:
    """The package index pip would use here: ``PIP_INDEX_URL``, pip's configuration, else PyPI."""
    if os.environ.get("PIP_INDEX_URL"):
        return os.environ["PIP_INDEX_URL"].rstrip("/")
    proc = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.index-url"], capture_output=True,
                          text=True, check=False)
    configured = proc.stdout.strip()
    return (configured if proc.returncode == 0 and configured.startswith("http") else DEFAULT_INDEX).rstrip("/")


def test_dir(root: Path, version: str, cache: Path | None = None) -> Path:
    """The sdist's ``test/`` folder for this mpi4py version, prepared once."""
    if not re.fullmatch(r"\d{1,4}(\.\d{1,4}){1,3}", version):
        raise SuiteSourceError(f"{version!r} is not an mpi4py version")
    cache = cache or wheelhouse.cache_root()
    target = cache / "mpi4py-tests" / version
    if (target / "test" / "main.py").is_file():
        return target / "test"
    hashes = pinned_hashes(root, version)
    if not hashes:
        raise SuiteSourceError(f"no lock of this repository pins mpi4py=={version}: the sdist cannot be verified")
    sdist = _fetch_sdist(version, hashes, cache / "sources")
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


def _fetch_sdist(version: str, hashes: set[str], folder: Path) -> Path:
    name = f"mpi4py-{version}.tar.gz"
    dest = folder / name
    if dest.is_file() and wheelhouse.sha256_file(dest) in hashes:
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    base = index_url()
    try:
        request = urllib.request.Request(f"{base}/mpi4py/", headers={"Accept": JSON_API})
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response).get("files", [])
        url = next((f["url"] for f in files if f.get("filename") == name), None)
        if url is None:
            raise SuiteSourceError(f"the index {base} lists no {name}")
        part = dest.with_suffix(".part")
        with urllib.request.urlopen(url, timeout=120) as response, part.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SuiteSourceError(f"cannot fetch {name} from {base} ({exc}); on an air-gapped machine put it in "
                               f"{folder} (its sha256 must be one the locks pin)") from None
    found = wheelhouse.sha256_file(part)
    if found not in hashes:
        part.unlink(missing_ok=True)
        raise SuiteSourceError(f"{name}: sha256 {found} is none of the hashes the locks pin for mpi4py=={version}")
    part.replace(dest)
    return dest

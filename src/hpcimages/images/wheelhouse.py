"""A host-side cache of wheels and source tarballs, served to builds over loopback.

The whole matrix downloads each wheel once (``pip download`` on the host, hash-checked against the
lock, for the *image's* Python and platform), and each MPI tarball once (sha256-checked). During a build
a small HTTP server on 127.0.0.1 serves the cache; build containers use the host network and reach it
through ``PIP_FIND_LINKS`` / ``PIP_NO_INDEX`` and ``MPI_SOURCE_URL``. Nothing of it, and no credential,
ends up in an image layer.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from .. import state
from ..define.matrix import Source
from ..errors import HpcImagesError
from ..files import write_json
from .aptsources import resolve_debian_url

#: Every base of the matrix has at least this glibc (Debian bookworm): wheels must run there.
MIN_GLIBC = (2, 36)


class CacheError(HpcImagesError):
    """A wheel or tarball could not be fetched or failed its checksum."""


def cache_root() -> Path:
    """``$HPCIMAGES_CACHE``, else ``$XDG_CACHE_HOME/hpcimages``, else ``~/.cache/hpcimages``; created, or one
    clear error saying why it cannot be."""
    if os.environ.get("HPCIMAGES_CACHE"):
        root, origin = Path(os.environ["HPCIMAGES_CACHE"]), "HPCIMAGES_CACHE"
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root, origin = Path(xdg) / "hpcimages", "the cache folder"
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"{origin} {root} cannot be used as a folder ({exc.strerror}): point HPCIMAGES_CACHE at a "
                         "directory") from None
    return root


def platform_tags(machine: str | None = None) -> list[str]:
    machine = machine or platform.machine()
    tags = [f"manylinux_2_{minor}_{machine}" for minor in range(MIN_GLIBC[1], 16, -1)]
    tags += [f"manylinux2014_{machine}", f"manylinux2010_{machine}", f"manylinux1_{machine}"]
    return tags


def wheelhouse_dir(root: Path) -> Path:
    return root / "wheelhouse"


def download_wheels(lock: Path, python: str, root: Path) -> None:
    """All wheels of one lock for one Python version into the wheelhouse.

    The stamp of a lock is keyed by the lock's content and lists the files it brought with their sha256; a lock
    is done when every listed file is there with that hash. Otherwise pip downloads (hash-checked against the
    lock) into a scratch folder, and the files move into the wheelhouse only then: a lock that does not match
    its wheels fails without touching what the wheelhouse holds, and nothing is ever deleted from it."""
    dest = wheelhouse_dir(root)
    stamps = dest / ".done"
    stamps.mkdir(parents=True, exist_ok=True)
    stamp = stamps / stamp_name(lock, python)
    if _stamp_holds(stamp, dest):
        return
    with tempfile.TemporaryDirectory(prefix=".download-", dir=dest) as scratch:
        _pip_download(lock, python, Path(scratch))
        fetched = {}
        for wheel in sorted(Path(scratch).iterdir()):
            fetched[wheel.name] = sha256_file(wheel)
            target = dest / wheel.name
            if not target.is_file() or sha256_file(target) != fetched[wheel.name]:
                wheel.replace(target)  # a missing or damaged copy; a good one stays as it is
    write_json(stamp, fetched)


def stamp_name(lock: Path, python: str) -> str:
    """A lock's stamp is keyed by its content, the Python version and the machine the wheels are for."""
    return hashlib.sha256(lock.read_bytes() + f"\0{python}\0{platform.machine()}".encode()).hexdigest()


def fetched_files(lock: Path, python: str, root: Path) -> dict[str, str]:
    """The files pip downloaded for one lock and Python (file name -> sha256): what the builds installed from
    (``--require-hashes`` against the lock). Only files whose sha256 the lock pins; empty when the wheelhouse has
    no stamp of that lock (its files are not hashed again here: pip checked them against the lock)."""
    files = state.cached_object(wheelhouse_dir(root) / ".done" / stamp_name(lock, python))
    if not isinstance(files, dict):
        return {}
    pinned = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", lock.read_text(encoding="utf-8")))
    return {name: sha for name, sha in files.items()
            if isinstance(name, str) and name == Path(name).name and isinstance(sha, str) and sha in pinned}


def _stamp_holds(stamp: Path, dest: Path) -> bool:
    files = state.cached_object(stamp)  # none yet, an older stamp (an empty file), or broken: download again
    if not files or not all(isinstance(name, str) and name == Path(name).name and name not in ("", ".", "..")
                            for name in files):
        return False  # a name that is no file of the wheelhouse: the stamp does not choose what is read
    return all(
        (dest / name).is_file() and sha256_file(dest / name) == sha for name, sha in files.items())


def _pip_download(lock: Path, python: str, dest: Path) -> None:
    abi = "cp" + python.replace(".", "")
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
           "--only-binary=:all:", "--python-version", python, "--implementation", "cp",
           "--abi", abi, "--abi", "abi3", "--abi", "none", "--dest", str(dest), "--requirement", str(lock)]
    for tag in platform_tags():
        cmd += ["--platform", tag]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("WARNING: Location")]
        raise CacheError(f"pip download of {lock.name} for Python {python} failed:\n" + "\n".join(lines[-12:]))


def fetch_source(source: Source, root: Path) -> Path:
    """The tarball in the cache, downloaded if needed, always checked against its sha256."""
    dest = root / "sources" / source.filename
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file() and sha256_file(dest) == source.sha256:
        return dest
    url = resolve_debian_url(source.url)
    part = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=120) as response, part.open("wb") as out:
            while chunk := response.read(1 << 20):
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        part.unlink(missing_ok=True)
        raise CacheError(f"cannot download {url}: {exc}") from None
    found = sha256_file(part)
    if found != source.sha256:
        part.unlink(missing_ok=True)
        raise CacheError(f"{url}: sha256 mismatch: expected {source.sha256}, got {found}")
    part.replace(dest)
    return dest


DEFAULT_INDEX = "https://pypi.org/simple"  # pip's own default, used when neither the environment nor pip says
JSON_API = "application/vnd.pypi.simple.v1+json"


def pinned_hashes(repo: Path, package: str, version: str) -> set[str]:
    """Every sha256 that a lock of the repository pins for ``package==version`` (wheels and the sdist)."""
    found: set[str] = set()
    pin = re.compile(rf"^{re.escape(package)}=={re.escape(version)}(\s|$)", re.I)
    for lock in sorted((repo / "pip-requirements").rglob("*.txt")):
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


def fetch_sdist(repo: Path, package: str, version: str, folder: Path) -> Path:
    """``<package>-<version>.tar.gz`` in ``folder``, fetched once from the package index (PEP 691) and kept only
    when its sha256 is one the repository's locks pin for that version."""
    hashes = pinned_hashes(repo, package, version)
    if not hashes:
        raise CacheError(f"no lock of this repository pins {package}=={version}: its sdist cannot be verified")
    name = f"{package}-{version}.tar.gz"
    dest = folder / name
    if dest.is_file() and sha256_file(dest) in hashes:
        return dest
    folder.mkdir(parents=True, exist_ok=True)
    base = index_url()
    part = dest.with_suffix(".part")
    try:
        request = urllib.request.Request(f"{base}/{package}/", headers={"Accept": JSON_API})
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response).get("files", [])
        url = next((f["url"] for f in files if f.get("filename") == name), None)
        if url is None:
            raise CacheError(f"the index {base} lists no {name}")
        with urllib.request.urlopen(url, timeout=120) as response, part.open("wb") as out:
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise CacheError(f"cannot fetch {name} from {base} ({exc}); on an air-gapped machine put it in "
                         f"{folder} (its sha256 must be one the locks pin)") from None
    found = sha256_file(part)
    if found not in hashes:
        part.unlink(missing_ok=True)
        raise CacheError(f"{name}: sha256 {found} is none of the hashes the locks pin for {package}=={version}")
    part.replace(dest)
    return dest


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def serve(root: Path) -> Iterator[str]:
    """Serve ``root`` read-only on 127.0.0.1 (a free port) while the block runs; yields the base URL."""
    root.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="hpcimages-wheelhouse", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()

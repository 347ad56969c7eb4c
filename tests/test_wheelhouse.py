"""The host-side cache: checksums guard it, the loopback server serves it."""

from __future__ import annotations

import hashlib
import urllib.request

import pytest

from hpcimages.define.matrix import Source
from hpcimages.images import wheelhouse


@pytest.fixture
def served_tarball(tmp_path):
    """A tarball behind a real HTTP server on loopback (the same server the builds use)."""
    upstream = tmp_path / "upstream"
    (upstream / "pool").mkdir(parents=True)
    payload = b"pretend this is mpich-9.9.9.tar.gz\n" * 1000
    (upstream / "pool" / "mpich-9.9.9.tar.gz").write_bytes(payload)
    with wheelhouse.serve(upstream) as url:
        yield f"{url}/pool/mpich-9.9.9.tar.gz", hashlib.sha256(payload).hexdigest(), payload


def test_tarball_is_downloaded_once_and_checked(tmp_path, served_tarball):
    url, sha, payload = served_tarball
    cache = tmp_path / "cache"
    path = wheelhouse.fetch_source(Source(url, sha), cache)
    assert path.read_bytes() == payload
    mtime = path.stat().st_mtime_ns
    assert wheelhouse.fetch_source(Source(url, sha), cache).stat().st_mtime_ns == mtime


def test_checksum_mismatch_is_an_error_and_keeps_the_good_copy(tmp_path, served_tarball):
    url, sha, payload = served_tarball
    cache = tmp_path / "cache"
    good = wheelhouse.fetch_source(Source(url, sha), cache)
    with pytest.raises(wheelhouse.CacheError, match="sha256 mismatch: expected 0000"):
        wheelhouse.fetch_source(Source(url, "0" * 64), cache)
    assert good.read_bytes() == payload
    assert not list((cache / "sources").glob("*.part"))


def test_unreachable_tarball_is_a_clear_error(tmp_path):
    missing = pytest.raises(wheelhouse.CacheError, match=r"cannot download .*404")
    with wheelhouse.serve(tmp_path / "empty") as url, missing:
        wheelhouse.fetch_source(Source(f"{url}/nope.tar.gz", "0" * 64), tmp_path / "cache")


def test_server_lists_the_wheelhouse_for_pip(tmp_path):
    (tmp_path / "wheelhouse").mkdir()
    (tmp_path / "wheelhouse" / "demo-1.0-py3-none-any.whl").write_bytes(b"x")
    with wheelhouse.serve(tmp_path) as url:
        assert url.startswith("http://127.0.0.1:")
        page = urllib.request.urlopen(f"{url}/wheelhouse/").read().decode()
    assert 'href="demo-1.0-py3-none-any.whl"' in page


def test_platform_tags_stop_at_the_oldest_base_glibc():
    tags = wheelhouse.platform_tags("x86_64")
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert "manylinux_2_39_x86_64" not in tags


def test_cache_location_can_be_chosen(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCIMAGES_CACHE", str(tmp_path))
    assert wheelhouse.cache_root() == tmp_path


def make_wheel(folder, name: str = "hpcdemo", version: str = "1.0"):
    """A real (tiny) wheel, so pip handles it like any other."""
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as wheel:
        for arcname, text in files.items():
            wheel.writestr(arcname, text)
        wheel.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n")
    return path


def test_a_tampered_lock_fails_without_poisoning_the_cache(tmp_path, monkeypatch):
    upstream = make_wheel(tmp_path / "upstream")
    good = hashlib.sha256(upstream.read_bytes()).hexdigest()
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip finds the wheel where a package index would serve it
    monkeypatch.setenv("PIP_FIND_LINKS", str(upstream.parent))
    lock, cache = tmp_path / "lock.txt", tmp_path / "cache"
    lock.write_text(f"hpcdemo==1.0 --hash=sha256:{good}\n")
    wheelhouse.download_wheels(lock, "3.11", cache)
    cached = wheelhouse.wheelhouse_dir(cache) / upstream.name
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == good

    lock.write_text(f"hpcdemo==1.0 --hash=sha256:{'0' * 64}\n")  # one edited hash
    with pytest.raises(wheelhouse.CacheError, match=r"pip download of lock\.txt"):
        wheelhouse.download_wheels(lock, "3.11", cache)
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == good, "the good wheel is still in the cache"

    upstream.unlink()  # the lock put back: the cache alone serves it, nothing is fetched again
    lock.write_text(f"hpcdemo==1.0 --hash=sha256:{good}\n")
    wheelhouse.download_wheels(lock, "3.11", cache)
    cached.write_bytes(b"damaged")  # a damaged copy is not trusted: the stamp's hash no longer holds
    with pytest.raises(wheelhouse.CacheError):
        wheelhouse.download_wheels(lock, "3.11", cache)


def test_a_cache_below_a_regular_file_is_one_clear_error(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("HPCIMAGES_CACHE", str(tmp_path / "file" / "cache"))
    with pytest.raises(wheelhouse.CacheError, match=r"HPCIMAGES_CACHE .*file/cache cannot be used as a folder"):
        wheelhouse.cache_root()

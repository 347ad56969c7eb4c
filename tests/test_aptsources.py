"""The Debian mirror comes from the machine's apt sources, in either format."""

from __future__ import annotations

import pytest

from hpcimages.errors import BaseImageError
from hpcimages.images.aptsources import debian_mirror, resolve_debian_url


def test_deb822_sources(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (d / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n")
    (d / "vendor.list").write_text("deb https://vendor.example/apt stable-vendor main\n")
    assert debian_mirror((tmp_path / "sources.list", d)) == "http://mirror.example/debian"


def test_one_line_sources(tmp_path):
    f = tmp_path / "sources.list"
    f.write_text("# deb http://old.example/debian bookworm main\n"
                 "deb [signed-by=/x.gpg] http://one.example/debian trixie main contrib\n")
    assert debian_mirror((f,)) == "http://one.example/debian"


def test_no_debian_archive_is_a_clear_error(tmp_path):
    f = tmp_path / "sources.list"
    f.write_text("deb https://vendor.example/apt nodistro main\n")
    with pytest.raises(BaseImageError, match="no Debian archive found"):
        debian_mirror((f,))


def test_debian_urls_resolve_against_the_mirror():
    assert resolve_debian_url("debian:pool/main/m/mpich/x.tar.xz", "http://m/debian") == \
        "http://m/debian/pool/main/m/mpich/x.tar.xz"
    assert resolve_debian_url("https://example.org/x.tar.gz", "http://m") == "https://example.org/x.tar.gz"


def test_this_machine_has_a_mirror():
    assert debian_mirror().startswith(("http://", "https://"))

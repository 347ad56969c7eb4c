"""The Debian mirror this machine is configured for, read from its apt sources at run time.

Both formats are understood: deb822 ``*.sources`` files (``URIs:`` / ``Suites:``) and one-line
``deb URI SUITE COMPONENTS`` entries. The first archive that carries a Debian suite (not the security
archive, not a third-party repository) wins.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import BaseImageError

APT_DIRS = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))
DEBIAN_SUITES = re.compile(r"^(bookworm|trixie|forky|sid|unstable|testing|stable|bullseye)(-updates|-backports)?$")


def _source_files(roots: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for root in roots:
        if root.is_file():
            files.append(root)
        elif root.is_dir():
            files.extend(sorted(p for p in root.iterdir() if p.suffix in (".list", ".sources")))
    return files


def _deb822_entries(text: str) -> list[tuple[list[str], list[str]]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes").lower() != "no":
            entries.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
    return entries


def _one_line_entries(text: str) -> list[tuple[list[str], list[str]]]:
    entries = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) < 3 or words[0] != "deb":
            continue
        words = [w for w in words[1:] if not w.startswith("[")]  # drop [options]
        if len(words) >= 2:
            entries.append(([words[0]], [words[1]]))
    return entries


def debian_mirror(roots: tuple[Path, ...] = APT_DIRS) -> str:
    """The base URL of the configured Debian archive, e.g. ``http://mirror.example/debian``."""
    for path in _source_files(roots):
        text = path.read_text(encoding="utf-8", errors="replace")
        entries = _deb822_entries(text) if path.suffix == ".sources" else _one_line_entries(text)
        for uris, suites in entries:
            if any(DEBIAN_SUITES.match(s) for s in suites):
                for uri in uris:
                    if uri.startswith(("http://", "https://")) and "security" not in uri:
                        return uri.rstrip("/")
    searched = ", ".join(str(r) for r in roots)
    raise BaseImageError(f"no Debian archive found in the apt sources ({searched}); configure one, "
                         "e.g. a deb822 file with 'URIs: <mirror>/debian' and 'Suites: bookworm'")


def resolve_debian_url(url: str, mirror: str | None = None) -> str:
    """``debian:pool/...`` -> ``<mirror>/pool/...``; other URLs unchanged."""
    if not url.startswith("debian:"):
        return url
    return f"{mirror or debian_mirror()}/{url.removeprefix('debian:')}"

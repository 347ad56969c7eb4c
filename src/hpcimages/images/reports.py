"""The build and check reports: the one owner of ``build-report.json`` and ``check-report.json``.

``build-report.json`` holds one entry per cell and profile (key ``<profile>/<family:tag>``), the same shape
whoever wrote it last::

    profile, ref, image, aliases         which cell, under which tags
    status, image_id, seconds,           the last build (built | up to date | failed | skipped | unknown when
    size_bytes, reason, log              the image was checked but never built by this tool)
    checked_image_id, check_passed       the last `invoke check` of this cell, and the image it judged
    publishable                          derived: the check passed on exactly the image the build produced

A rebuilt image has a new id, so its old verdict no longer counts. ``check-report.json`` holds the last check
of each cell of one profile in full (every check's outcome and reason, and the image id it judged; checking
another profile starts it afresh). Publish and the catalogue read both through this module.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..errors import HpcImagesError
from ..files import write_json

BUILD_REPORT = "build-report.json"
CHECK_REPORT = "check-report.json"


class ReportError(HpcImagesError):
    """A report cannot be read: never reset silently, the other cells' entries would be lost."""


@dataclass
class CellEntry:
    profile: str
    ref: str
    image: str
    status: str = "unknown"
    image_id: str | None = None
    seconds: float = 0.0
    size_bytes: int | None = None
    reason: str = ""
    log: str | None = None
    aliases: list[str] = field(default_factory=list)
    checked_image_id: str | None = None
    check_passed: bool = False

    @property
    def key(self) -> str:
        return f"{self.profile}/{self.ref}"

    @property
    def publishable(self) -> bool:
        return self.check_passed and self.checked_image_id is not None and self.checked_image_id == self.image_id

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "publishable": self.publishable}

    @classmethod
    def from_json(cls, key: str, data: dict[str, Any]) -> CellEntry:
        profile, _, ref = key.partition("/")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("profile", profile)
        values.setdefault("ref", ref)
        values.setdefault("image", "")
        if "check_passed" not in data and "publishable" in data:  # written before the entry had check_passed
            values["check_passed"] = bool(data["publishable"])
        return cls(**values)


def _read(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (ValueError, OSError) as exc:
        raise ReportError(f"{path} cannot be read ({exc}); it is left as it is: move it away (or delete it) "
                          "and run the step again") from None


def load_entries(build_dir: Path) -> dict[str, CellEntry]:
    """Every cell entry of ``build-report.json`` (empty when there is none yet)."""
    cells = _read(build_dir / BUILD_REPORT).get("cells", {})
    if not isinstance(cells, dict):
        raise ReportError(f"{build_dir / BUILD_REPORT}: 'cells' is not a table; move the file away and run again")
    return {key: CellEntry.from_json(key, value) for key, value in cells.items() if isinstance(value, dict)}


def load_checks(build_dir: Path, profile: str) -> dict[str, dict[str, Any]]:
    """``check-report.json``'s cells of one profile (ref -> every check's outcome and the image id it judged); empty
    when there is none, it is another profile's, or it cannot be read: the details only explain a verdict that
    ``build-report.json`` holds."""
    try:
        data = _read(build_dir / CHECK_REPORT)
    except ReportError:
        return {}
    cells = data.get("cells") if data.get("profile") == profile else None
    return cells if isinstance(cells, dict) else {}


def _save_entries(build_dir: Path, entries: dict[str, CellEntry]) -> Path:
    return write_json(build_dir / BUILD_REPORT, {"cells": {k: e.to_json() for k, e in sorted(entries.items())}})


def record_build(build_dir: Path, profile: str, results: Iterable[Any]) -> Path:
    """Merge one build run (``images.build.CellResult``s) into the report. The last check's verdict stays with the
    image id it judged, so a rebuilt cell is no longer publishable and publish can say it was rebuilt."""
    entries = load_entries(build_dir)
    for r in results:
        previous = entries.get(f"{profile}/{r.ref}")
        entry = CellEntry(profile, r.ref, r.image, r.status, r.image_id, r.seconds, r.size_bytes, r.reason, r.log,
                          list(r.aliases))
        if previous is not None:  # kept even for a new image: `publishable` compares the ids, publish says why
            entry.checked_image_id, entry.check_passed = previous.checked_image_id, previous.check_passed
        entries[entry.key] = entry
    return _save_entries(build_dir, entries)


def record_check(build_dir: Path, profile: str, results: Iterable[Any]) -> Path:
    """Merge this run (``images.check.CellCheck``s) into ``check-report.json`` and mark the verdicts in the build
    report."""
    results = list(results)
    previous = _read(build_dir / CHECK_REPORT)
    cells = dict(previous.get("cells") or {}) if previous.get("profile") == profile else {}
    cells.update({r.ref: {**asdict(r), "passed": r.passed} for r in results})
    path = write_json(build_dir / CHECK_REPORT, {"profile": profile, "cells": cells})
    entries = load_entries(build_dir)
    for r in results:
        entry = entries.setdefault(f"{profile}/{r.ref}", CellEntry(profile, r.ref, r.image, image_id=r.image_id))
        entry.checked_image_id, entry.check_passed = r.image_id, r.passed
    _save_entries(build_dir, entries)
    return path

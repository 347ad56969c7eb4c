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

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .. import state
from ..errors import HpcImagesError
from ..files import write_json
from ..validate import shown

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
    def from_json(cls, key: str, data: Any, path: Path | str = BUILD_REPORT) -> CellEntry:
        """One entry of the report, every field checked (state.typed): a hand-edited entry is one clear line."""
        profile, _, ref = key.partition("/")
        if not isinstance(data, dict):
            raise ReportError(f"{path}: cells.{shown(key)}: must be a table, got {type(data).__name__}")
        values = {"profile": profile, "ref": ref, "image": "", **data}
        if "check_passed" not in data and "publishable" in data:  # written before the entry had check_passed
            values["check_passed"] = data["publishable"]
        try:
            entry = state.typed(cls, values, path, f"cells.{shown(key)}")
        except state.StateError as exc:
            raise ReportError(f"{exc}; the file is left as it is: fix the entry or move the file away") from None
        if entry.key != key:
            raise ReportError(f"{path}: cells.{shown(key)}: the key is not <profile>/<ref> of the entry "
                              f"({entry.key}); the file is left as it is")
        return entry

    ignored: ClassVar[tuple[str, ...]] = ("publishable",)  # derived, written for readers of the file
    field_checks: ClassVar[dict[str, state.Check]] = {
        "ref": state.cell_ref, "seconds": state.non_negative, "size_bytes": state.non_negative}


def _read(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = state.load_json(path, "report")
    except state.StateError as exc:
        raise ReportError(f"{exc}; it is left as it is: move it away (or delete it) and run the step again") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path} is not a JSON object; it is left as it is: move it away (or delete it) and run the "
                          "step again")
    return data


def load_entries(build_dir: Path) -> dict[str, CellEntry]:
    """Every cell entry of ``build-report.json`` (empty when there is none yet)."""
    cells = _read(build_dir / BUILD_REPORT).get("cells", {})
    if not isinstance(cells, dict):
        raise ReportError(f"{build_dir / BUILD_REPORT}: 'cells' is not a table; move the file away and run again")
    return {key: CellEntry.from_json(key, value, build_dir / BUILD_REPORT) for key, value in cells.items()}


@dataclass
class Outcome:
    """One check's outcome, as `invoke check` finds it and ``check-report.json`` holds it."""

    status: str  # pass | fail | skip
    reason: str = ""

    field_checks: ClassVar[dict[str, state.Check]] = {"status": state.one_of("pass", "fail", "skip")}


@dataclass
class CellCheck:
    """The check of one cell (images.check runs it; ``check-report.json`` holds the last one of each cell)."""

    ref: str
    image: str
    image_id: str | None = None
    checks: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0

    ignored: ClassVar[tuple[str, ...]] = ("passed",)  # derived, written for readers of the file
    field_checks: ClassVar[dict[str, state.Check]] = {"ref": state.cell_ref, "seconds": state.non_negative}

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(o.status != "fail" for o in self.checks.values()) and \
            self.checks.get("contents", Outcome("fail")).status == "pass"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def load_checks(build_dir: Path, profile: str) -> dict[str, CellCheck]:
    """``check-report.json``'s cells of one profile (ref -> every check's outcome and the image id it judged); empty
    when there is none or it is another profile's. An entry that is not what `invoke check` writes is a ReportError
    naming it: publish and the catalogue read their verdicts' details from here."""
    path = build_dir / CHECK_REPORT
    data = _read(path)
    if data.get("profile") != profile:
        return {}
    cells = data.get("cells")
    if not isinstance(cells, dict):
        raise ReportError(f"{path}: cells: must be a table; the file is left as it is: move it away and check again")
    result = {}
    for ref, cell in cells.items():
        try:
            result[ref] = state.typed(CellCheck, cell, path, f"cells.{shown(ref)}")
        except state.StateError as exc:
            raise ReportError(f"{exc}; the file is left as it is: run `invoke check` again, or move it away") \
                from None
        if result[ref].ref != ref:
            raise ReportError(f"{path}: cells.{shown(ref)}: holds the check of {result[ref].ref}; the file is left "
                              "as it is: run `invoke check` again")
    return result


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
    """Merge this run (``CellCheck``s) into ``check-report.json`` and mark the verdicts in the build
    report."""
    results = list(results)
    cells = load_checks(build_dir, profile)  # read through the typed reader: a broken entry stops the merge
    cells.update({r.ref: r for r in results})
    path = write_json(build_dir / CHECK_REPORT, {"profile": profile, "cells": {ref: c.to_json() for ref, c in
                                                                               cells.items()}})
    entries = load_entries(build_dir)
    for r in results:
        entry = entries.setdefault(f"{profile}/{r.ref}", CellEntry(profile, r.ref, r.image, image_id=r.image_id))
        entry.checked_image_id, entry.check_passed = r.image_id, r.passed
    _save_entries(build_dir, entries)
    return path

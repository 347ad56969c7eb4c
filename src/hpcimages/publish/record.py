"""``publish-report.json``: the one record of what was shipped. Per registry target and cell: every tag, the
manifest digest (proven by reading it back), the image id, sizes, when and from which git revision, the pulled-back
hello, and the ``.sif`` pushed beside it. An entry is written only after every proof passed; the last run's
per-cell verdicts (refusals and failures included) are kept beside the entries.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..files import write_json
from ..images.reports import ReportError

PUBLISH_REPORT = "publish-report.json"


@dataclass
class SifRecord:
    ref: str
    sha256: str
    digest: str | None = None


@dataclass
class Published:
    profile: str
    ref: str
    image_id: str
    repository: str
    tags: list[str]
    digest: str
    size_bytes: int | None
    compressed_bytes: int
    published_at: str
    revision: str
    image_revision: str
    hello: str
    sif: SifRecord | None = None
    seconds: float = 0.0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Published:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("sif"), dict):
            values["sif"] = SifRecord(**{k: v for k, v in values["sif"].items() if k in ("ref", "sha256", "digest")})
        return cls(**values)


@dataclass
class PublishReport:
    path: Path
    targets: dict[str, dict[str, Published]] = field(default_factory=dict)
    last_run: dict[str, Any] = field(default_factory=dict)

    def get(self, target: str, ref: str) -> Published | None:
        return self.targets.get(target, {}).get(ref)

    def put(self, target: str, entry: Published) -> None:
        self.targets.setdefault(target, {})[entry.ref] = entry

    def save(self) -> Path:
        return write_json(self.path, {
            "targets": {t: {ref: asdict(e) for ref, e in sorted(cells.items())} for t, cells in self.targets.items()},
            "last_run": self.last_run})


def load(build_dir: Path) -> PublishReport:
    path = build_dir / PUBLISH_REPORT
    report = PublishReport(path)
    if not path.is_file():
        return report
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        for target, cells in (data.get("targets") or {}).items():
            for entry in cells.values():
                report.put(target, Published.from_json(entry))
        report.last_run = data.get("last_run") or {}
    except (ValueError, TypeError, AttributeError, OSError) as exc:
        raise ReportError(f"{path} cannot be read ({exc}); it is left as it is: move it away and publish again "
                          "(the registry keeps what was pushed; a re-run proves it again)") from None
    return report

"""``publish-report.json``: the one record of what was shipped. Per registry target and cell: every tag, the
manifest digest (proven by reading it back), the image id, sizes, when and from which git revision, the pulled-back
hello, and the ``.sif`` pushed beside it. An entry is written only after every proof passed; the last run's
per-cell verdicts (refusals and failures included) are kept beside the entries.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .. import state
from ..files import write_json
from ..images.reports import ReportError
from ..validate import TAG_RE, problem, shown

PUBLISH_REPORT = "publish-report.json"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


SHA256_RE = re.compile(r"[0-9a-f]{64}")
SIF_REF_RE = re.compile(r"[a-z0-9][a-z0-9.-]*(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)+:[A-Za-z0-9_][A-Za-z0-9_.-]*")


def sif_ref_problem(value: str) -> str | None:
    return None if SIF_REF_RE.fullmatch(value) else f"{shown(value)} is not a repository:tag"


def fingerprint_problem(value: str) -> str | None:
    """An Apptainer key's fingerprint, or empty (not signed)."""
    return None if re.fullmatch(r"([0-9A-F]{40})?", value) else f"{shown(value)} is not a fingerprint"


def digest_problem(value: str) -> str | None:
    return None if DIGEST_RE.fullmatch(value) else f"{shown(value)} is not a sha256:<64 hex> digest"


def repository_problem(value: str) -> str | None:
    return None if REPOSITORY_RE.fullmatch(value) else f"{shown(value)} is not a repository"


def _sha256_problem(value: str) -> str | None:
    return None if SHA256_RE.fullmatch(value) else f"{shown(value)} is not a sha256 (64 hex)"


@dataclass
class SifRecord:
    ref: str
    sha256: str
    digest: str | None = None
    signed_by: str = ""  # the Apptainer key's fingerprint, when the pushed .sif is the signed copy

    field_checks: ClassVar[dict[str, state.Check]] = {
        "ref": sif_ref_problem, "sha256": _sha256_problem, "signed_by": fingerprint_problem}


@dataclass
class SignRecord:
    """What signed a published digest: the cosign key (sha256 of its public key) and the documents it attested."""

    key: str
    spdx_sha256: str
    cyclonedx_sha256: str
    provenance_sha256: str
    signed_at: str

    field_checks: ClassVar[dict[str, state.Check]] = {
        "key": lambda v: None if DIGEST_RE.fullmatch(v) else f"{shown(v)} is not a sha256:<64 hex> key id",
        "spdx_sha256": _sha256_problem, "cyclonedx_sha256": _sha256_problem, "provenance_sha256": _sha256_problem}


REPOSITORY_RE = re.compile(r"[a-z0-9][a-z0-9.-]*(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)+")


def tags_problem(tags: list[str]) -> str | None:
    if not tags:
        return "must name at least one tag"
    bad = next((t for t in tags if problem(t, TAG_RE, 128)), None)
    return f"{shown(bad)} is not a tag" if bad is not None else None


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
    signed: SignRecord | None = None

    field_checks: ClassVar[dict[str, state.Check]] = {
        "ref": state.cell_ref, "tags": tags_problem, "size_bytes": state.non_negative,
        "compressed_bytes": state.non_negative, "seconds": state.non_negative,
        "digest": digest_problem,
        # the image id names the inventory's cache file and the image the catalogue runs; the repository is pulled
        "image_id": lambda v: None if DIGEST_RE.fullmatch(v) else f"{shown(v)} is not an image id (sha256:<64 hex>)",
        "repository": repository_problem}


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
    """The report, every entry checked (state.typed); a broken one is a ReportError and the file stays as it is."""
    path = build_dir / PUBLISH_REPORT
    report = PublishReport(path)
    if not path.exists():
        return report
    advice = ("it is left as it is: move it away and publish again (the registry keeps what was pushed; a re-run "
              "proves it again)")
    try:
        data = state.load_json(path, "report")
        if not isinstance(data, dict):
            raise state.StateError(f"{path}: must be a JSON object")
        targets = data.get("targets", {})
        if not isinstance(targets, dict):
            raise state.StateError(f"{path}: targets: must be a table")
        for target, cells in targets.items():
            if not isinstance(cells, dict):
                raise state.StateError(f"{path}: targets.{shown(target)}: must be a table")
            for ref, entry in cells.items():
                published = state.typed(Published, entry, path, f"targets.{shown(target)}.{shown(ref)}")
                if published.ref != ref:
                    raise state.StateError(f"{path}: targets.{shown(target)}.{shown(ref)}: holds {published.ref}")
                report.put(target, published)
        last_run = data.get("last_run", {})
        if not isinstance(last_run, dict):
            raise state.StateError(f"{path}: last_run: must be a table")
        report.last_run = last_run
    except state.StateError as exc:
        raise ReportError(f"{exc}; {advice}") from None
    return report

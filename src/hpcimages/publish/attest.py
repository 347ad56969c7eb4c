"""What ``invoke publish`` adds to a pushed image when its profile signs: the SBOMs and the provenance statement of
exactly that digest, written beside the image's catalogue page, then the signature and the three attestations by the
centre's cosign key (signing.py). The ``.sif`` of the cell carries the same three documents inside its signed copy
(sifpush.py).
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker

from ..define.matrix import Cell, Matrix, Profile
from ..engine import find_image
from ..images import wheelhouse
from ..paths import public_source
from . import catalogue, provenance, sbom, signing
from .record import Published, SignRecord
from .remote import Target

Progress = Callable[[str], None]
#: cosign's attestation types, in the order of Documents.all()
KINDS = ("spdxjson", "cyclonedx", "slsaprovenance1")


@dataclass(frozen=True)
class Documents:
    spdx: Path
    cyclonedx: Path
    provenance: Path

    def all(self) -> list[Path]:
        return [self.spdx, self.cyclonedx, self.provenance]

    def exist(self) -> bool:
        return all(p.is_file() for p in self.all())

    def hashes(self) -> tuple[str, str, str]:
        spdx, cdx, prov = (wheelhouse.sha256_file(p) for p in self.all())
        return spdx, cdx, prov


def documents(root: Path, target: Target, ref: str) -> Documents:
    """Where a published cell's SBOMs and provenance lie: beside its catalogue page (``<family>/<tag>.*``)."""
    family, tag = ref.split(":", 1)
    folder = catalogue.catalogue_dir(root, target) / family
    return Documents(folder / f"{tag}{sbom.SPDX_SUFFIX}", folder / f"{tag}{sbom.CYCLONEDX_SUFFIX}",
                     folder / f"{tag}{provenance.PROVENANCE_SUFFIX}")


def write_documents(client: docker.DockerClient, matrix: Matrix, profile: Profile, cell: Cell, target: Target,
                    entry: Published, folder: Path) -> tuple[Documents, sbom.Sboms]:
    """The SBOMs (from an inventory run inside the image, plus what no package manager knows) and the provenance
    of the published digest."""
    image = client.images.get(entry.image_id)
    inventory = catalogue.inventory(client, entry, catalogue.catalogue_dir(matrix.root) / ".inventory")
    base = find_image(client, profile.bases[cell.python].image)
    cache = wheelhouse.cache_root()
    parts = sbom.contents(matrix, profile, cell, inventory, base_id=base.id if base else "",
                          base_digests=list(base.attrs.get("RepoDigests") or []) if base else [],
                          base_labels=dict(base.labels or {}) if base else {}, cache=cache)
    subject = sbom.Subject(entry.repository, entry.digest, tuple(entry.tags), entry.ref, entry.image_id)
    final = documents(matrix.root, target, entry.ref)
    docs = Documents(*(folder / p.name for p in final.all()))
    written = sbom.write(folder, final.spdx.name.removesuffix(sbom.SPDX_SUFFIX), subject, parts)
    facts = provenance.build_facts(client, matrix, profile, cell)
    predicate = provenance.statement_predicate(matrix, profile, cell, dict(image.labels or {}), image.id, facts,
                                               public_source(matrix.root, matrix.source), cache)
    docs.provenance.write_text(json.dumps(predicate, indent=2) + "\n", encoding="utf-8")
    return docs, written


def attest_image(client: docker.DockerClient, matrix: Matrix, profile: Profile, cell: Cell, target: Target,
                 entry: Published, signer: signing.Signer, progress: Progress = print) -> str:
    """Sign and attest the published digest, unless the record says this key already did for these documents and
    the registry still holds the signature. Returns what happened, for the table."""
    reference = f"{entry.repository}@{entry.digest}"
    docs = documents(matrix.root, target, entry.ref)
    key = signer.keys.key_id
    previous = entry.signed
    if previous is not None and previous.key == key and docs.exist() \
            and docs.hashes() == (previous.spdx_sha256, previous.cyclonedx_sha256, previous.provenance_sha256) \
            and signer.is_attested(reference, KINDS):
        return "signed (up to date)"
    # written aside, signed, and only then put beside the page: what lies there is always what was attested
    with tempfile.TemporaryDirectory(prefix="hpcimages-attest-") as tmp:
        fresh, written = write_documents(client, matrix, profile, cell, target, entry, Path(tmp))
        progress(f"    SBOM: {written.components} components "
                 f"({', '.join(f'{k} {v}' for k, v in written.stack.items())}); SPDX 2.3 and CycloneDX 1.6 valid; "
                 "provenance: SLSA v1")
        signer.sign_image(reference, list(zip(KINDS, fresh.all(), strict=True)))
        docs.spdx.parent.mkdir(parents=True, exist_ok=True)
        for made, final in zip(fresh.all(), docs.all(), strict=True):
            shutil.move(made, final)
    spdx, cdx, prov = docs.hashes()
    entry.signed = SignRecord(key=key, spdx_sha256=spdx, cyclonedx_sha256=cdx, provenance_sha256=prov,
                              signed_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    progress(f"    signed {reference} and attested its SBOMs and provenance (cosign, key {key[7:19]})")
    return "signed"

"""``invoke publish``: push only checked images, prove what the registry holds, record it.

For each chosen cell, parents first:

1. **eligible?** the image in the engine is the one the build recorded, and ``invoke check`` passed on exactly that
   image id; a child whose parent is refused is refused too (its layers would ship an unproven parent);
2. **tags**: the cell's own, the profile's alias rules, ``latest`` for the designated cell of its family, and the
   release tag from the image's labels — a release tag that already names another image is never moved;
3. **up to date?** the record says this image was published under these tags and the registry still serves the
   recorded digest for each: nothing is pushed;
4. **push** each tag (stream read line by line, transient failures retried with backoff);
5. **prove**: skopeo reads every tag back; the digest of the bytes it served must equal the engine's, and the
   manifest's config must be the checked image id; the engine pulls the image by digest and 2 ranks say hello in
   the pulled copy;
6. where the profile signs, **sign** the digest and attest its SBOMs and provenance (attest.py);
7. only then **record** it in ``publish-report.json`` (and, with ``--sif``, push and pull back the ``.sif``, the
   signed copy where the profile signs).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import docker
import docker.errors
from docker.models.images import Image

from .. import engine
from ..define.matrix import Cell, Matrix, Profile
from ..define.tags import alias_tags, release_tag
from ..engine import find_image
from ..errors import HpcImagesError, output_tail
from ..images import reports
from ..mpirun import launch_settings
from ..paths import build_dir, git_revision
from . import attest, record, remote, signing
from . import push as push_mod
from .record import Published
from .remote import Target

HELLO = ("mpiexec", "-n", "2", "python3", "-m", "mpi4py.bench", "helloworld")
HELLO_TIMEOUT_S = 180

Progress = Callable[[str], None]


@dataclass
class CellPublish:
    ref: str
    status: str  # published | up to date | refused | failed | would publish
    tags: list[str] = field(default_factory=list)
    digest: str = ""
    reason: str = ""
    seconds: float = 0.0
    sif: str = ""
    signed: str = ""  # signed | signed (up to date) | "" (the profile does not sign)

    @property
    def ok(self) -> bool:
        return self.status in ("published", "up to date", "would publish") and not self.sif.startswith("FAILED")


class Refused(HpcImagesError):
    """The cell may not be published (not built, not checked, check failed, changed since)."""


class Failed(HpcImagesError):
    """Publishing the cell went wrong; nothing was recorded."""


def eligibility(cell: Cell, profile: Profile, entries: dict[str, reports.CellEntry],
                check_details: dict[str, reports.CellCheck],
                client: docker.DockerClient) -> str:
    """The image id to publish, or ``Refused`` with the reason a maintainer acts on."""
    entry = entries.get(f"{profile.name}/{cell.ref}")
    if entry is None or not entry.image_id:
        raise Refused("not built by this tool in this profile: run `invoke build`, then `invoke check`")
    image = find_image(client, cell.image(profile.registry))
    if image is None:
        raise Refused(f"{cell.image(profile.registry)} is not in the engine: run `invoke build`")
    if image.id != entry.image_id:
        raise Refused(f"the engine's {cell.image(profile.registry)} is {image.id[7:19]}, not the image the build "
                      f"recorded ({entry.image_id[7:19]}): rebuild and check it")
    if entry.checked_image_id is None:
        raise Refused("never checked: run `invoke check`")
    if entry.checked_image_id != entry.image_id:
        raise Refused(f"rebuilt after its check (checked {entry.checked_image_id[7:19]}, now "
                      f"{entry.image_id[7:19]}): run `invoke check` again")
    details = check_details.get(cell.ref)
    if not entry.check_passed:
        failed = [f"{name}: {outcome.reason}"[:160] for name, outcome in (details.checks if details else {}).items()
                  if outcome.status == "fail"]
        raise Refused("its check failed" + (f" ({'; '.join(failed)})" if failed else "") + ": fix it, rebuild, "
                      "check again")
    if details is not None and details.image_id == entry.image_id and not details.passed:
        raise Refused(f"the reports disagree: {reports.BUILD_REPORT} says the check of {entry.image_id[7:19]} passed, "
                      f"{reports.CHECK_REPORT} that it failed: run `invoke check` again")
    return image.id


def cell_tags(cell: Cell, profile: Profile, labels: dict[str, str]) -> list[str]:
    tags = [cell.tag, *alias_tags(cell, profile.publish.aliases)]
    if cell.ref in profile.publish.latest:
        tags.append("latest")
    release = release_tag(profile.publish.release, cell.tag, labels)
    if release is None:
        raise Refused(f"no release tag from {profile.publish.release!r}: the image lacks its revision or created "
                      "label (built by another tool?)")
    tags.append(release)
    return tags


class Publisher:
    def __init__(self, client: docker.DockerClient, matrix: Matrix, profile: Profile, target: Target,
                 progress: Progress = print, sif_pusher: Callable[[Cell, Image, Published], str] | None = None,
                 signer: signing.Signer | None = None) -> None:
        self.client = client
        self.signer = signer
        self.matrix = matrix
        self.profile = profile
        self.target = target
        self.progress = progress
        self.sif_pusher = sif_pusher
        self.out = build_dir(matrix.root)
        self.entries = reports.load_entries(self.out)
        self.check_details = reports.load_checks(self.out, profile.name)
        self.report = record.load(self.out)
        self.refused: dict[str, str] = {}

    # -- deciding ---------------------------------------------------------------------------------

    def decide(self, cell: Cell) -> str:
        """The image id, or Refused (parents are judged first, even when they are not chosen)."""
        if cell.ref in self.refused:
            raise Refused(self.refused[cell.ref])
        parent = cell.parent_ref()
        try:
            if parent is not None:
                parent_cell = self.matrix.cell(parent)
                if parent_cell is not None:
                    try:
                        self.decide(parent_cell)
                    except Refused as exc:
                        raise Refused(f"its parent {parent} is refused ({exc})") from None
            return eligibility(cell, self.profile, self.entries, self.check_details, self.client)
        except Refused as exc:
            self.refused[cell.ref] = str(exc)
            raise

    def up_to_date(self, cell: Cell, image_id: str, tags: list[str]) -> Published | None:
        previous = self.report.get(str(self.target), cell.ref)
        if previous is None or previous.image_id != image_id or set(tags) - set(previous.tags):
            return None
        repository = self.target.repository(cell.family.name)
        for tag in tags:
            manifest = remote.inspect(self.target, f"{repository}:{tag}")
            if manifest is None or manifest.digest != previous.digest:
                return None
        return previous

    # -- publishing -------------------------------------------------------------------------------

    def publish_cell(self, cell: Cell, dry_run: bool) -> CellPublish:
        start = time.monotonic()
        result = CellPublish(cell.ref, "refused")
        try:
            image_id = self.decide(cell)
            image = self.client.images.get(image_id)
            result.tags = cell_tags(cell, self.profile, image.labels)
            if dry_run:
                result.status = "would publish"
                return result
            previous = self.up_to_date(cell, image_id, result.tags)
            if previous is not None:
                result.status, result.digest = "up to date", previous.digest
                entry = previous
            else:
                entry = self.push_and_prove(cell, image, result.tags)
                result.status, result.digest = "published", entry.digest
            if self.signer is not None:
                try:
                    result.signed = attest.attest_image(self.client, self.matrix, self.profile, cell, self.target,
                                                        entry, self.signer, self.progress)
                except HpcImagesError as exc:  # signing, the SBOM, the provenance, the inventory in the image
                    # pushed and proven, but not signed: recorded without a signature, and the run fails
                    self.report.put(str(self.target), entry)
                    self.report.save()
                    raise Failed(f"pushed as {entry.digest[:19]}, but not signed: {exc}") from None
            if self.sif_pusher is not None:
                result.sif = self.sif_pusher(cell, image, entry)
            self.report.put(str(self.target), entry)
            self.report.save()
        except Refused as exc:
            result.status, result.reason = "refused", str(exc)
        except (Failed, push_mod.PushError, remote.RegistryError) as exc:
            result.status, result.reason = "failed", str(exc)
        except docker.errors.APIError as exc:
            result.status, result.reason = "failed", f"the engine: {exc.explanation or exc}"
        result.seconds = time.monotonic() - start
        return result

    def push_and_prove(self, cell: Cell, image: Image, tags: list[str]) -> Published:
        repository = self.target.repository(cell.family.name)
        release = tags[-1]
        existing = remote.inspect(self.target, f"{repository}:{release}")
        if existing is not None and existing.config_digest != image.id:
            raise Refused(f"release tag {repository}:{release} already names another image (config "
                          f"{str(existing.config_digest)[7:19]}): release tags are never moved; commit and rebuild")
        digests = set()
        for tag in tags:
            self.client.api.tag(image.id, repository, tag)
            self.progress(f"    pushing {repository}:{tag}")
            pushed = push_mod.push(self.client, repository, tag, self.profile.publish.retries, self.progress,
                                   answers=lambda: remote.answers(self.target))
            digests.add(pushed.digest)
            self.progress(f"    {tag}: {pushed.digest} ({pushed.layers} layers, {pushed.seconds:.1f}s"
                          f"{f', {pushed.attempts} attempts' if pushed.attempts > 1 else ''})")
        if len(digests) != 1:
            raise Failed(f"the engine reported {len(digests)} different digests for one image: {sorted(digests)}")
        digest = digests.pop()
        manifest = self.prove(repository, tags, digest, image.id)
        hello = self.pull_and_hello(repository, digest, image.id, launch_settings(cell.mpi.abi, cell.mpi.version))
        return Published(
            profile=self.profile.name, ref=cell.ref, image_id=image.id, repository=repository, tags=tags,
            digest=digest, size_bytes=image.attrs.get("Size"), compressed_bytes=manifest.compressed_size,
            published_at=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            revision=git_revision(self.matrix.root) or "unknown",
            image_revision=image.labels.get("org.opencontainers.image.revision", ""), hello=hello)

    def prove(self, repository: str, tags: list[str], digest: str, image_id: str) -> remote.Manifest:
        """Every tag, read back by skopeo: the digest of the served bytes and the config it names."""
        repo_digests = self.client.images.get(image_id).attrs.get("RepoDigests") or []
        if f"{repository}@{digest}" not in repo_digests:
            raise Failed(f"the engine does not list {repository}@{digest} among the image's RepoDigests")
        manifest = None
        for tag in tags:
            manifest = remote.inspect(self.target, f"{repository}:{tag}")
            if manifest is None:
                raise Failed(f"the registry has no {repository}:{tag} after the push")
            if manifest.digest != digest:
                raise Failed(f"digest mismatch for {repository}:{tag}: the engine pushed {digest}, the registry "
                             f"serves {manifest.digest}; not recorded as published")
            if manifest.config_digest != image_id:
                raise Failed(f"{repository}:{tag} names image {str(manifest.config_digest)[7:19]}, not the checked "
                             f"{image_id[7:19]}; not recorded as published")
        self.progress(f"    read back with skopeo: {len(tags)} tags -> {digest}, config = the checked image")
        assert manifest is not None
        return manifest

    def pull_and_hello(self, repository: str, digest: str, image_id: str, env: dict[str, str] | None = None) -> str:
        """The image pulled back by digest must be the checked one, and say hello from 2 ranks (``env``: what the
        image's own launcher needs as root, mpirun.launch_settings)."""
        by_digest = f"{repository}@{digest}"
        try:
            self.client.api.pull(by_digest)
            pulled = self.client.images.get(by_digest)
        except docker.errors.APIError as exc:
            raise Failed(f"pulling {by_digest} back failed: {exc.explanation or exc}") from None
        if pulled.id != image_id:
            raise Failed(f"{by_digest} pulled as {pulled.id[7:19]}, not the checked {image_id[7:19]}")
        code, out = engine.run(self.client, by_digest, list(HELLO), timeout=HELLO_TIMEOUT_S, env=env or {})
        if code != 0 or "process 0 of 2" not in out or "process 1 of 2" not in out:
            raise Failed(f"the 2-rank hello failed in the pulled {by_digest} (exit {code}): "
                         f"{output_tail(out, lines=3, limit=300)}")
        self.progress("    pulled by digest; 2-rank hello passed in the pulled copy")
        return "2 ranks said hello in the copy pulled by digest"


def publish(client: docker.DockerClient, matrix: Matrix, profile: Profile, cells: Iterable[Cell], target: Target,
            dry_run: bool = False, progress: Progress = print,
            sif_pusher: Callable[[Cell, Image, Published], str] | None = None,
            signer: signing.Signer | None = None) -> list[CellPublish]:
    cells = list(cells)
    if not dry_run:
        access = remote.ping(target)
        progress(f"registry {target.host} answers ({access}); publishing {len(cells)} cells to {target}")
    publisher = Publisher(client, matrix, profile, target, progress, sif_pusher, signer)
    results = []
    for i, cell in enumerate(cells, 1):
        progress(f"[{i}/{len(cells)}] {cell.ref}")
        result = publisher.publish_cell(cell, dry_run)
        progress(f"[{i}/{len(cells)}] {cell.ref}: {result.status}{f' ({result.reason})' if result.reason else ''}")
        results.append(result)
    if not dry_run:
        publisher.report.last_run = {
            "target": str(target), "profile": profile.name,
            "at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "cells": {r.ref: {"status": r.status, "reason": r.reason, "tags": r.tags, "sif": r.sif,
                              "signed": r.signed} for r in results}}
        publisher.report.save()
    return results

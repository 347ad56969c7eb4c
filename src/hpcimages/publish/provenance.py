"""The provenance of a published image: an SLSA provenance v1 predicate, written with the in-toto attestation
framework's own message types (``in-toto-attestation``) and signed by ``cosign attest`` into an in-toto statement
whose subject is the image's digest.

Its materials are the cell's real inputs, each proven before it is written: the checkout's rendered Dockerfile, the
files it copies (the hashed locks among them) and the build args give the same input hash as the image's own
``io.hpcimages.input-hash`` label, so they are the files the image was built from, not merely today's. Beside them:
the image the cell starts FROM (base or parent) by id, every tarball and sdist by sha256, the git revision (and
whether the tree had uncommitted changes), the builder and its version.

``check`` is what ``invoke verify`` runs on a statement read back from the registry: the cell exists in the matrix
at that revision, every file material hashes to what that revision holds, and the labels of the image agree.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import docker
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2

from .. import __version__
from ..define.matrix import Cell, Matrix, Profile, read_matrix
from ..define.render import GENERATED, dockerfile_path
from ..engine import find_image
from ..errors import HpcImagesError
from ..images import wheelhouse
from ..images.aptsources import resolve_debian_url
from ..images.build import (
    INPUT_LABEL,
    TRANSIENT_ARGS,
    Builder,
    build_args,
    cell_sources,
    copied_files,
    from_image,
    hashed_args,
    mpi_source,
)
from ..paths import without_credentials
from ..validate import NAME_RE

PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
#: the predicate's file beside the catalogue page (and its name inside a signed .sif)
PROVENANCE_SUFFIX = ".provenance.slsa.json"
#: what the build is: a matrix cell rendered to a Dockerfile and built by the engine's builder (docs/publish.md)
BUILD_TYPE = "urn:hpcimages:build-type:matrix-cell:v1"
BUILDER_ID = "urn:hpcimages:builder:docker-engine"
REVISION_LABEL = "org.opencontainers.image.revision"
REPOSITORY_FILE = "a file of the repository at the revision"
COMMIT_RE = re.compile(r"[0-9a-f]{40}")
CELL_REF_RE = re.compile(r"[a-z0-9][a-z0-9-]*:[A-Za-z0-9][A-Za-z0-9_.-]*")


class ProvenanceError(HpcImagesError):
    """A provenance statement cannot be made (its materials are not the image's inputs)."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class BuildFacts:
    """What the engine knows of the build: the image it started FROM, the builder's version."""

    from_image: str  # the base (root cells) or the parent cell's image
    from_id: str  # its image id
    input_hash: str  # what the build computed from these inputs now (must equal the image's label)
    engine_version: str
    builder_image_id: str = ""  # the image an MPI tarball is compiled in, for a source MPI
    hdf5_builder: tuple[str, str] = ("", "")  # (image, id) an HDF5 is compiled in, where that is not the parent


def build_facts(client: docker.DockerClient, matrix: Matrix, profile: Profile, cell: Cell) -> BuildFacts:
    """The FROM image, the input hash the build computes from the checkout now, and the engine's version."""
    builder = Builder(client, matrix, profile, progress=lambda _: None)
    _, from_image_ref = from_image(matrix, profile, cell)
    found = find_image(client, from_image_ref)
    if found is None:
        raise ProvenanceError(f"{from_image_ref}, which {cell.ref} starts FROM, is not in the engine: the provenance "
                              "names it by id")
    digest = builder.current_hash(cell, found.id if cell.family.parent else None) or ""
    build_image = find_image(client, profile.mpi_build_image) if mpi_source(profile, cell) else None
    return BuildFacts(from_image_ref, found.id, digest, str(client.version().get("Version", "unknown")),
                      build_image.id if build_image is not None else "", hdf5_builder_of(client, matrix, profile, cell))


def hdf5_builder_of(client: docker.DockerClient, matrix: Matrix, profile: Profile, cell: Cell) -> tuple[str, str]:
    """The image (and its id) a cell's HDF5 is compiled in, where that is another Python's cell of its MPI."""
    builder = matrix.hdf5_builder_apart(profile, cell)
    if builder is None:
        return "", ""
    image = builder.image(profile.registry)
    found = find_image(client, image)
    if found is None:
        raise ProvenanceError(f"{image}, in which the HDF5 of {cell.ref} is compiled, is not in the engine: the "
                              "provenance names it by id")
    return image, found.id


def statement_predicate(matrix: Matrix, profile: Profile, cell: Cell, labels: dict[str, str], image_id: str,
                        facts: BuildFacts, source: str, cache: Path, mirror: str | None = None) -> dict[str, Any]:
    """The SLSA v1 predicate (a JSON object) of one published image. ProvenanceError when the checkout's inputs are
    not the ones the image was built from."""
    label = labels.get(INPUT_LABEL, "")
    if not label or label != facts.input_hash:
        raise ProvenanceError(
            f"the inputs of {cell.ref} in this checkout are not the ones the image was built from (input hash "
            f"{facts.input_hash[:12] or 'unknown'}, the image's label {label[:12] or 'missing'}): rebuild and check "
            "it, then publish")
    revision = labels.get(REVISION_LABEL, "")
    clean_revision = revision.removesuffix("-dirty")
    predicate = provenance_pb2.Provenance()
    definition = predicate.build_definition
    definition.build_type = BUILD_TYPE
    definition.external_parameters.update({
        "matrix": "matrix.toml", "profile": profile.name, "cell": cell.ref,
        "source": {"uri": source, "revision": clean_revision, "uncommittedChanges": revision.endswith("-dirty")}})
    args = hashed_args(profile, cell, build_args(matrix, profile, cell, None))
    definition.internal_parameters.update({
        "inputHash": facts.input_hash,
        "buildArgs": {k: v for k, v in sorted(args.items()) if k not in TRANSIENT_ARGS}})
    if clean_revision:
        git_source = definition.resolved_dependencies.add()
        git_source.name = "source"
        if source:
            git_source.uri = f"git+{source}"
        git_source.digest["gitCommit"] = clean_revision
        if revision.endswith("-dirty"):
            git_source.annotations.update({"note": "built from a tree with uncommitted changes; the file materials "
                                                   "below are what the build read"})
    dockerfile = dockerfile_path(matrix, cell)
    rels = [str(dockerfile.relative_to(matrix.root)), *copied_files(dockerfile.read_text(encoding="utf-8"))]
    for rel in dict.fromkeys(rels):  # a file copied twice is one material
        material = definition.resolved_dependencies.add()
        material.name = rel
        if source and clean_revision:
            material.uri = f"git+{source}@{clean_revision}#{rel}"
        material.digest["sha256"] = sha256_bytes((matrix.root / rel).read_bytes())
        material.annotations.update({"role": REPOSITORY_FILE})
    start = definition.resolved_dependencies.add()
    start.name = facts.from_image
    start.uri = f"oci:{facts.from_image}"
    start.digest["sha256"] = facts.from_id.removeprefix("sha256:")
    start.annotations.update({"role": "parent image" if cell.family.parent else "base image"})
    if facts.builder_image_id:
        builder = definition.resolved_dependencies.add()
        builder.name = profile.mpi_build_image
        builder.digest["sha256"] = facts.builder_image_id.removeprefix("sha256:")
        builder.annotations.update({"role": "the image the MPI tarball is compiled in"})
    if facts.hdf5_builder[0]:
        hdf5 = definition.resolved_dependencies.add()
        hdf5.name = facts.hdf5_builder[0]
        hdf5.uri = f"oci:{facts.hdf5_builder[0]}"
        hdf5.digest["sha256"] = facts.hdf5_builder[1].removeprefix("sha256:")
        hdf5.annotations.update({"role": "the image the HDF5 tarball is compiled in"})
    for source_entry in cell_sources(profile, cell).values():
        tarball = definition.resolved_dependencies.add()
        tarball.name = source_entry.filename
        tarball.uri = without_credentials(resolve_debian_url(source_entry.url, mirror))
        tarball.digest["sha256"] = source_entry.sha256
    if cell.sdist and cell.lock:
        from ..define.lock import locked_pins

        version = locked_pins(matrix.root / cell.lock).get(cell.sdist, "")
        sdist = wheelhouse.wheelhouse_dir(cache) / f"{cell.sdist}-{version}.tar.gz"
        if sdist.is_file():
            material = definition.resolved_dependencies.add()
            material.name = sdist.name
            material.uri = f"{without_credentials(wheelhouse.index_url())}/{cell.sdist}/"
            material.digest["sha256"] = wheelhouse.sha256_file(sdist)
    run = predicate.run_details
    run.builder.id = BUILDER_ID
    run.builder.version.update({"hpcimages": __version__, "docker-engine": facts.engine_version,
                                "builder": "the engine's legacy builder (docker build API)"})
    run.metadata.invocation_id = f"{profile.name}/{cell.ref}@{image_id}"
    created = labels.get("org.opencontainers.image.created", "")
    if created:
        run.metadata.finished_on.FromJsonString(created)
    return json_format.MessageToDict(predicate)


# -------------------------------------------------------------------------------------------------------------------
# reading one back (invoke verify)


def parse(predicate: dict[str, Any]) -> provenance_pb2.Provenance:
    """The predicate as the framework's message: unknown or mistyped fields are refused by its parser."""
    message = provenance_pb2.Provenance()
    json_format.ParseDict(predicate, message)
    return message


def _tree_at(root: Path, revision: str, folder: Path) -> str | None:
    """The files a matrix needs (matrix.toml, dockerfiles/, pip-requirements/) at ``revision`` into ``folder``;
    the reason when the checkout does not have it."""
    proc = subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{revision}^{{commit}}"],
                          capture_output=True, check=False)
    if proc.returncode != 0:
        return (f"revision {revision[:12]} is not in this checkout ({root}): fetch the centre's repository, then "
                "verify again")
    proc = subprocess.run(["git", "-C", str(root), "archive", "--format=tar", revision, "matrix.toml", "dockerfiles",
                           "pip-requirements"], capture_output=True, check=False)
    if proc.returncode != 0:
        return f"git archive of {revision[:12]} failed: {proc.stderr.decode(errors='replace').strip()[:200]}"
    with tarfile.open(fileobj=BytesIO(proc.stdout)) as tar:
        tar.extractall(folder, filter="data")
    return None


def check(predicate: dict[str, Any], labels: dict[str, str], root: Path) -> tuple[str, list[str]]:
    """(the cell it names, the reasons it does not hold): the cell is one of the matrix at the statement's
    revision (a full commit sha), the cell's rendered Dockerfile and every file it copies are among the materials,
    every file material hashes to what that revision holds, and the image's labels agree with it."""
    try:
        message = parse(predicate)
    except json_format.ParseError as exc:
        return "", [f"the provenance is no SLSA v1 predicate: {str(exc)[:200]}"]
    definition = message.build_definition
    params = json_format.MessageToDict(definition.external_parameters)
    internal = json_format.MessageToDict(definition.internal_parameters)
    source = params.get("source")
    cell_ref, profile_name = str(params.get("cell", "")), str(params.get("profile", ""))
    revision = str(source.get("revision", "")) if isinstance(source, dict) else ""
    reasons = []
    if definition.build_type != BUILD_TYPE:
        reasons.append(f"the provenance's build type is {definition.build_type!r}, not {BUILD_TYPE}")
    label_revision = labels.get(REVISION_LABEL, "").removesuffix("-dirty")
    if revision != label_revision:
        reasons.append(f"the provenance names revision {revision[:12]!r}, the image's label {label_revision[:12]!r}")
    if internal.get("inputHash") != labels.get(INPUT_LABEL):
        reasons.append(f"the provenance's input hash {str(internal.get('inputHash'))[:12]!r} is not the image's label "
                       f"{labels.get(INPUT_LABEL, 'missing')[:12]}")
    family = labels.get("io.hpcimages.family", "")
    tag = labels.get("org.opencontainers.image.version", "")
    if f"{family}:{tag}" != cell_ref:
        reasons.append(f"the provenance names the cell {cell_ref[:80]!r}, the image's labels {family}:{tag}")
    if not COMMIT_RE.fullmatch(revision):
        return cell_ref, [*reasons, f"the provenance names no git commit (a 40-hex sha), but {revision[:60]!r}"]
    if not CELL_REF_RE.fullmatch(cell_ref) or not NAME_RE.fullmatch(profile_name):
        return cell_ref, [*reasons, f"the provenance names no cell of a profile ({cell_ref[:80]!r}, "
                                    f"{profile_name[:40]!r})"]
    files = {m.name: m for m in definition.resolved_dependencies
             if json_format.MessageToDict(m.annotations).get("role") == REPOSITORY_FILE}
    with tempfile.TemporaryDirectory(prefix="hpcimages-verify-") as tmp:
        folder = Path(tmp).resolve()
        problem = _tree_at(root, revision, folder)
        if problem:
            return cell_ref, [*reasons, problem]
        try:
            # the matrix file alone, not its templates: today's checks of a template (a build arg this version
            # passes) would refuse the tree of an older release, whose files are what is verified here
            matrix = read_matrix(folder / "matrix.toml")
            cells = {c.ref for c in matrix.cells(matrix.profile(profile_name))}
        except HpcImagesError as exc:
            return cell_ref, [*reasons, f"the matrix at {revision[:12]} has no profile {profile_name!r} "
                                        f"({str(exc)[:200]})"]
        if cell_ref not in cells:
            reasons.append(f"{cell_ref} is no cell of profile {profile_name!r} in the matrix at {revision[:12]}")
            return cell_ref, reasons
        family_name, cell_tag = cell_ref.split(":", 1)
        dockerfile = f"{GENERATED}/{family_name}/{cell_tag}/Dockerfile"
        wanted = [dockerfile]
        if (folder / dockerfile).is_file():
            wanted += copied_files((folder / dockerfile).read_text(encoding="utf-8"))
        missing = [w for w in dict.fromkeys(wanted) if w not in files]
        if missing:
            reasons.append(f"the provenance leaves out the cell's own inputs at {revision[:12]}: {', '.join(missing)}")
        for name, material in files.items():
            path = (folder / name).resolve()
            if not path.is_relative_to(folder) or "sha256" not in material.digest:
                reasons.append(f"material {name[:80]!r} is no file of the repository with a sha256")
            elif not path.is_file():
                reasons.append(f"material {name[:80]!r} is not in the tree at {revision[:12]}")
            elif sha256_bytes(path.read_bytes()) != material.digest["sha256"]:
                reasons.append(f"material {name}: sha256 {material.digest['sha256'][:12]} in the provenance, "
                               f"{sha256_bytes(path.read_bytes())[:12]} at {revision[:12]}")
    return cell_ref, reasons

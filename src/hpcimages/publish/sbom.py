"""The SBOM of a published image, SPDX 2.3 JSON and CycloneDX 1.6 JSON, written and validated by the formats' own
libraries (spdx-tools, cyclonedx-python-lib, packageurl-python).

What is in it, and where each fact comes from:

- the **Debian packages** dpkg lists as installed in the image, with architecture and suite (``pkg:deb``);
- the **Python distributions** pip lists in the image (``pkg:pypi``), each with the sha256 and name of the file the
  build installed, from the wheelhouse's record of what pip downloaded against the hashed lock;
- **what no package manager knows**, each with version, sha256, download location and package URL:
  the CPython interpreter, an MPICH or HDF5 compiled from its release tarball (the profile's ``sources``), a package
  compiled from its sdist (mpi4py for the standard ABI, h5py against a parallel HDF5), and the base image with its
  digest.

The image itself is the document's subject: its repository, manifest digest and tags.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cyclonedx.model import ExternalReference, ExternalReferenceType, HashAlgorithm, HashType, Property, XsUri
from cyclonedx.model.bom import Bom, BomMetaData
from cyclonedx.model.component import Component as CdxComponent
from cyclonedx.model.component import ComponentType
from cyclonedx.output.json import JsonV1Dot6
from cyclonedx.schema import SchemaVersion
from packageurl import PackageURL
from spdx_tools.spdx.model import (
    Actor,
    ActorType,
    Checksum,
    ChecksumAlgorithm,
    CreationInfo,
    Document,
    ExternalPackageRef,
    ExternalPackageRefCategory,
    Package,
    PackagePurpose,
    Relationship,
    RelationshipType,
    SpdxNoAssertion,
)
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document
from spdx_tools.spdx.writer.json.json_writer import write_document_to_file

from .. import __version__
from ..define.lock import locked_pins
from ..define.matrix import Cell, Matrix, Profile
from ..errors import HpcImagesError
from ..images import wheelhouse
from ..images.aptsources import resolve_debian_url
from ..images.build import cell_sources
from ..paths import without_credentials

TOOL = f"hpcimages-{__version__}"
SPDX_SUFFIX = ".spdx.json"
CYCLONEDX_SUFFIX = ".cdx.json"
#: how the SBOM's summaries name the MPI stack's components (Debian's libmpich12 is MPICH from apt)
STACK_LABELS = {"mpich": "MPICH", "libmpich12": "MPICH", "openmpi": "Open MPI", "mpi4py": "mpi4py", "hdf5": "HDF5",
                "h5py": "h5py", "cpython": "Python"}
#: what the two tarball prefixes of a build compile (images/build.py cell_sources)
SOURCE_NAMES = {"MPI": "mpich", "HDF5": "hdf5"}


class SbomError(HpcImagesError):
    """An SBOM cannot be made, or does not validate."""


@dataclass(frozen=True)
class Part:
    """One component of an image, in the terms both formats share."""

    name: str
    version: str
    kind: str  # debian | pypi | interpreter | source | base
    purl: str
    sha256: str = ""
    download: str = ""  # a URL, or "" (no assertion)
    file_name: str = ""
    origin: str = ""  # how it came into the image, where a package manager does not say

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.name}-{self.version}"


@dataclass(frozen=True)
class Subject:
    """The published image the SBOM describes."""

    repository: str  # host[:port]/namespace/family
    digest: str  # sha256:... of the manifest
    tags: tuple[str, ...]
    ref: str  # family:tag
    image_id: str


# -------------------------------------------------------------------------------------------------------------------
# what the image holds


def normal(name: str) -> str:
    """A distribution name as wheel file names and PEP 503 compare it."""
    return re.sub(r"[-_.]+", "_", name).lower()


def chain(matrix: Matrix, cell: Cell) -> list[Cell]:
    """The cell and its ancestors, root last: every one of them put something into the image."""
    cells = [cell]
    while cells[-1].parent_ref() is not None:
        parent = matrix.cell(str(cells[-1].parent_ref()))
        if parent is None:
            break
        cells.append(parent)
    return cells


def installed_files(matrix: Matrix, cells: list[Cell], cache: Path) -> dict[str, tuple[str, str]]:
    """normal(name)-version -> (file name, sha256) of every wheel the image's locks brought (the MPI wheel's lock
    and each family's), as the wheelhouse recorded pip's download."""
    found: dict[str, tuple[str, str]] = {}
    locks = {c.lock for c in cells if c.lock} | {c.mpi_lock for c in cells if c.mpi_lock}
    for lock in sorted(locks):
        for name, sha in wheelhouse.fetched_files(matrix.root / lock, cells[0].python, cache).items():
            parts = name.split("-")
            if name.endswith(".whl") and len(parts) >= 5:
                found.setdefault(f"{normal(parts[0])}-{parts[1]}", (name, sha))
    return found


def compiled_sdists(matrix: Matrix, cells: list[Cell], cache: Path, index: str = "") -> dict[str, Part]:
    """normal(name) -> the sdist a cell of the chain compiled (the file in the wheelhouse the build used)."""
    found = {}
    for cell in cells:
        package = cell.sdist
        if package is None or cell.lock is None:
            continue
        version = locked_pins(matrix.root / cell.lock).get(package, "")
        path = wheelhouse.wheelhouse_dir(cache) / f"{package}-{version}.tar.gz"
        if not path.is_file():
            raise SbomError(f"{path.name}, which {cell.ref} compiled, is not in the wheelhouse {path.parent}: build "
                            "the cell here (invoke build) so the SBOM can name the file it was compiled from")
        sha = wheelhouse.sha256_file(path)
        if sha not in wheelhouse.pinned_hashes(matrix.root, package, version):
            raise SbomError(f"{path}: sha256 {sha} is none the locks pin for {package}=={version}")
        why = "against a parallel HDF5" if cell.family.hdf5 else "for the MPI-5 standard ABI"
        found[normal(package)] = Part(
            package, version, "pypi", PackageURL("pypi", None, package, version).to_string(), sha,
            f"{index or without_credentials(wheelhouse.index_url())}/{package}/", path.name,
            f"compiled from its sdist in the build of {cell.ref} ({why})")
    return found


def interpreter(inventory: dict[str, Any], debian: dict[str, str]) -> Part:
    version = inventory["python"]
    short = ".".join(version.split(".")[:2])
    package = next((p for p in (f"python{short}-minimal", f"python{short}") if p in debian), "")
    origin = (f"Debian's package {package} {debian[package]}" if package else
              "compiled into the base image (no package manager lists it)")
    return Part("cpython", version, "interpreter",
                PackageURL("generic", None, "cpython", version).to_string(), origin=origin)


def tarballs(profile: Profile, cells: list[Cell], mirror: str | None) -> list[Part]:
    found = []
    for cell in cells:
        for prefix, source in cell_sources(profile, cell).items():
            name = SOURCE_NAMES[prefix]
            version = cell.family.hdf5 if prefix == "HDF5" else cell.mpi.version
            url = without_credentials(resolve_debian_url(source.url, mirror))
            purl = PackageURL("generic", None, name, version,
                              {"download_url": url, "checksum": f"sha256:{source.sha256}"}).to_string()
            found.append(Part(name, str(version), "source", purl, source.sha256, url, source.filename,
                              f"compiled from its release tarball in the build of {cell.ref}"))
    return found


def base_part(profile: Profile, cell: Cell, base_id: str, base_digests: list[str], base_labels: dict[str, str],
              suite: str) -> Part:
    base = profile.bases[cell.python]
    repository, _, tag = base.image.rpartition(":")
    remote = next((d.split("@", 1)[1] for d in base_digests if "@" in d), "")
    digest = remote or base_id
    purl = PackageURL("oci", None, repository.rsplit("/", 1)[-1], digest,
                      {"repository_url": repository, "tag": tag}).to_string()
    if base.debian:
        recipe = base_labels.get("io.hpcimages.base-recipe", "")
        origin = (f"bootstrapped by `invoke bases` from Debian {base.debian} (recipe {recipe or 'unknown'}) and "
                  "imported into the engine: never pushed, so its digest is its image id")
    else:
        origin = f"pulled from a registry as {base.image}" + ("" if remote else " (the engine lists no digest)")
    return Part(base.image, tag or "latest", "base", purl, digest.removeprefix("sha256:"), "", "",
                origin + (f"; Debian {suite}" if suite else ""))


def contents(matrix: Matrix, profile: Profile, cell: Cell, inventory: dict[str, Any], *, base_id: str,
             base_digests: list[str], base_labels: dict[str, str], cache: Path,
             mirror: str | None = None) -> list[Part]:
    """Every component of the image: Debian packages, Python distributions, and what no package manager knows."""
    cells = chain(matrix, cell)
    debian: dict[str, str] = inventory["debian"]
    arch: dict[str, str] = inventory.get("debian_arch", {})
    suite = base_labels.get("io.hpcimages.debian", "") or profile.bases[cell.python].debian or ""
    parts = [base_part(profile, cell, base_id, base_digests, base_labels, suite), interpreter(inventory, debian)]
    parts += tarballs(profile, cells, mirror)
    for name, version in sorted(debian.items()):
        qualifiers = {"arch": arch.get(name, "")} | ({"distro": f"debian-{suite}"} if suite else {})
        parts.append(Part(name, version, "debian", PackageURL("deb", "debian", name, version,
                                                              {k: v for k, v in qualifiers.items() if v}).to_string()))
    files = installed_files(matrix, cells, cache)
    index = without_credentials(wheelhouse.index_url())
    sdists = compiled_sdists(matrix, cells, cache, index)
    pins = {normal(n): v for c in cells for lock in (c.lock, c.mpi_lock) if lock
            for n, v in locked_pins(matrix.root / lock).items()}
    for name, version in sorted(inventory["pip"].items()):
        built = sdists.get(normal(name))
        if built is not None and built.version == version:
            parts.append(built)
            continue
        file_name, sha = files.get(f"{normal(name)}-{version}", ("", ""))
        origin = "" if file_name else (
            "pinned by the image's locks; the wheelhouse holds no record of the file pip installed"
            if pins.get(normal(name)) == version else "not pinned by the image's locks: it came with the base image")
        parts.append(Part(name, version, "pypi", PackageURL("pypi", None, name, version).to_string(), sha,
                          f"{index}/{name}/" if file_name else "", file_name, origin))
    return parts


def mpi_stack(parts: list[Part]) -> dict[str, str]:
    """The MPI stack as the SBOM names it: MPICH (wheel, tarball or Debian), mpi4py, HDF5 and h5py, Python."""
    stack = {}
    for part in parts:
        label = STACK_LABELS.get(part.name)
        if label and label not in stack:
            how = {"pypi": "PyPI", "debian": "Debian", "source": "tarball", "interpreter": ""}.get(part.kind, "")
            if part.origin.startswith("compiled from its sdist"):
                how = "sdist"
            stack[label] = f"{part.version}" + (f" ({how})" if how else "")
    return stack


# -------------------------------------------------------------------------------------------------------------------
# SPDX 2.3


def _spdx_id(part: Part, index: int) -> str:
    return "SPDXRef-" + re.sub(r"[^A-Za-z0-9.-]+", "-", f"{part.kind}-{part.name}-{index}")


def spdx_document(subject: Subject, parts: list[Part], created: dt.datetime) -> Document:
    hex_digest = subject.digest.removeprefix("sha256:")
    family, tag = subject.ref.split(":", 1)
    info = CreationInfo(
        spdx_version="SPDX-2.3", spdx_id="SPDXRef-DOCUMENT", name=f"{subject.repository}:{tag}",
        document_namespace=f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, subject.repository + '@' + subject.digest)}",
        creators=[Actor(ActorType.TOOL, TOOL)], created=created.replace(microsecond=0),
        creator_comment="what dpkg and pip list inside the image, and what no package manager knows (interpreter, "
                        "tarballs, sdists, base image), each with where it came from")
    image = Package(
        spdx_id="SPDXRef-image", name=subject.repository, version=tag, download_location=SpdxNoAssertion(),
        files_analyzed=False, checksums=[Checksum(ChecksumAlgorithm.SHA256, hex_digest)],
        primary_package_purpose=PackagePurpose.CONTAINER,
        external_references=[ExternalPackageRef(
            ExternalPackageRefCategory.PACKAGE_MANAGER, "purl",
            PackageURL("oci", None, family, subject.digest, {"repository_url": subject.repository}).to_string())],
        comment=f"hpcimages cell {subject.ref}; tags {', '.join(subject.tags)}; image id {subject.image_id}")
    packages = [image]
    relationships = [Relationship("SPDXRef-DOCUMENT", RelationshipType.DESCRIBES, "SPDXRef-image")]
    purpose = {"debian": PackagePurpose.LIBRARY, "pypi": PackagePurpose.LIBRARY, "source": PackagePurpose.SOURCE,
               "interpreter": PackagePurpose.APPLICATION, "base": PackagePurpose.CONTAINER}
    for index, part in enumerate(parts):
        spdx_id = _spdx_id(part, index)
        packages.append(Package(
            spdx_id=spdx_id, name=part.name, version=part.version,
            download_location=part.download or SpdxNoAssertion(), file_name=part.file_name or None,
            files_analyzed=False, checksums=[Checksum(ChecksumAlgorithm.SHA256, part.sha256)] if part.sha256 else [],
            primary_package_purpose=purpose[part.kind], comment=part.origin or None,
            external_references=[ExternalPackageRef(ExternalPackageRefCategory.PACKAGE_MANAGER, "purl", part.purl)]))
        kind = RelationshipType.DESCENDANT_OF if part.kind == "base" else RelationshipType.CONTAINS
        relationships.append(Relationship("SPDXRef-image", kind, spdx_id))
    return Document(creation_info=info, packages=packages, relationships=relationships)


def write_spdx(document: Document, path: Path) -> Path:
    problems = validate_full_spdx_document(document)
    if problems:
        raise SbomError(f"the SPDX document of {document.creation_info.name} does not validate: "
                        + "; ".join(p.validation_message for p in problems[:3]))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_document_to_file(document, str(path), validate=True)
    return path


def validate_spdx_file(path: Path) -> list[str]:
    """spdx-tools' own parser and validator over a file: the problems, none when it is a valid SPDX 2.3 document."""
    try:
        document = parse_file(str(path))
    except Exception as exc:  # the parser raises its own SPDXParsingError and json's errors alike
        return [f"{path.name} does not parse as SPDX: {str(exc)[:300]}"]
    return [p.validation_message for p in validate_full_spdx_document(document)]


# -------------------------------------------------------------------------------------------------------------------
# CycloneDX 1.6


def cyclonedx_bom(subject: Subject, parts: list[Part], created: dt.datetime) -> Bom:
    family, tag = subject.ref.split(":", 1)
    image = CdxComponent(
        name=subject.repository, version=tag, type=ComponentType.CONTAINER, bom_ref="image",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=subject.digest.removeprefix("sha256:"))],
        purl=PackageURL("oci", None, family, subject.digest, {"repository_url": subject.repository}),
        properties=[Property(name="hpcimages:cell", value=subject.ref),
                    Property(name="hpcimages:image-id", value=subject.image_id),
                    *[Property(name="hpcimages:tag", value=t) for t in subject.tags]])
    types = {"debian": ComponentType.LIBRARY, "pypi": ComponentType.LIBRARY, "source": ComponentType.LIBRARY,
             "interpreter": ComponentType.APPLICATION, "base": ComponentType.CONTAINER}
    bom = Bom(metadata=BomMetaData(component=image, timestamp=created.replace(microsecond=0),
                                   properties=[Property(name="hpcimages:tool", value=TOOL)]),
              serial_number=uuid.uuid5(uuid.NAMESPACE_URL, subject.repository + "@" + subject.digest))
    components = []
    for index, part in enumerate(parts):
        references = [ExternalReference(type=ExternalReferenceType.DISTRIBUTION, url=XsUri(part.download))] \
            if part.download else []
        component = CdxComponent(
            name=part.name, version=part.version, type=types[part.kind], bom_ref=f"{part.kind}-{index}",
            purl=PackageURL.from_string(part.purl), external_references=references,
            hashes=[HashType(alg=HashAlgorithm.SHA_256, content=part.sha256)] if part.sha256 else [],
            properties=[Property(name=n, value=v) for n, v in (("hpcimages:origin", part.origin),
                                                                 ("hpcimages:file", part.file_name)) if v])
        bom.components.add(component)
        components.append(component)
    bom.register_dependency(image, components)
    return bom


def write_cyclonedx(bom: Bom, path: Path) -> Path:
    text = JsonV1Dot6(bom).output_as_string(indent=2)
    problems = validate_cyclonedx_text(text)
    if problems:
        raise SbomError(f"the CycloneDX BOM of {bom.metadata.component.name if bom.metadata.component else '?'} "
                        f"does not validate: {'; '.join(problems[:3])}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def validate_cyclonedx_text(text: str) -> list[str]:
    """cyclonedx-python-lib's strict validator against the CycloneDX 1.6 JSON schema."""
    # Imported here: it loads jsonschema's format checkers, whose IRI grammar alone takes 1.5-2 s to import, and every
    # `invoke` command loads this module (through the catalogue) while only publishing and verifying validate.
    from cyclonedx.validation.json import JsonStrictValidator

    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    return [] if error is None else [str(error)[:300]]


# -------------------------------------------------------------------------------------------------------------------
# both, for one published image


@dataclass(frozen=True)
class Sboms:
    spdx: Path
    cyclonedx: Path
    components: int
    stack: dict[str, str]


def write(folder: Path, stem: str, subject: Subject, parts: list[Part]) -> Sboms:
    """``<stem>.spdx.json`` and ``<stem>.cdx.json`` in ``folder``, both validated before and after writing."""
    created = dt.datetime.now(dt.UTC)
    spdx = write_spdx(spdx_document(subject, parts, created), folder / f"{stem}{SPDX_SUFFIX}")
    problems = validate_spdx_file(spdx)
    if problems:
        raise SbomError(f"{spdx} does not read back as valid SPDX: {'; '.join(problems[:3])}")
    cdx = write_cyclonedx(cyclonedx_bom(subject, parts, created), folder / f"{stem}{CYCLONEDX_SUFFIX}")
    return Sboms(spdx, cdx, len(parts), mpi_stack(parts))


def versions_in_spdx(document: dict[str, Any]) -> dict[str, str]:
    """name -> version of every package an SPDX JSON document lists (the image itself left out)."""
    return {str(p.get("name")): str(p.get("versionInfo", "")) for p in document.get("packages", [])
            if isinstance(p, dict) and p.get("SPDXID") != "SPDXRef-image"}


def summary(path: Path) -> dict[str, Any]:
    """What the catalogue shows of an SPDX file: counts per kind of component, and the MPI stack."""
    data = json.loads(path.read_text(encoding="utf-8"))
    counts: dict[str, int] = {}
    stack = {}
    for package in data.get("packages", []):
        if package.get("SPDXID") == "SPDXRef-image":
            continue
        purl = next((r.get("referenceLocator", "") for r in package.get("externalRefs", [])
                     if r.get("referenceType") == "purl"), "")
        kind = purl.split(":", 1)[-1].split("/", 1)[0] if purl else "other"
        counts[kind] = counts.get(kind, 0) + 1
        name = package.get("name")
        label = STACK_LABELS.get(str(name))
        if label and label not in stack:
            stack[label] = str(package.get("versionInfo", ""))
    return {"components": sum(counts.values()), "by_type": dict(sorted(counts.items())), "stack": stack}

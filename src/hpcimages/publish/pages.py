"""The catalogue as a static web site a centre's users can browse: ``<build>/pages/<host_port>/<namespace>/``.

Built from what ``invoke catalogue`` wrote (one JSON page per published image, its signed documents and benchmark
plots) and from ``README.md`` and ``docs/``, with Jinja2 templates and Python-Markdown (what MkDocs itself renders
with), and nothing else: no server, no asset from the network, every link relative, so the folder can be opened
from a file system, copied to any web server or put in a container image as it is.

Why not MkDocs: the image pages are data (checks, ABI rows, interval tables, package lists), not prose, and the
index needs a filter; MkDocs would bring a theme and a dozen packages to be bent around that, while the Jinja2 that
renders the Dockerfiles is already here, and its autoescaping is the one rule for every value an image or an edited
file gives.

The catalogue's JSON is a file a user can edit: it is read through ``state.typed`` like every state file, and any
path it names (a plot, an SBOM) must stay inside the catalogue's folder. A second run with nothing changed
rewrites nothing (``files.write_if_changed``); a file the site no longer has is removed.
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from xml.etree import ElementTree

import jinja2
import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

from .. import state, tables
from ..errors import HpcImagesError
from ..files import write_if_changed
from ..paths import build_dir, git_revision
from ..validate import shown
from . import catalogue, provenance, record, sbom
from .catalogue import catalogue_dir
from .remote import Target

TEMPLATES = Path(__file__).parent / "pages_templates"
ASSETS = ("site.css", "filter.js")
#: the docs rendered into the site, in the order of the navigation: the README, then docs/index.md's pages
GUIDE_DOC = "docs/choosing.md"
FACETS = ("family", "python", "mpi", "abi", "cuda")
FACET_NAMES = {"family": "family", "python": "Python", "mpi": "MPI", "abi": "ABI", "cuda": "CUDA"}

Progress = Callable[[str], None]


class PagesError(HpcImagesError):
    """The site cannot be written from what the catalogue holds."""


# ---------------------------------------------------------------------------------------------
# the catalogue's pages, read as untrusted input


@dataclass
class Outcome:
    status: str
    reason: str

    field_checks: ClassVar[dict[str, state.Check]] = {"status": state.one_of("pass", "fail", "skip")}


@dataclass
class MpiFacts:
    name: str
    version: str
    method: str
    library: str


@dataclass
class AbiRow:
    host: str
    version: str
    library: str
    verdict: str
    reason: str
    bw: str
    lat: str
    suite_1: str
    suite_2: str


@dataclass
class BenchTable:
    title: str
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Bench:
    """A page's benchmark section; ``plots`` are files beside the page (``<tag>-plots/<name>.png``)."""

    rows: int = 0
    sessions: list[str] = field(default_factory=list)
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    tables: list[BenchTable] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)

    field_checks: ClassVar[dict[str, state.Check]] = {
        "plots": lambda names: next((p for name in names if (p := document_problem(name, (".png",)))), None)}


@dataclass
class SbomSummary:
    components: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    stack: dict[str, str] = field(default_factory=dict)


@dataclass
class SupplyChain:
    """The signed documents beside the page. ``verify`` is not shown: the site makes those commands again from
    the page's checked repository and digest (``catalogue.verify_commands``), so an edit cannot put a command
    there for users to paste."""

    key: str = ""
    signed_at: str = ""
    files: dict[str, str] = field(default_factory=dict)
    summary: SbomSummary = field(default_factory=SbomSummary)
    verify: list[str] = field(default_factory=list)
    sif_signed_by: str = ""

    field_checks: ClassVar[dict[str, state.Check]] = {
        "key": lambda v: record.digest_problem(v) if v else None, "sif_signed_by": record.fingerprint_problem,
        "files": lambda files: next((p for kind, name in files.items()
                                     if (p := _signed_file_problem(kind, name))), None)}


@dataclass
class ImagePage:
    """One image as ``catalogue.page_data`` writes it."""

    ref: str
    profile: str
    registry: str
    repository: str
    tags: list[str]
    digest: str
    pull: str
    image_id: str
    published_at: str
    revision: str
    size_bytes: int | None
    compressed_bytes: int | None
    hello: str
    base: str
    suite: str
    os: str
    python: str
    mpi: MpiFacts
    cuda: str
    hdf5: str
    packages: dict[str, str]
    pip: dict[str, str]
    debian: dict[str, str]
    labels: dict[str, str]
    checks: dict[str, Outcome]
    sif: str | None
    supply_chain: SupplyChain
    bench: Bench
    abi: list[AbiRow]

    # what reaches a command users paste, or the file system, is checked as the publish report checks it
    field_checks: ClassVar[dict[str, state.Check]] = {
        "ref": state.cell_ref, "tags": record.tags_problem, "digest": record.digest_problem,
        "image_id": record.digest_problem, "repository": record.repository_problem,
        "registry": record.repository_problem, "sif": record.sif_ref_problem}

    @property
    def family(self) -> str:
        return self.ref.split(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.split(":", 1)[1]

    @property
    def failed(self) -> list[str]:
        return [name for name, o in self.checks.items() if o.status == "fail"]

    @property
    def verdict(self) -> str:
        if self.failed:
            return f"checks failed: {', '.join(self.failed)}"
        if not self.checks:
            return "checks passed (details not in the last check report)"
        skipped = [name for name, o in self.checks.items() if o.status == "skip"]
        return f"{len(self.checks) - len(skipped)} checks passed" + (
            f", {len(skipped)} skipped ({', '.join(skipped)})" if skipped else "")

    def facets(self) -> dict[str, str]:
        """What the index filters on: the matrix's axes as the image's labels state them."""
        python = self.labels.get("io.hpcimages.python") or ".".join(self.python.split(".")[:2])
        mpi = f"{self.mpi.name} {self.labels.get('io.hpcimages.mpi.version') or self.mpi.version}".strip()
        # an empty value would be the filter's "all"
        return {"family": self.family, "python": python.strip() or "-", "mpi": mpi or "-",
                "abi": self.labels.get("io.hpcimages.mpi.abi", "").strip() or "-", "cuda": self.cuda or "none"}

    def verify_commands(self) -> list[str]:
        signed_sif = self.sif if self.sif and self.supply_chain.sif_signed_by else None
        return catalogue.verify_commands(self.repository, self.digest, signed_sif) if self.supply_chain.key else []


#: a file the site copies from beside a page: plain names in plain folders (no dot first, so no '..' and nothing
#: hidden, no ':' that a browser would read as a scheme), with the ending of what it must be
DOCUMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*")
SIGNED_SUFFIXES = {"spdx": sbom.SPDX_SUFFIX, "cyclonedx": sbom.CYCLONEDX_SUFFIX,
                   "provenance": provenance.PROVENANCE_SUFFIX}


def document_problem(name: str, suffixes: tuple[str, ...]) -> str | None:
    if not DOCUMENT_RE.fullmatch(name) or len(name) > 200:
        return f"{shown(name)} is not a file beside the page (letters, digits, '._-' and '/', no dot first)"
    return None if name.endswith(suffixes) else f"{shown(name)} does not end in {' or '.join(suffixes)}"


def _signed_file_problem(kind: str, name: str) -> str | None:
    if kind not in SIGNED_SUFFIXES:
        return f"{shown(kind)} is not one of {', '.join(SIGNED_SUFFIXES)}"
    return document_problem(name, (SIGNED_SUFFIXES[kind],))



def read_images(folder: Path, target: Target) -> list[ImagePage]:
    """Every image of ``index.json`` under ``folder``, each page checked field by field, its documents found."""
    index_path = folder / "index.json"
    if not index_path.is_file():
        raise PagesError(f"{index_path} is missing: run `invoke publish` or `invoke catalogue` for this registry first")
    index = state.load_json(index_path, "catalogue index")
    entries = index.get("images") if isinstance(index, dict) else None
    if not isinstance(entries, list):
        raise PagesError(f"{index_path}: 'images' must be a list: run `invoke catalogue` to write it again")
    images: dict[str, ImagePage] = {}
    for number, entry in enumerate(entries):
        ref = entry.get("ref") if isinstance(entry, dict) else None
        refused = state.cell_ref(ref) if isinstance(ref, str) else "not a string"
        if refused or ref in images:
            raise PagesError(f"{index_path}: images[{number}].ref: {refused or f'{shown(ref)} is listed twice'}")
        images[ref] = _read_page(folder, ref, target)
    return list(images.values())


def _read_page(folder: Path, ref: str, target: Target) -> ImagePage:
    family, tag = ref.split(":", 1)
    path = folder / family / f"{tag}.json"
    try:
        page = state.typed(ImagePage, state.load_json(path, "catalogue page"), path, "")
    except state.StateError as exc:
        raise PagesError(f"{exc} (`invoke catalogue` writes the page again from the images)") from None
    if page.ref != ref:
        raise PagesError(f"{path}: ref {shown(page.ref)} is not the {shown(ref)} its index names")
    if page.registry != str(target) or not page.repository.startswith(f"{target}/"):
        raise PagesError(f"{path}: a page of {shown(page.registry)}, not of {target}")
    if page.pull != f"{page.repository}@{page.digest}":
        raise PagesError(f"{path}: pull {shown(page.pull)} is not its repository@digest")
    for name in _documents(page):
        beside = folder / family / name
        if beside.is_symlink() or not beside.is_file():
            raise PagesError(f"{path}: {name} is not a file beside the page (`invoke catalogue` writes it again)")
    return page


def _documents(page: ImagePage) -> list[str]:
    """The files beside a page that the site carries: its signed documents and its plots."""
    return [*page.supply_chain.files.values(), *page.bench.plots]


# ---------------------------------------------------------------------------------------------
# the docs


@dataclass
class Doc:
    source: str  # the repository path: README.md, docs/abi.md
    output: str  # the site path: docs/readme.html, docs/abi.html
    title: str
    body: str = ""


def doc_outputs(root: Path) -> dict[str, str]:
    """Every Markdown page of the documentation and its place in the site, in the order of the navigation: the
    README, docs/index.md, the pages in the order that index lists them (the pipeline's), then any other."""
    found = {"README.md": "docs/readme.html"} if (root / "README.md").is_file() else {}
    pages = {p.name: p for p in (root / "docs").glob("*.md")}
    index = pages.get("index.md")
    listed = re.findall(r"\]\(([\w.-]+\.md)\)", state.read_text(index, "documentation page")) if index else []
    for name in ["index.md", *listed, *sorted(pages)]:
        if name in pages:
            found.setdefault(f"docs/{name}", f"docs/{Path(name).stem}.html")
    return found


def github_slug(text: str) -> str:
    """The anchor GitHub gives a heading (the one the docs' links are written against): lower case, what is not a
    letter, digit, space, '-' or '_' dropped, spaces become '-'."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


class _Links(Treeprocessor):
    """Links between Markdown files become links between the site's pages; a link to a file the site does not
    carry becomes its text (and is reported), never a link that leads nowhere."""

    def __init__(self, md: markdown.Markdown, source: str, at: str, outputs: dict[str, str], lost: list[str]) -> None:
        super().__init__(md)
        self.source, self.at, self.outputs, self.lost = source, at, outputs, lost

    def run(self, root: ElementTree.Element) -> None:
        here = posixpath.dirname(self.at)
        for element in root.iter("a"):
            href = element.get("href", "")
            if not href or href.startswith("#") or re.match(r"^[a-z][a-z0-9+.-]*:", href):
                continue  # an anchor on this page, or an absolute URL (https:, mailto:)
            target, _, fragment = href.partition("#")
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(self.source), target))
            if resolved in self.outputs:
                link = posixpath.relpath(self.outputs[resolved], here)
                element.set("href", link + (f"#{fragment}" if fragment else ""))
            else:
                self.lost.append(f"{self.source}: link to {href}")
                element.tag = "span"
                element.attrib.clear()


class _LinkExtension(Extension):
    def __init__(self, **given: Any) -> None:  # _Links's arguments but its Markdown
        super().__init__()
        self.given = given

    def extendMarkdown(self, md: markdown.Markdown) -> None:  # Python-Markdown's name
        md.treeprocessors.register(_Links(md, **self.given), "hpcimages-links", 1)


def render_doc(root: Path, source: str, outputs: dict[str, str], lost: list[str], at: str | None = None,
               baselevel: int = 1) -> Doc:
    """A Markdown page as HTML placed at ``at`` (default: its own place in the site), its links made relative to
    that place, its headings moved down to ``baselevel``: the guide is rendered once for docs/ and once into the
    index (a section there, under the index's own heading)."""
    text = state.read_text(root / source, "documentation page")
    links = _LinkExtension(source=source, at=at or outputs[source], outputs=outputs, lost=lost)
    md = markdown.Markdown(extensions=["tables", "fenced_code", "sane_lists", "toc", links],
                           extension_configs={"toc": {"slugify": lambda value, _sep: github_slug(value),
                                                      "baselevel": baselevel}})
    body = md.convert(text)
    heading = re.search(r"^#\s+(.+)$", text, re.MULTILINE)
    title = re.sub(r"[`*]", "", heading.group(1)).strip() if heading else source
    return Doc(source, at or outputs[source], title, body)


# ---------------------------------------------------------------------------------------------
# the site


def pages_dir(root: Path, target: Target) -> Path:
    """``<build>/pages/127.0.0.1_5000/hpc``: one site per registry target, as the catalogue has one folder each
    (``build/site/`` is another thing: the cluster sites of ``invoke site``)."""
    return build_dir(root) / "pages" / str(target).replace(":", "_")


def image_path(page: ImagePage) -> str:
    return f"images/{page.family}/{page.tag}.html"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True,
                             undefined=jinja2.StrictUndefined, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["size"] = tables.size
    env.filters["cell"] = _table_cell
    return env


def _table_cell(value: object) -> str:
    if value is None:
        return tables.MISSING
    return format(value, tables.FLOAT_FORMAT) if isinstance(value, float) else str(value)


@dataclass
class Written:
    folder: Path
    files: int = 0
    rewritten: int = 0
    removed: int = 0
    lost_links: list[str] = field(default_factory=list)
    pages: int = 0


MANIFEST = ".hpcimages-pages.json"


class _Site:
    """The files of one site, each written only when it changed. What the last run made and this one did not is
    removed, and nothing else: the manifest names what the tool made, so a file a maintainer put in the folder
    (a robots.txt) or another registry's site in a folder below (``127.0.0.1_5000`` holds ``127.0.0.1_5000/hpc``)
    stays."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.made, self.rewritten = folder, dict[str, bytes](), 0

    def put(self, path: str, data: bytes) -> None:
        self.made[path] = data

    def put_text(self, path: str, text: str) -> None:
        self.put(path, text.encode("utf-8"))

    def commit(self) -> int:
        """Every file written (those that changed), then the ones the last run made and this one did not removed;
        the number removed."""
        before = self._last_made()
        for path, data in self.made.items():
            self.rewritten += write_if_changed(self.folder / path, data)
        stale = sorted(before - set(self.made))
        for path in stale:
            (self.folder / path).unlink(missing_ok=True)
        for path in stale:  # the folders they leave empty, deepest first, never above the site
            for parent in (self.folder / path).parents:
                if parent == self.folder or self.folder not in parent.parents:
                    break
                if parent.is_symlink() or not parent.is_dir() or any(parent.iterdir()):
                    break
                parent.rmdir()
        manifest = {"written_by": "invoke pages", "files": sorted(self.made)}
        write_if_changed(self.folder / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
        return len(stale)

    def _last_made(self) -> set[str]:
        """The manifest of the last run: paths inside the site only (it is a file a user can edit)."""
        data = state.cached_object(self.folder / MANIFEST) or {}
        files = data.get("files")
        if not isinstance(files, list):
            return set()
        return {f for f in files if isinstance(f, str) and DOCUMENT_RE.fullmatch(f)}


def write(root: Path, target: Target, progress: Progress = print) -> Written:
    """The site of ``target``'s catalogue, with the documentation; what it wrote, rewrote and removed."""
    source = catalogue_dir(root, target)
    images = read_images(source, target)
    outputs = doc_outputs(root)
    lost: list[str] = []
    docs = [render_doc(root, name, outputs, lost) for name in outputs]
    guide = render_doc(root, GUIDE_DOC, outputs, [], at="index.html", baselevel=2) if GUIDE_DOC in outputs else None
    folder = pages_dir(root, target)
    site, env = _Site(folder), _environment()  # every file made in memory first: a failure writes nothing
    revision = git_revision(root)
    common = {"registry": str(target), "docs": docs, "insecure": target.loopback,
              "revision": revision[:12] + ("-dirty" if revision.endswith("-dirty") else "") or "unknown"}
    for name in ASSETS:
        site.put(f"assets/{name}", (TEMPLATES / name).read_bytes())
    site.put_text("index.html", env.get_template("index.html.j2").render(
        **common, up="", images=images, facets=_facet_values(images), grid=_grid(images), guide=guide,
        image_path=image_path, facet_names=FACET_NAMES))
    for page in images:
        for name in _documents(page):  # names document_problem checked, files _read_page found
            site.put(f"images/{page.family}/{name}", (source / page.family / name).read_bytes())
        site.put_text(image_path(page), env.get_template("image.html.j2").render(
            **common, up="../../", image=page, pulls=_pulls(page, target),
            documents=_document_links(page), facets=page.facets()))
    for doc in docs:
        site.put_text(doc.output, env.get_template("doc.html.j2").render(**common, up="../", doc=doc))
    removed = site.commit()
    written = Written(folder, len(site.made), site.rewritten, removed, lost, 1 + len(images) + len(docs))
    progress(f"site: {written.pages} pages ({len(images)} images, {len(docs)} docs) in {folder}: "
             f"{written.rewritten} of {written.files} files written, {removed} removed"
             + "".join(f"\n  warning: {line} (no such page in the site: shown as text)" for line in lost))
    return written


def _facet_values(images: list[ImagePage]) -> dict[str, list[str]]:
    values: dict[str, set[str]] = {name: set() for name in FACETS}
    for image in images:
        for name, value in image.facets().items():
            values[name].add(value)
    return {name: sorted(found, key=_natural) for name, found in values.items()}


def _natural(text: str) -> list[object]:
    """3.9 before 3.11: version numbers sort as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _grid(images: list[ImagePage]) -> dict[str, Any]:
    """The matrix on the index: a row per family, a column per Python version, in each cell its images."""
    pythons = sorted({i.facets()["python"] for i in images}, key=_natural)
    rows: dict[str, dict[str, list[ImagePage]]] = {}
    described: dict[str, str] = {}
    for image in sorted(images, key=lambda i: _natural(i.ref)):
        rows.setdefault(image.family, {p: [] for p in pythons})[image.facets()["python"]].append(image)
        described[image.family] = described.get(image.family) or image.labels.get(
            "org.opencontainers.image.description", "")
    return {"pythons": pythons, "rows": rows, "described": described}


def _pulls(page: ImagePage, target: Target) -> list[tuple[str, str]]:
    """How to get the image, each runtime's way: by digest (what the checks judged), and the tags."""
    no_https = " --no-https" if target.loopback else ""
    lines = [("Docker, by digest (the image the checks judged)", f"docker pull {page.pull}"),
             ("Docker, by tag", f"docker pull {page.repository}:{page.tags[0]}"),
             ("Apptainer, from the image", f"apptainer pull{no_https} docker://{page.pull}")]
    if page.sif:
        signed = "the signed .sif" if page.supply_chain.sif_signed_by else "the .sif"
        lines.append((f"Apptainer, {signed}", f"apptainer pull{no_https} oras://{page.sif}"))
    return lines


def _document_links(page: ImagePage) -> list[tuple[str, str]]:
    names = {"spdx": "SBOM, SPDX 2.3", "cyclonedx": "SBOM, CycloneDX 1.6", "provenance": "provenance, SLSA v1"}
    return [(names.get(kind, kind), name) for kind, name in page.supply_chain.files.items()]

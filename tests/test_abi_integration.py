"""`invoke abi` for real, on one small case: the ci image mpi4py:py3.11-mpich4.3.2 with four host-MPI stand-ins
(an older MPICH wheel, Intel MPI, Debian trixie's MPICH, an Open MPI wheel) installed from packages into the cache,
injected by bind mount + LD_LIBRARY_PATH in Docker and through Apptainer, measured, and judged; then again from the
cache with every index unreachable; and the ci Open MPI image against Open MPI 4. The full table (every image ×
every stand-in, whole suite) is a user task."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hpcimages.abi import commands as abi_commands
from hpcimages.abi import pairs
from hpcimages.abi import table as abi_table
from hpcimages.abi.pairs import PairRunner
from hpcimages.cli import exit_code
from hpcimages.engine import find_image
from hpcimages.mpirun import IMAGE_MPI
from hpcimages.paths import build_dir
from hpcimages.publish import catalogue
from hpcimages.sif import apptainer as ap
from hpcimages.sif import convert as cv
from hpcimages.sif import tools

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
MATRIX = str(ROOT / "matrix.toml")
CELL = "mpi4py:py3.11-mpich4.3.2"
IMAGE = f"hpcimages/{CELL}"
HOSTS = ["mpich-3.4.3", "impi-rt-2021.18.1", "debian-trixie-libmpich12", "openmpi-4.1.8"]
# a few modules of mpi4py's own suite: point-to-point, and the one Intel MPI 2021.18 crashes while importing
SUITE = ["test_p2p_obj", "test_dynproc"]


@pytest.fixture(scope="module")
def sif(client):
    """The cell's .sif, so that the Apptainer column is measured."""
    runtime = ap.ContainerRuntime(client, tools.ensure_tools_image(client, ROOT, progress=lambda _: None))
    out = cv.sif_dir(ROOT)
    if not cv.is_fresh(out / cv.sif_name(IMAGE), client.images.get(IMAGE)):
        cv.convert(client, runtime, [IMAGE], out, progress=lambda _: None)
    return out / cv.sif_name(IMAGE)


@pytest.fixture(scope="module")
def table_run(client, sif):
    lines: list[str] = []
    code = exit_code(abi_commands.abi, matrix=MATRIX, profile="ci", only=[CELL], host=HOSTS, suite_include=SUITE,
                     suite_timeout=300, repeats=1, progress=lines.append)
    data = json.loads((abi_table.table_dir(ROOT) / "abi-table.json").read_text(encoding="utf-8"))
    return code, lines, {p["host"]: p for p in data["pairs"]}


def test_the_image_s_own_mpich_is_the_baseline_of_every_column(table_run):
    code, lines, rows = table_run
    assert code == 0, lines[-30:]
    own = rows["own"]
    assert own["loads"] and own["library_file"] == "/usr/local/lib/libmpi.so.12" and own["mpiabi"] == "mpich"
    assert own["hello"] == "pass" and own["apptainer"] == "pass" and own["c_probe"] == "pass"
    assert [s["ranks"] for s in own["suite"]] == [1, 2]
    assert all(s["status"] == "ran" and s["run"] > 0 and not s["failed"] for s in own["suite"]), own["suite"]
    assert own["verdict"] == "works", own["verdict_reason"]


def test_an_older_mpich_loads_by_path_and_its_missing_mpi4_functions_are_named(table_run):
    row = table_run[2]["mpich-3.4.3"]
    assert row["loads"] and row["library_file"] == f"{pairs.HOST_MOUNT}/lib/libmpi.so.12"
    assert row["library_version"].startswith("MPICH Version:") and "3.4.3" in row["library_version"]
    assert row["hello"] == "pass" and row["apptainer"] == "pass"
    assert row["mpi_version"] == "3.1" and row["mpi4"]["MPI_Isendrecv"].startswith("NotImplementedError")
    # mpi4py copes; code compiled against the image's MPICH does not
    assert "undefined symbol (lazy binding)" in row["c_probe"] and "MPI_Isendrecv" in row["c_probe"]
    assert row["bw_ratio"] > 0 and row["lat_ratio"] > 0 and not row["bench_note"]
    assert row["verdict"] == "works with caveat" and "MPI_Isendrecv" in row["verdict_reason"]


def test_intel_mpi_runs_and_the_suite_module_it_crashes_is_named_and_left_out(table_run):
    row = table_run[2]["impi-rt-2021.18.1"]
    assert row["loads"] and row["library_version"].startswith("Intel(R) MPI Library 2021.18")
    assert row["hello"] == "pass" and row["c_probe"] == "pass" and row["apptainer"] == "pass"
    for score in row["suite"]:
        assert any(c.startswith("test_dynproc (while importing it") for c in score["crashed"]), score
        assert score["run"] > 0 and not score["failed"], score  # the rest ran after the rerun
    assert row["verdict"] == "works with caveat" and "test_dynproc" in row["verdict_reason"]


def test_a_library_built_for_a_newer_glibc_fails_with_the_loader_s_reason(table_run):
    row = table_run[2]["debian-trixie-libmpich12"]
    assert not row["loads"] and row["verdict"] == "fails"
    assert "GLIBC_2.38' not found" in row["load_reason"] and "/opt/host-mpi/lib/" in row["load_reason"]
    assert row["host_version"].startswith("4.")  # Debian's own version string, read from dpkg


def test_open_mpi_binds_the_python_layer_only(table_run):
    row = table_run[2]["openmpi-4.1.8"]
    assert row["loads"] and row["mpiabi"] == "openmpi" and row["library_file"].endswith("/libmpi.so.40")
    assert row["hello"] == "pass"
    assert "resolves to /usr/local/lib/libmpi.so.12, not the injected library" in row["c_probe"]
    assert row["verdict"] == "works with caveat" and "openmpi extension" in row["verdict_reason"]


def test_the_reports_and_the_catalogue_section_carry_the_rows(table_run, client):
    _, lines, _ = table_run
    text = (abi_table.table_dir(ROOT) / "abi-table.md").read_text(encoding="utf-8")
    assert all(host in text for host in HOSTS) and "GLIBC_2.38" in text
    assert "own MPICH 4.3.2" in "\n".join(lines)
    image_id = client.images.get(IMAGE).id
    section = [catalogue._abi_row(p) for p in abi_table.rows_of_image(ROOT, image_id)]
    assert [r["host"] for r in section] == ["own", *HOSTS]
    assert abi_table.rows_of_image(ROOT, "sha256:" + "0" * 64) == []  # another image id: no rows


def test_a_second_run_comes_from_the_cache_with_every_index_unreachable(table_run, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # nothing listens on the discard port
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    lines: list[str] = []
    code = exit_code(abi_commands.abi, matrix=MATRIX, profile="ci", only=[CELL], host=HOSTS[:2],
                     suite_include=["test_p2p_obj"], repeats=0, apptainer=False, progress=lines.append)
    assert code == 0, lines[-20:]
    assert not [line for line in lines if "installing the stand-in" in line]
    data = json.loads((abi_table.table_dir(ROOT) / "abi-table.json").read_text(encoding="utf-8"))
    rows = {p["host"]: p for p in data["pairs"]}
    assert rows["own"]["verdict"] == "works" and rows["mpich-3.4.3"]["loads"]
    assert set(rows) == {"own", *HOSTS}  # the pairs this run did not measure are kept


STANDARD_CELL = "mpi4py:py3.13-mpiabi-mpich5.0.2"
STANDARD_HOSTS = ["mpich-5.0.1", "mpich-5.0.1.post1", "impi-rt-2021.18.1", "mpich-4.3.2"]


@pytest.fixture(scope="module")
def standard_run(client):
    lines: list[str] = []
    code = exit_code(abi_commands.abi, matrix=MATRIX, profile="ci", only=[STANDARD_CELL], host=STANDARD_HOSTS,
                     suite=False, repeats=2, progress=lines.append)
    data = json.loads((abi_table.table_dir(ROOT) / "abi-table.json").read_text(encoding="utf-8"))
    return code, lines, {p["host"]: p for p in data["pairs"] if p["cell"] == STANDARD_CELL}


def test_a_standard_abi_image_binds_other_standard_abi_libraries_by_path(standard_run):
    code, lines, rows = standard_run
    assert code == 0, lines[-30:]
    own = rows["own"]
    assert own["library_file"] == "/usr/local/lib/libmpi_abi.so.1" and own["mpiabi"] == "mpiabi"
    assert own["c_probe"] == "pass" and own["verdict"] == "works", own["verdict_reason"]
    for host, vendor in (("mpich-5.0.1.post1", "MPICH Version:      5.0.1"), ("impi-rt-2021.18.1", "Intel(R) MPI")):
        row = rows[host]
        assert row["loads"] and row["library_file"] == f"{pairs.HOST_MOUNT}/lib/libmpi_abi.so.1", row
        assert row["library_version"].startswith(vendor) and row["hello"] == "pass", row
        assert row["c_probe"] == "pass", row["c_probe"]  # compiled by the image's mpicc_abi, run against the host's
        low, high = row["bw_interval"]  # two interleaved repeats: the spread the verdict reads
        assert 0 < low <= high, row["bw_interval"]


def test_a_standard_abi_image_names_why_an_mpich_abi_library_cannot_bind(standard_run):
    _, _, rows = standard_run
    old_soname = rows["mpich-5.0.1"]
    assert not old_soname["loads"] and "has libmpi_abi.so.0, a soname from before the MPI-5.0 standard" in \
        old_soname["load_reason"]
    mpich_abi = rows["mpich-4.3.2"]
    assert not mpich_abi["loads"] and "implements no MPI-5 standard ABI" in mpich_abi["load_reason"]
    assert "mpi4py loaded /usr/local/lib/libmpi_abi.so.1" in mpich_abi["load_reason"]  # the silent fallback, named


OPEN_CELL = "mpi4py:py3.11-openmpi5.0.11"
OPEN_IMAGE = f"hpcimages/{OPEN_CELL}"


@pytest.fixture(scope="module")
def open_mpi_run(client):
    """The ci profile's Open MPI 5 image against the Open MPI 4 stand-in: the cross-series bind that Open MPI does
    not promise, measured (its .sif made here is the one the Apptainer tests later find up to date)."""
    runtime = ap.ContainerRuntime(client, tools.ensure_tools_image(client, ROOT, progress=lambda _: None))
    out = cv.sif_dir(ROOT)
    if not cv.is_fresh(out / cv.sif_name(OPEN_IMAGE), client.images.get(OPEN_IMAGE)):
        cv.convert(client, runtime, [OPEN_IMAGE], out, progress=lambda _: None)
    lines: list[str] = []
    code = exit_code(abi_commands.abi, matrix=MATRIX, profile="ci", only=[OPEN_CELL], host=["openmpi-4.1.8"],
                     suite_include=["test_p2p_obj"], suite_timeout=300, repeats=1, progress=lines.append)
    data = json.loads((abi_table.table_dir(ROOT) / "abi-table.json").read_text(encoding="utf-8"))
    return code, lines, {p["host"]: p for p in data["pairs"] if p["cell"] == OPEN_CELL}


def test_an_open_mpi_image_s_own_row_is_its_open_mpi_under_its_own_mpirun(open_mpi_run):
    code, lines, rows = open_mpi_run
    assert code == 0, lines[-30:]
    own = rows["own"]
    assert own["library_file"] == "/usr/local/lib/libmpi.so.40" and own["mpiabi"] == "openmpi", own
    assert own["library_version"].startswith("Open MPI v5.0.11,")
    # hello, Apptainer (the image's mpirun inside the container), the C probe built by Open MPI's mpicc, the suite
    assert own["hello"] == "pass" and own["apptainer"] == "pass" and own["c_probe"] == "pass", own
    assert all(s["status"] == "ran" and s["run"] > 0 and not s["failed"] for s in own["suite"]), own["suite"]
    assert own["verdict"] == "works", own["verdict_reason"]
    assert "the image's own Open MPI 5.0.11 (the baseline)" in "\n".join(lines)


def test_open_mpi_4_binds_into_an_open_mpi_5_image_but_code_compiled_there_cannot_follow(open_mpi_run):
    row = open_mpi_run[2]["openmpi-4.1.8"]
    assert row["loads"] and row["library_file"] == f"{pairs.HOST_MOUNT}/lib/libmpi.so.40", row
    assert row["library_version"].startswith("Open MPI v4.1.8,") and row["mpiabi"] == "openmpi"
    # through Apptainer the host's own mpirun runs outside and starts `apptainer exec` per rank
    assert row["hello"] == "pass" and row["apptainer"] == "pass", row
    assert row["suite"] and all(s["run"] > 0 and not s["failed"] for s in row["suite"]), row["suite"]
    # Open MPI 5's mpi.h has MPI_Isendrecv, Open MPI 4's library has not: compiled code stops at that call
    assert "undefined symbol (lazy binding)" in row["c_probe"] and "MPI_Isendrecv" in row["c_probe"], row["c_probe"]
    assert row["verdict"] == "works with caveat" and "MPI_Isendrecv" in row["verdict_reason"]


def test_an_unknown_stand_in_or_a_bad_option_stops_before_anything(capsys):
    assert exit_code(abi_commands.abi, matrix=MATRIX, profile="ci", host=["mpich-9.9"]) == 2
    assert "unknown stand-in 'mpich-9.9'" in capsys.readouterr().err
    assert exit_code(abi_commands.abi, matrix=MATRIX, profile="ci", repeats="many") == 2
    assert "--repeats 'many'" in capsys.readouterr().err


def test_a_crashing_and_a_hanging_test_are_named_and_the_rest_still_runs(client, tmp_path):
    """A suite (tests/fixtures/fake-suite) whose module segfaults on import, one test hangs and two of one module
    segfault, under the image's real mpiexec: each is named, left out, and the run repeated until the rest has run."""
    suite = tmp_path / "suite"
    shutil.copytree(ROOT / "tests" / "fixtures" / "fake-suite", suite)
    image = find_image(client, IMAGE)
    # the hang is caught by the per-test watchdog (10 s), long before the run's own limit
    runner = PairRunner(client, image.id, ROOT / "bench", suite, suite_timeout=300, repeats=0,
                        progress=lambda _: None, test_timeout=10)
    score = runner.suite(IMAGE_MPI, 2)
    assert score.status == "crashed" and score.run == 1 and score.failed == [], score
    assert score.crashed[0].startswith("test_b (while importing it, exit")
    assert score.crashed[1] == "test_a.T.test_hang (hung)"
    assert score.crashed[2].startswith("test_c.T.test_segv_1 (exit")
    assert score.crashed[3].startswith("test_c.T.test_segv_2 (exit")  # then test_c was left out as a module
    assert build_dir(ROOT).is_dir()

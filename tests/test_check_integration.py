"""`invoke check` for real: every `ci` cell passes, and deliberately broken images fail the right check."""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcimages.engine import find_image
from hpcimages.images import hostmpi
from hpcimages.images.check import MPI_LIBRARY_VERSION, Checker, check_cells
from hpcimages.images.reports import CellCheck
from hpcimages.paths import build_dir

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
GOOD = "hpcimages/mpi4py:py3.11-mpich4.3.2"
EXT = "/usr/local/lib/python3.11/dist-packages/mpi4py/MPI.mpich.cpython-311-x86_64-linux-gnu.so"

# Each fixture is the good image with one defect, as a maintainer could produce it by mistake.
FIXTURES = {
    # mpi4py linked with an RPATH to the image's MPI (patchelf does what `-Wl,-rpath,--disable-new-dtags` does)
    "rpath": f"""FROM {GOOD}
RUN apt-get update && apt-get install -y --no-install-recommends patchelf \\
 && patchelf --force-rpath --set-rpath /usr/local/lib {EXT} \\
 && apt-get purge -y patchelf && rm -rf /var/lib/apt/lists/*
""",
    "no-mpi4py": f"FROM {GOOD}\nRUN python3 -m pip uninstall -y mpi4py\n",
    "lying-labels": f"FROM {GOOD}\nLABEL io.hpcimages.mpi.version=4.2.3 io.hpcimages.python=3.13\n",
    "leftovers": f"FROM {GOOD}\nENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt\n"
                 "RUN mkdir -p /root/.cache/pip && touch /root/.cache/pip/x /tmp/numpy-2.0-py3-none-any.whl\n",
}


@pytest.fixture(scope="module")
def matrix(ci_built):
    return ci_built.matrix


@pytest.fixture(scope="module")
def checker(client, matrix):
    return Checker(client, matrix, "ci", hostmpi.swap_binding(client, matrix), progress=lambda _: None)


@pytest.fixture(scope="module")
def fixture_images(client, matrix):
    tags = {}
    for name, dockerfile in FIXTURES.items():
        tag = f"hpcimages-test/check-fixture:{name}"
        client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, network_mode="host", rm=True)
        tags[name] = tag
    return tags


def cell(matrix):
    return next(c for c in matrix.cells("ci") if c.ref == "mpi4py:py3.11-mpich4.3.2")


def test_invoke_check_passes_every_ci_cell(matrix):
    proc = subprocess.run([sys.executable, "-m", "invoke", "check", "--profile", "ci"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"{len(matrix.cells('ci'))}/{len(matrix.cells('ci'))} built cells passed" in proc.stdout
    assert "FAIL" not in proc.stdout
    # two cells at once (--jobs 2, the default): the second starts before the first ends; each ends once
    cells, lines = matrix.cells("ci"), proc.stdout.splitlines()
    second_starts = lines.index(f"[2/{len(cells)}] checking {cells[1].ref} ...")
    first_ends = next(i for i, line in enumerate(lines) if line.startswith(f"[1/{len(cells)}] {cells[0].ref}: "))
    assert second_starts < first_ends, proc.stdout[:3000]
    assert all(sum(line.startswith(f"[{i}/{len(cells)}] {cell.ref}: passed (") for line in lines) == 1
               for i, cell in enumerate(cells, 1))
    report = (build_dir(ROOT) / "check-report.json").read_text()
    assert '"bind-swap"' in report and f"Intel MPI loaded from {hostmpi.MOUNT}/" in report
    # the ci profile's Open MPI 5 image is swapped across the series to Open MPI 4, proven by banner and path
    assert f"Open MPI 4.1.8 loaded from {hostmpi.MOUNT}/lib/libmpi.so.40 and used by 2 ranks; own Open MPI" in report
    # HDF5 compiled by Open MPI's mpicc links the image's Open MPI, and its family check (passed above) wrote with
    # driver='mpio' under Open MPI 4.1.8 bound in (that command requires the banner and library file it printed)
    [h5py_open_mpi] = [c for c in matrix.cells("ci") if c.family.hdf5 and c.mpi.abi == "openmpi"]
    checks = json.loads(report)["cells"][h5py_open_mpi.ref]["checks"]
    assert checks["linking"]["reason"].count("/usr/local/lib/libhdf5.so -> /usr/local/lib/libmpi.so.40") == 1
    assert "the same under the bind model" in checks["family"]["reason"]
    assert "skipped" not in checks["family"]["reason"]


def test_ctrl_c_during_a_parallel_check_kills_the_checks_in_flight_and_records_nothing(client, matrix, monkeypatch):
    """Two cells at once, each in a container that would run ten minutes: a Ctrl-C while the command waits on them
    kills both, starts no third, removes every container and leaves the check report as it was."""
    cells = matrix.cells("ci")[:3]
    report = build_dir(ROOT) / "check-report.json"
    before = report.read_bytes() if report.is_file() else None
    label = {}

    def endless_check(self, cell, image_ref=None):
        label.update(self.labels)
        self.run(cell.image("hpcimages"), ["sleep", "600"])
        return CellCheck(cell.ref, cell.image("hpcimages"))

    def in_flight() -> list:
        key = next(iter(label.items()), ("", ""))
        return client.containers.list(all=True, filters={"label": f"{key[0]}={key[1]}"}) if label else []

    def ctrl_c_once_both_run(self, timeout=None):
        for _ in range(600):
            if len([c for c in in_flight() if c.status == "running"]) == 2:
                raise KeyboardInterrupt
            time.sleep(0.1)
        raise AssertionError("the two checks never ran at once")

    monkeypatch.setattr(Checker, "check_cell", endless_check)
    monkeypatch.setattr(concurrent.futures.Future, "result", ctrl_c_once_both_run)  # the command waits here
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        check_cells(client, matrix, matrix.profile("ci"), cells, progress=said.append, with_host_mpi=False, jobs=2)
    assert in_flight() == [], "a container of the interrupted check is left"
    assert f"[3/3] checking {cells[2].ref} ..." not in said and "interrupted: stopping the checks in flight" in \
        "\n".join(said)
    assert (report.read_bytes() if report.is_file() else None) == before


def test_an_open_mpi_swap_that_loads_the_image_s_own_library_fails(client, matrix, tmp_path):
    """A site module pointing at a folder without the library: mpi4py quietly loads the image's own Open MPI, and
    the check must say so rather than pass on the banner alone."""
    cell = next(c for c in matrix.cells("ci") if c.mpi.abi == "openmpi")
    host = matrix.swap_host_for(cell.mpi)
    (tmp_path / "lib").mkdir()
    wrong = hostmpi.binding(host, tmp_path)
    checker = Checker(client, matrix, "ci", None, progress=lambda _: None, swaps={host.name: wrong})
    image = client.images.get(cell.image(matrix.profile("ci").registry))
    outcome = checker.check_bind_swap(cell, image.id, {})
    assert outcome.status == "fail", outcome.reason
    assert f"did not load the injected {host.name}" in outcome.reason
    assert "loaded /usr/local/lib/libmpi.so.40" in outcome.reason


def test_bind_swap_really_loads_intel_mpi(checker):
    command = MPI_LIBRARY_VERSION
    code, out = checker.run(GOOD, command, env={"LD_LIBRARY_PATH": f"{hostmpi.MOUNT}/lib"}, host_mpi=checker.host_mpi)
    assert code == 0 and out.startswith("Intel(R) MPI Library"), out
    code, out = checker.run(GOOD, command)
    assert code == 0 and out.startswith("MPICH Version:"), out


def test_rpath_pinned_mpi4py_fails_linking(checker, matrix, fixture_images):
    result = checker.check_cell(cell(matrix), fixture_images["rpath"])
    assert result.checks["linking"].status == "fail"
    assert "has RPATH ['/usr/local/lib']" in result.checks["linking"].reason
    # mpi4py 4 dlopen()s libmpi.so.12 itself before loading its extension, so this particular RPATH does not
    # stop the swap at run time; any other extension linked this way would. The image is refused either way.
    assert result.checks["contents"].status == "pass" and not result.passed


def test_image_without_mpi4py_fails_contents(checker, matrix, fixture_images):
    result = checker.check_cell(cell(matrix), fixture_images["no-mpi4py"])
    assert result.checks["contents"].status == "fail"
    assert "import mpi4py failed" in result.checks["contents"].reason
    assert "mpi4py is not installed, the lock pins 4.1.2" in result.checks["contents"].reason
    assert result.checks["mpi-run"].status == "fail" and not result.passed


def test_lying_labels_fail_labels(checker, matrix, fixture_images):
    result = checker.check_cell(cell(matrix), fixture_images["lying-labels"])
    labels = result.checks["labels"]
    assert labels.status == "fail"
    assert "io.hpcimages.mpi.version='4.2.3', expected '4.3.2'" in labels.reason
    assert "but the image runs Python 3.11" in labels.reason
    assert result.checks["contents"].status == "pass" and not result.passed


def test_leftovers_and_ca_settings_fail_hygiene(checker, matrix, fixture_images):
    result = checker.check_cell(cell(matrix), fixture_images["leftovers"])
    hygiene = result.checks["hygiene"]
    assert hygiene.status == "fail"
    assert "leftover /root/.cache/pip" in hygiene.reason
    assert "leftover /tmp/numpy-2.0-py3-none-any.whl" in hygiene.reason
    assert "environment variable PIP_CERT" in hygiene.reason


def test_unbuilt_image_fails_with_a_hint(checker, matrix):
    result = checker.check_cell(cell(matrix), "hpcimages-test/never-built:nope")
    assert result.checks["contents"].status == "fail"
    assert "run `invoke build`" in result.checks["contents"].reason


def test_check_skips_cells_that_were_never_built_and_fails_only_when_nothing_was_checked(matrix, client):
    registry = matrix.profile("offline").registry
    unbuilt = [c for c in matrix.cells("offline") if find_image(client, c.image(registry)) is None]
    assert unbuilt, "the offline profile has cells that this engine has never built"
    both = subprocess.run([sys.executable, "-m", "invoke", "check", "--profile", "offline", "--only",
                           "mpi4py:py3.11-mpich4.2.3", "--only", unbuilt[0].ref], cwd=ROOT, capture_output=True,
                          text=True, check=False, timeout=900)
    assert both.returncode == 0, both.stdout[-3000:] + both.stderr[-2000:]
    assert "1/1 built cells passed" in both.stdout and "1 not built, skipped" in both.stdout
    assert "FAIL" not in both.stdout
    alone = subprocess.run([sys.executable, "-m", "invoke", "check", "--profile", "offline", "--only",
                            unbuilt[0].ref], cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert alone.returncode == 1 and "0/0 built cells passed" in alone.stdout, alone.stdout[-2000:]


def test_check_with_unknown_cells_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "invoke", "check", "--profile", "ci", "--only", "openmpi*"],
                          cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "matches no cell" in proc.stderr and "Traceback" not in proc.stderr


def test_the_requirements_check_of_a_family_without_its_own_runs_and_names_what_does_not_import(checker):
    """The check a new family gets, run for real in the hpc-python image: its requirements.in imports; a package
    the image lacks is named."""
    from hpcimages.images.check import IMPORT_REQUIREMENTS

    image = "hpcimages/hpc-python:py3.11-mpich4.3.2"
    code, out = checker.run(image, ["python3", "-c", IMPORT_REQUIREMENTS, "scipy", "h5py", "pandas"])
    assert code == 0 and "every package of requirements.in imports" in out, out
    assert re.search(r"^scipy \d+\.\d+", out, re.M) and re.search(r"^pandas \d+\.\d+.* pandas$", out, re.M), out
    code, out = checker.run(image, ["python3", "-c", IMPORT_REQUIREMENTS, "scipy", "dask-mpi"])
    assert code != 0 and "dask-mpi is not installed" in out and "every package" not in out, out

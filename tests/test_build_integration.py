"""The `ci` profile built for real with the Docker engine, and the fail-soft behaviour of a broken cell.

Needs a running engine and the offline bases (`bash scripts/setup.sh` provides both); the base images
are bootstrapped here if missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import docker.errors
import pytest

from conftest import default_sigint
from hpcimages import engine
from hpcimages.define import load_matrix
from hpcimages.define.render import render_all
from hpcimages.images import wheelhouse
from hpcimages.images.bases import ensure_bases
from hpcimages.images.build import INPUT_LABEL, build
from hpcimages.paths import build_dir

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
MPI_VERSION = 'python3 -c "from mpi4py import MPI; print(MPI.Get_library_version())"'


@pytest.fixture(scope="module")
def ci_build(ci_built):
    return ci_built.matrix, ci_built.report


def run_in(client, image: str, command: str) -> str:
    code, out = engine.run(client, image, ["sh", "-c", command], timeout=300)
    assert code == 0, f"{image}: `{command}` exited {code}: {out[-2000:]}"
    return out


def test_every_ci_cell_builds_and_reports_its_mpi(ci_build, client):
    m, report = ci_build
    assert report.ok, report.table()
    assert [r.ref for r in report.results] == [c.ref for c in m.cells("ci")]
    assert any(c.mpi.abi == "openmpi" for c in m.cells("ci")), "ci builds an Open MPI image too"
    for cell in m.cells("ci"):
        text = run_in(client, cell.image("hpcimages"), MPI_VERSION)
        banner = r"Open MPI v(\S+)," if cell.mpi.abi == "openmpi" else r"MPICH Version:\s*(\S+)"
        found = re.search(banner, text)
        assert found, text
        assert found.group(1) == cell.mpi.version, f"{cell.ref}: {text}"


def test_images_carry_tags_labels_and_provenance(ci_build, client):
    m, _ = ci_build
    for cell in m.cells("ci"):
        image = client.images.get(cell.image("hpcimages"))
        labels = image.labels
        assert labels["io.hpcimages.python"] == cell.python
        assert labels["io.hpcimages.mpi.version"] == cell.mpi.version
        assert labels["org.opencontainers.image.version"] == cell.tag
        assert re.match(r"^[0-9a-f]{40}(-dirty)?$", labels["org.opencontainers.image.revision"])
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", labels["org.opencontainers.image.created"])
        assert re.match(r"^[0-9a-f]{64}$", labels[INPUT_LABEL])
        for alias in cell.aliases(m.profile("ci")):
            assert client.images.get(alias).id == image.id
        python = run_in(client, image.id, "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
        assert python.strip() == cell.python


def test_two_ranks_run_inside_an_image(ci_build, client):
    cmd = ("mpiexec -n 2 python3 -c \"from mpi4py import MPI; c = MPI.COMM_WORLD; "
           "print('rank', c.Get_rank(), 'of', c.Get_size())\"")
    out = run_in(client, "hpcimages/mpi4py:py3.13-mpich4.3.2", cmd)
    assert "rank 0 of 2" in out and "rank 1 of 2" in out, out


def test_no_wheelhouse_or_pip_cache_left_in_images(ci_build, client):
    for cell in ci_build[0].cells("ci"):
        out = run_in(client, cell.image("hpcimages"),
                     # Debian's python3-venv keeps ensurepip's own wheels in /usr/share/python-wheels
                     "find / -xdev -path /usr/share/python-wheels -prune -o \\( -name '*.whl' -o "
                     "-path '/root/.cache/pip' -o -name 'mpi-source.tar' \\) -print 2>/dev/null | head -5; echo END")
        assert out.strip() == "END", f"{cell.ref}: {out}"


def test_second_run_rebuilds_nothing(ci_build):
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--all", "--profile", "ci"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"0 to build, {len(ci_build[0].cells('ci'))} up to date" in proc.stdout
    assert " built " not in proc.stdout
    # the plan says so too, cell by cell, before anything runs
    plan = subprocess.run([sys.executable, "-m", "invoke", "build", "--profile", "ci", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    n = len(ci_build[0].cells("ci"))
    assert plan.returncode == 0 and f"{n} cells: {n} up to date, 0 to build" in plan.stdout, plan.stdout
    assert "to build  " not in plan.stdout and plan.stdout.count("up to date") == n + 1, plan.stdout


def test_a_generated_dockerfile_builds_with_plain_docker_build(ci_build, client):
    """No tool needed to use the committed files: the docker CLI, the repository root as context."""
    docker_cli = shutil.which("docker")
    assert docker_cli, "the docker CLI is installed with the engine (scripts/setup.sh)"
    m, _ = ci_build
    cell = next(c for c in m.cells("ci") if c.ref == "mpi4py:py3.13-mpich4.3.2")
    tag = "hpcimages-test/plain-docker-build:py3.13"
    with wheelhouse.serve(wheelhouse.cache_root()) as served:  # the wheels the ci build already cached
        proc = subprocess.run(
            [docker_cli, "build", "--network", "host", "-t", tag,
             "-f", f"dockerfiles/generated/mpi4py/{cell.tag}/Dockerfile",
             "--build-arg", f"BASE_IMAGE={m.profile('ci').bases['3.13'].image}",
             "--build-arg", "PIP_NO_INDEX=1", "--build-arg", f"PIP_FIND_LINKS={served}/wheelhouse/", "."],
            cwd=ROOT, capture_output=True, text=True, check=False, env={**os.environ, "DOCKER_BUILDKIT": "0"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = run_in(client, tag, MPI_VERSION)
    assert re.search(r"MPICH Version:\s*4\.3\.2", text), text
    client.images.remove(tag)


#: the head of a test family's template built FROM its mpi4py parent
CHILD_TEMPLATE = """{#- hpcimages
supports.mpi_name = ["mpich", "openmpi"]
-#}
ARG PARENT_IMAGE={{ parent_image }}
FROM ${PARENT_IMAGE}
ARG PIP_NO_INDEX
ARG PIP_FIND_LINKS
"""
BROKEN_TEMPLATE = CHILD_TEMPLATE + 'RUN echo "deliberate failure for the fail-soft test" >&2; exit 3\n'

BROKEN_PROFILE = """
[families.broken]
template = "broken.Dockerfile.j2"
parent = "mpi4py"
axes = ["python", "mpi"]

[profiles.broken]
extends = "offline"
registry = "hpcimages-test"
cells = ["mpi4py:py3.11-mpich4.0.2", "hpc-python:py3.11-mpich4.0.2", "mpi4py:py3.11-mpich4.3.2",
         "broken:py3.11-mpich4.3.2", "hpc-python:py3.11-mpich4.3.2"]

[profiles.broken.sources]
"mpich4.0.2" = { url = "debian:pool/main/m/mpich/mpich_4.0.2.orig.tar.xz", sha256 = "%s" }
""" % ("0" * 64)


def test_broken_cells_fail_soft(ci_build, repo_copy, monkeypatch):
    (repo_copy / "dockerfiles" / "broken.Dockerfile.j2").write_text(BROKEN_TEMPLATE)
    matrix = repo_copy / "matrix.toml"
    matrix.write_text(matrix.read_text() + BROKEN_PROFILE)  # new tables at the end: valid wherever the file ends
    monkeypatch.setenv("HPCIMAGES_BUILD_DIR", str(repo_copy / "build"))  # this profile's reports stay apart
    render_all(load_matrix(matrix))
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--matrix", str(matrix), "--profile", "broken",
                           "--jobs", "2"], cwd=ROOT, capture_output=True, text=True, check=False)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    rows = {line.split()[0]: line for line in out.splitlines() if re.match(r"^[a-z0-9-]+:py3", line)}
    assert "failed" in rows["mpi4py:py3.11-mpich4.0.2"] and "sha256 mismatch" in out
    assert "skipped" in rows["hpc-python:py3.11-mpich4.0.2"]
    assert "parent mpi4py:py3.11-mpich4.0.2 failed" in rows["hpc-python:py3.11-mpich4.0.2"]
    assert "failed" in rows["broken:py3.11-mpich4.3.2"] and "returned a non-zero code: 3" in out
    # the failing step's own words are in the report, not only in the log
    assert "last output: deliberate failure for the fail-soft test" in out
    assert re.search(r"built|up to date", rows["mpi4py:py3.11-mpich4.3.2"])
    assert re.search(r"built|up to date", rows["hpc-python:py3.11-mpich4.3.2"])
    log = (repo_copy / "build/logs/broken/py3.11-mpich4.3.2.log").read_text()
    assert "deliberate failure for the fail-soft test" in log
    assert "5 cells, 3 failed or skipped" in out


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HPCIMAGES_SLOW") != "1", reason="MPICH source and apt builds: HPCIMAGES_SLOW=1")
@pytest.mark.parametrize("ref", ["mpi4py:py3.11-mpich4.0.2", "mpi4py:py3.11-mpich4.0.2-apt"])
def test_source_and_apt_cells(client, ref):
    m = load_matrix(ROOT / "matrix.toml")
    ensure_bases(client, m.profile("offline"))
    report = build(client, m, "offline", only=[ref], jobs=1)
    assert report.ok, report.table()
    text = run_in(client, f"hpcimages/{ref}", MPI_VERSION)
    assert re.search(r"MPICH Version:\s*4\.0\.2", text), text


def compile_step_cached(log: str) -> bool:
    """Whether the engine took the mpi-build stage's compile from its cache in this build log."""
    step = re.search(r"^Step \d+/\d+ : RUN .*make install-strip.*\n(.*)$", log, re.M)
    assert step, "no compile step in the log"
    return "Using cache" in step.group(1)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HPCIMAGES_SLOW") != "1", reason="MPICH source builds: HPCIMAGES_SLOW=1")
def test_two_python_versions_of_one_source_mpich_compile_it_once_and_stay_lean(client):
    m = load_matrix(ROOT / "matrix.toml")
    refs = ["mpi4py:py3.11-mpich4.0.2", "mpi4py:py3.13-mpich4.0.2"]
    ensure_bases(client, m.profile("offline"))
    report = build(client, m, "offline", only=refs, jobs=2, force=True)  # both really built, in parallel slots
    assert report.ok, report.table()
    logs = [(build_dir(ROOT) / "logs/mpi4py" / f"{ref.split(':')[1]}.log").read_text() for ref in refs]
    cached = [compile_step_cached(log) for log in logs]
    assert cached.count(False) <= 1, "MPICH was compiled more than once"
    assert any(cached), "neither build took the compile from the engine's cache"
    wheel = client.images.get("hpcimages/mpi4py:py3.11-mpich4.3.2").attrs["Size"]
    for ref in refs:
        image = client.images.get(f"hpcimages/{ref}")
        assert image.attrs["Size"] <= 2 * wheel, f"{ref}: {image.attrs['Size'] / 1e6:.0f} MB"
        text = run_in(client, f"hpcimages/{ref}", MPI_VERSION)
        assert re.search(r"MPICH Version:\s*4\.0\.2", text), text
        leftovers = run_in(client, f"hpcimages/{ref}", "command -v gcc cc make; ls -d /usr/local/share/man/man*/mpi* "
                           "/usr/local/share/doc/mpich* /usr/local/lib/*.a 2>/dev/null; echo END")
        assert leftovers.strip() == "END", leftovers


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HPCIMAGES_SLOW") != "1", reason="a second h5py cell: HPCIMAGES_SLOW=1")
def test_a_second_python_s_h5py_cell_copies_the_hdf5_compile_of_the_first(ci_build, client):
    """h5py-mpi:py3.13-mpich4.3.2 (trixie) compiles its HDF5 in mpi4py:py3.11-mpich4.3.2 (bookworm), as the ci
    cell h5py-mpi:py3.11-mpich4.3.2 did: the engine finds that compile in its cache, and the HDF5 built on the older
    Debian writes in parallel on the newer one."""
    m = load_matrix(ROOT / "matrix.toml")
    ref = "h5py-mpi:py3.13-mpich4.3.2"
    with contextlib.suppress(docker.errors.ImageNotFound):  # built for sure, its parents as they are (not forced:
        client.images.remove(f"hpcimages/{ref}", force=True)  # a forced parent gets a new id, thus a new compile)
    report = build(client, m, "offline", only=[ref], jobs=1)
    assert report.ok, report.table()
    log = (build_dir(ROOT) / "logs/h5py-mpi/py3.13-mpich4.3.2.log").read_text()
    assert compile_step_cached(log), "HDF5 was compiled again for the second Python"
    text = run_in(client, f"hpcimages/{ref}", "mpiexec -n 2 python3 -c \"import h5py; from mpi4py import MPI; "
                  "f = h5py.File('/tmp/x.h5', 'w', driver='mpio', comm=MPI.COMM_WORLD); "
                  "f.create_dataset('d', (2,), 'i')[MPI.COMM_WORLD.rank] = MPI.COMM_WORLD.rank; f.close(); "
                  "print('wrote', MPI.COMM_WORLD.rank, h5py.version.hdf5_version)\"")
    assert "wrote 0 1.14.5" in text and "wrote 1 1.14.5" in text, text
    first = client.images.get("hpcimages/h5py-mpi:py3.11-mpich4.3.2").attrs["Size"]
    parent = client.images.get("hpcimages/mpi4py:py3.11-mpich4.3.2").attrs["Size"]
    second = client.images.get(f"hpcimages/{ref}").attrs["Size"] - \
        client.images.get("hpcimages/mpi4py:py3.13-mpich4.3.2").attrs["Size"]
    assert abs(second - (first - parent)) < 0.2 * (first - parent), (second, first - parent)


NAPPER_TEMPLATE = CHILD_TEMPLATE + 'ARG NAP=0\nRUN echo "napping ${NAP}s"; sleep ${NAP}\n'

NAPPER_PROFILE = """
[families.napper]
template = "napper.Dockerfile.j2"
parent = "mpi4py"
axes = ["python", "mpi"]
build_args = { NAP = "%s" }

[profiles.napper]
extends = "offline"
cells = ["mpi4py:py3.11-mpich4.3.2", "napper:py3.11-mpich4.3.2"]
"""


def test_the_first_ctrl_c_stops_a_build_and_leaves_the_tag_on_its_image(ci_build, client, repo_copy, monkeypatch):
    (repo_copy / "dockerfiles" / "napper.Dockerfile.j2").write_text(NAPPER_TEMPLATE)
    matrix = repo_copy / "matrix.toml"
    original = matrix.read_text()
    monkeypatch.setenv("HPCIMAGES_BUILD_DIR", str(repo_copy / "build"))
    command = [sys.executable, "-m", "invoke", "build", "--matrix", str(matrix), "--profile", "napper"]

    matrix.write_text(original + NAPPER_PROFILE % "0")  # a first image under the tag
    render_all(load_matrix(matrix))
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    tag = f"{load_matrix(matrix).profile('napper').registry}/napper:py3.11-mpich4.3.2"
    before = client.images.get(tag).id

    matrix.write_text(original + NAPPER_PROFILE % "600")  # new inputs: the cell rebuilds, and its step sleeps
    render_all(load_matrix(matrix))
    log = repo_copy / "build/logs/napper/py3.11-mpich4.3.2.log"
    log.unlink(missing_ok=True)  # the first build may have found the cell up to date
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (log.is_file() and "napping 600s" in log.read_text()):
        time.sleep(0.5)
    assert "napping 600s" in log.read_text(), "the sleeping step never started"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)  # far sooner than the 600 s the step would sleep
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "interrupted: stopping the builds in flight" in out
    assert client.images.get(tag).id == before, "the tag still names the image it had"
    cells = json.loads((repo_copy / "build" / "build-report.json").read_text())["cells"]
    entry = cells["napper/napper:py3.11-mpich4.3.2"]
    assert entry["status"] == "interrupted" and "Ctrl-C" in entry["reason"]
    # the engine stops the build's step too, on its own time after the client went (a fresh machine's second run
    # found it still sleeping right after the exit, and gone a little later): wait for it, far less than the 600 s
    for _ in range(120):
        sleeping = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True, check=False)
        if not sleeping.stdout.strip():
            break
        time.sleep(0.5)
    assert not sleeping.stdout.strip(), "the engine did not stop the build's step"


def test_the_default_profile_without_registry_access_stops_at_once_and_says_what_to_do(client):
    import docker

    try:
        client.api.inspect_distribution("python:3.11-slim-bookworm")
        pytest.skip("this machine reaches a registry: the published profile would really build")
    except docker.errors.APIError:
        pass
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--all"], cwd=ROOT, capture_output=True,
                          text=True, check=False, timeout=300)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "cannot pull" in proc.stderr and "`--profile offline`" in proc.stderr and "`--profile ci`" in proc.stderr
    assert "Traceback" not in proc.stderr and "failed" not in proc.stdout, "no cell was tried"


@pytest.mark.parametrize("python", ["3.11", "3.13"])
def test_an_offline_base_has_pip_alone_and_pip_can_upgrade_what_it_installed(ci_build, client, python):
    """Like python:X-slim: no dpkg-installed Python package that a lock could pin and pip could never replace
    (trixie's python3-pip brings python3-packaging, which stopped the cuda-python cell of Python 3.13)."""
    m, _ = ci_build
    base = m.profile("offline").bases[python].image
    out = run_in(client, base, "dpkg-query -W -f '${db:Status-Abbrev} ${Package}\\n' 'python3-*' "
                               "| awk '$1 == \"ii\" {print $2}'; echo '--'; "
                               "python3 -m pip list --disable-pip-version-check --format freeze; "
                               "python3 -m pip --version")
    debian, _, pip = out.partition("--")
    assert not {"python3-pip", "python3-packaging", "python3-wheel", "python3-setuptools"} & set(debian.split())
    assert [line.split("==")[0] for line in pip.split() if "==" in line] == ["pip"], pip
    assert f"/usr/local/lib/python{python}/dist-packages/pip" in pip


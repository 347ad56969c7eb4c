"""The parallel-HDF5 family for real: h5py with driver='mpio' in the `ci` images, its edge cases, the check that
tells an MPI build of h5py from PyPI's serial wheel, and the parallel-I/O benchmark in the runner."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hpcimages.define.lock import locked_pins
from hpcimages.engine import build_from_memory
from hpcimages.images import hostmpi, wheelhouse
from hpcimages.images.check import BENCH_MOUNT, Checker
from hpcimages.measure import bench
from hpcimages.measure.report import build_report
from hpcimages.measure.results import load, parse_osu

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
REF = "h5py-mpi:py3.11-mpich4.3.2"
OPEN_MPI_REF = "h5py-mpi:py3.13-openmpi5.0.11"
IMAGE = f"hpcimages/{REF}"


@pytest.fixture(scope="module")
def checker(client, ci_built):
    matrix = ci_built.matrix
    return Checker(client, matrix, "ci", hostmpi.swap_binding(client, matrix), progress=lambda _: None)


def mpio(checker: Checker, ranks: int, *args: str, image: str = IMAGE) -> tuple[int, str]:
    return checker.run(image, ["mpiexec", "-n", str(ranks), "python3", f"{BENCH_MOUNT}/h5py_mpio.py", *args])


@pytest.mark.parametrize("ranks,rows,per_rank", [
    (2, 1024, "512, 512"),
    (1, 7, "7"),  # one rank: the file is still opened through MPI-IO
    (3, 2, "1, 1, 0"),  # more ranks than rows: the third takes part in the collective write with nothing
])
def test_mpio_writes_collectively_and_verifies_every_element(checker, ranks, rows, per_rank):
    code, out = mpio(checker, ranks, "--rows", str(rows), "--cols", "8")
    assert code == 0, out
    assert f"{ranks} rank(s) wrote {rows} x 8 float64 collectively (rows per rank: {per_rank})" in out, out
    assert "reopened and verified every element" in out
    assert "# HDF5 1.14.5" in out and "# Library file: /usr/local/lib/libmpi.so.12" in out


def test_mpio_refuses_an_empty_dataset_with_a_clear_message(checker):
    code, out = mpio(checker, 2, "--rows", "0")
    assert code == 2 and "--rows and --cols must be at least 1" in out, out


def test_hdf5_follows_the_injected_mpi_under_the_bind_model(checker):
    env = checker.host_mpi.env
    code, out = checker.run(IMAGE, [f"{hostmpi.MOUNT}/bin/mpiexec", "-n", "2", "python3",
                                    f"{BENCH_MOUNT}/h5py_mpio.py"], env=env, host_mpi=checker.host_mpi)
    assert code == 0 and "reopened and verified every element" in out, out
    assert "# Intel(R) MPI Library" in out
    # one MPI library in the process, the injected one: HDF5's libmpi.so.12 resolved to it, not to the image's
    library_line = next(line for line in out.splitlines() if line.startswith("# Library file:"))
    assert f"{hostmpi.MOUNT}/lib/" in library_line and "/usr/local/lib/libmpi" not in library_line, library_line


def serial_h5py_image(client, ci_built) -> str:
    """The good image with PyPI's h5py wheel (serial HDF5 bundled) put back over the MPI build: a plausible mistake
    (a later `pip install h5py` in a child image does exactly this)."""
    version = locked_pins(ROOT / "pip-requirements/h5py-mpi/requirements-py3.11.txt")["h5py"]
    wheels = sorted(wheelhouse.wheelhouse_dir(wheelhouse.cache_root()).glob(
        f"h5py-{version}-cp311-cp311-manylinux*x86_64.whl"))
    assert wheels, "the ci build put the lock's h5py wheels in the wheelhouse"
    tag = "hpcimages-test/check-fixture:serial-h5py"
    dockerfile = (f"FROM {IMAGE}\nCOPY {wheels[0].name} /tmp/\n"
                  f"RUN python3 -m pip install --no-deps --force-reinstall /tmp/{wheels[0].name} && rm /tmp/*.whl\n")
    build_from_memory(client, tag, dockerfile, {wheels[0].name: wheels[0].read_bytes()})
    return tag


def test_a_serial_h5py_fails_the_family_check(client, ci_built, checker):
    tag = serial_h5py_image(client, ci_built)
    try:
        result = checker.check_cell(ci_built.matrix.cell(REF), tag)
    finally:
        client.images.remove(tag, force=True)
    family = result.checks["family"]
    assert family.status == "fail", family
    assert "h5py built with MPI on HDF5 1.14.5" in family.reason and "h5py mpi True hdf5 1.14.5" in family.reason


def test_h5py_write_measures_four_modes_and_checks_what_it_read(checker):
    code, out = checker.run(IMAGE, ["mpiexec", "-n", "2", "python3", f"{BENCH_MOUNT}/h5py_write.py",
                                    "-m", "4096:16384", "-i", "2", "-x", "0"])
    assert code == 0, out
    parsed = parse_osu(out)
    assert parsed.benchmark == "h5py_write"
    assert [int(r["size"]) for r in parsed.rows] == [4096, 8192, 16384]
    for row in parsed.rows:
        assert all(row[c] > 0 for c in ("write_independent_mbs", "write_collective_mbs", "read_independent_mbs",
                                        "read_collective_mbs")), row
    assert parsed.library_file == "/usr/local/lib/libmpi.so.12"


def file_in_image(client, image: str, path: str) -> bytes:
    container = client.containers.create(image, command=["true"])
    try:
        stream, _ = container.get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile(tar.getmembers()[0])
            assert member is not None, path
            return member.read()
    finally:
        container.remove(force=True)


def test_bench_runs_h5py_write_in_the_image_and_under_the_swap(client, tmp_path):
    results = tmp_path / "ci.jsonl"
    proc = subprocess.run([sys.executable, "-m", "invoke", "bench", "--profile", "ci", "--only", REF, "--results",
                           str(results), "--no-plots", "--repeats", "2", "--sizes", "h5py_write=65536:131072"],
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records, _ = load([results])
    series = {(r.benchmark, r.variant) for r in records}
    assert series == {(f"h5py_{op}_{mode}", variant) for op in ("write", "read")
                      for mode in ("independent", "collective")
                      for variant in ("container", "container+impi", "bare-metal")}
    assert {r.size for r in records} == {65536, 131072} and {r.repeat for r in records} == {1, 2}
    swapped = next(r for r in records if r.variant == "container+impi")
    assert swapped.mpi_library_file.startswith(f"{hostmpi.MOUNT}/") and swapped.unit == "MB/s"
    # the bare-metal twin: the image's own HDF5 build and h5py (this host's Debian and Python are the image's) beside
    # the venv's MPICH wheel
    bare = next(r for r in records if r.variant == "bare-metal")
    assert bare.cell is None and "/bench/venv-py3.11-mpich4.3.2/" in bare.mpi_library_file, bare.mpi_library_file
    # every variant writes into the same host folder (bound into the containers), not into an overlay /tmp
    assert all("--dir /opt/hpcimages-scratch" in r.command for r in records if r.cell)
    assert "/bench/scratch" in bare.command
    text = build_report(records).text()
    assert "h5py parallel write, collective I/O (MB/s, all ranks)" in text
    assert "write collective container+impi / container" in text and "read collective container / bare metal" in text
    # the twin runs the container's binaries: its HDF5 build and its h5py, copied, nothing compiled on the host
    assert f"the HDF5 build of hpcimages/{REF} and the h5py of hpcimages/{REF} copied into" in proc.stdout
    assert "compiling" not in proc.stdout and "compiled into" not in proc.stdout
    venv = Path(bare.mpi_library_file).parent.parent
    host = next((venv / "lib").glob("libhdf5.so.*.*.*"))
    assert host.read_bytes() == file_in_image(client, f"hpcimages/{REF}", f"/usr/local/lib/{host.name}"), \
        "the bare-metal HDF5 is not the image's build"
    python = f"python{sys.version_info.major}.{sys.version_info.minor}"
    module = next((venv / "lib" / python / "site-packages" / "h5py").glob("_conv.*.so"))
    assert module.read_bytes() == file_in_image(client, f"hpcimages/{REF}",
                                                f"/usr/local/lib/{python}/dist-packages/h5py/{module.name}"), \
        "the bare-metal h5py is not the image's build"
    assert bench.image_hdf5(client, "hpcimages/mpi4py:py3.11-mpich4.3.2", tmp_path) == []  # no HDF5: compile it
    assert bench.image_h5py(client, "hpcimages/mpi4py:py3.11-mpich4.3.2", tmp_path) == []  # no h5py: compile it


def test_bench_runs_h5py_write_over_open_mpi_with_the_other_series_swapped_in(client, tmp_path):
    """HDF5 compiled by Open MPI's mpicc follows the Open MPI 4.1.8 bound in, at run time, under the benchmark."""
    results = tmp_path / "ci.jsonl"
    proc = subprocess.run([sys.executable, "-m", "invoke", "bench", "--profile", "ci", "--only", OPEN_MPI_REF,
                           "--results", str(results), "--no-plots", "--repeats", "1", "--no-bare-metal",
                           "--sizes", "h5py_write=65536:65536"],
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records, _ = load([results])
    by_variant = {r.variant: r for r in records if r.benchmark == "h5py_write_collective"}
    assert set(by_variant) == {"container", "container+openmpi"}
    assert by_variant["container"].mpi_library.startswith("Open MPI v5.0.11,")
    assert by_variant["container"].mpi_library_file == "/usr/local/lib/libmpi.so.40"
    assert by_variant["container+openmpi"].mpi_library.startswith("Open MPI v4.1.8,")
    assert by_variant["container+openmpi"].mpi_library_file == f"{hostmpi.MOUNT}/lib/libmpi.so.40"
    assert "write collective container+openmpi / container" in proc.stdout


def test_bench_of_mpi_benchmarks_in_an_hdf5_image_alone_says_why_nothing_runs(client, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "invoke", "bench", "--profile", "ci", "--only", REF, "--results",
                           str(tmp_path / "x.jsonl"), "--no-plots", "--bench", "osu_bw", "--repeats", "1"],
                          cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert proc.returncode != 0
    assert "nothing to run: osu_bw in h5py-mpi:py3.11-mpich4.3.2" in proc.stdout + proc.stderr

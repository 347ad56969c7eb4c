"""A real Apptainer (the containerised one of the tools image): conversions, runs, recipes, failures."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hpcimages.define import load_matrix
from hpcimages.engine import Mount, find_image
from hpcimages.sif import apptainer as ap
from hpcimages.sif import convert as cv

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
BASE = "hpcimages/mpi4py:py3.11-mpich4.3.2"


@pytest.fixture(scope="module")
def runtime(client):
    rt = ap.choose_runtime("container", lambda: client, ROOT, progress=lambda _: None)
    assert isinstance(rt, ap.ContainerRuntime)
    return rt


def derived(client, tag: str, label: str) -> str:
    """A small image of one file: what the conversion's bookkeeping tests need, at a second's conversion rather than
    the half a minute of a 280 MB cell (test_invoke_convert_converts_a_cell_of_each_kind_and_runs_hello converts
    those)."""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (("Dockerfile", f"FROM scratch\nCOPY marker /marker\nLABEL io.hpcimages.test={label}\n"),
                           ("marker", label)):
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    context.seek(0)
    client.images.build(fileobj=context, custom_context=True, tag=tag, rm=True)
    return tag


#: ci cells that no other test runs as a .sif: the package families (hpc-python, cuda-python: mpi4py's image with
#: more Python packages, converted by the same family-blind path and checked in Docker by `invoke check`) and the
#: second Python's Open MPI cell. Every MPI, ABI and Debian release of the profile, and HDF5's mpio write, is still
#: converted here; the package families' conversions are test_invoke_convert_of_the_package_families
#: (HPCIMAGES_SLOW=1), two and a half CPU-minutes of squashing that no user failure needs (docs/testing.md).
NOT_CONVERTED = ("hpc-python:py3.11-mpich4.3.2", "cuda-python:py3.11-mpich4.3.2-cuda12.8",
                 "cuda-python:py3.13-mpich4.3.2-cuda12.8", "mpi4py:py3.13-openmpi5.0.11")


def convert_and_run(cells: list) -> None:
    """`invoke convert` of ``cells`` as a maintainer runs it: each .sif made, each run (hello on 1 and 2 ranks, an
    HDF5 image's mpio write), two at once, and a second run of one cell up to date."""
    only = [arg for c in cells for arg in ("--only", c.ref)]
    proc = subprocess.run([sys.executable, "-m", "invoke", "convert", "--profile", "ci", *only], cwd=ROOT,
                          capture_output=True, text=True, check=False, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # saved, laid out by skopeo with zstd layers and unpacked in memory (this machine has the room)
    report = json.loads((cv.sif_dir(ROOT) / "convert-report.json").read_text(encoding="utf-8"))
    converted = [r for r in report if r["status"] == "converted"]
    assert all(r["source"] == "oci (zstd layers)" and r["scratch_bytes"] > r["image_bytes"] for r in converted), report
    for cell in cells:
        sif = cv.sif_dir(ROOT) / cv.sif_name(cell.image("hpcimages"))
        assert sif.is_file() and sif.read_bytes()[:10].startswith(b"#!/usr/bin"), sif
    assert proc.stdout.count(" pass ") + proc.stdout.count(" pass\n") >= 2 * len(cells)
    assert "FAIL" not in proc.stdout
    # an image with a parallel HDF5 also writes with driver='mpio' from 2 ranks (launched outside the container; an Open
    # MPI image's by its own mpirun inside)
    mpio = [line.split()[-1] for line in proc.stdout.splitlines()
            if line.split() and "/h5py-mpi:" in line.split()[0] and line.split()[-1] in ("pass", "FAIL", "skip", "-")]
    assert mpio == ["pass"] * len([c for c in cells if c.family.hdf5]), proc.stdout[-3000:]
    # converted two at once (--jobs 2, the default): each cell's own line, once
    for cell in cells:
        done = re.findall(rf"\] {re.escape(cell.image('hpcimages'))}: (converted|up to date) \(", proc.stdout)
        assert len(done) == 1, (cell.ref, proc.stdout[-3000:])
    again = subprocess.run([sys.executable, "-m", "invoke", "convert", "--profile", "ci", "--only", cells[0].ref],
                           cwd=ROOT, capture_output=True, text=True, check=False, timeout=1200)
    assert again.returncode == 0 and again.stdout.count("up to date (") == 1, again.stdout[-3000:]


def test_invoke_convert_converts_a_cell_of_each_kind_and_runs_hello(client):
    m = load_matrix(ROOT / "matrix.toml")
    assert set(NOT_CONVERTED) <= {c.ref for c in m.cells("ci")}
    cells = [c for c in m.cells("ci") if c.ref not in NOT_CONVERTED]
    kinds = {(c.mpi.name, c.mpi.abi, c.python) for c in m.cells("ci")}  # every MPI, ABI and Python (Debian release)
    assert {(c.mpi.name, c.mpi.abi, c.python) for c in cells} == kinds and any(c.family.hdf5 for c in cells)
    convert_and_run(cells)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("HPCIMAGES_SLOW") != "1", reason="the package families' .sif: HPCIMAGES_SLOW=1")
def test_invoke_convert_of_the_package_families(client):
    m = load_matrix(ROOT / "matrix.toml")
    convert_and_run([c for c in m.cells("ci") if c.ref in NOT_CONVERTED and c.family.name != "mpi4py"])


def test_labels_survive_the_conversion(client, runtime):
    sif = cv.sif_dir(ROOT) / cv.sif_name(BASE)
    if not sif.is_file():
        cv.convert(client, runtime, [BASE], sif.parent, progress=lambda _: None)
    code, out = runtime.run(["apptainer", "inspect", f"/sif/{sif.name}"], [Mount(sif.parent, "/sif")])
    assert code == 0 and "io.hpcimages.mpi.version: 4.3.2" in out and "org.opencontainers.image.revision" in out


def test_ranks_launched_outside_the_container(client, runtime):
    sif = cv.sif_dir(ROOT) / cv.sif_name(BASE)
    if not sif.is_file():
        cv.convert(client, runtime, [BASE], sif.parent, progress=lambda _: None)
    code, out = ap.exec_in_sif(runtime, sif, ["python3", "{bench}/osu_bw.py", "-m", "65536:65536", "-c"],
                               ROOT / "bench", ranks=2)
    assert code == 0, out
    assert "65536" in out and "FAILED" not in out and "mm_posix" not in out  # no UCX /proc fd trap


def test_stale_sif_is_rebuilt_and_fresh_one_is_kept(client, runtime, tmp_path):
    tag = derived(client, "hpcimages-test/stale:one", "1")
    first = cv.convert(client, runtime, [tag], tmp_path, progress=lambda _: None)
    assert first[0].status == "converted", first[0].reason
    assert cv.convert(client, runtime, [tag], tmp_path, progress=lambda _: None)[0].status == "up to date"
    derived(client, tag, "2")  # same tag, new image
    again = cv.convert(client, runtime, [tag], tmp_path, progress=lambda _: None)
    assert again[0].status == "converted"


def test_an_image_that_outgrows_its_memory_file_system_is_unpacked_on_disk(client, runtime, tmp_path, monkeypatch):
    monkeypatch.setattr(cv, "scratch_room", lambda *_: 4096)  # one page: Apptainer's cache alone outgrows it
    [result] = cv.convert(client, runtime, [derived(client, "hpcimages-test/stale:room", "room")], tmp_path,
                          progress=lambda _: None)
    assert result.status == "converted" and result.scratch_bytes == 0, result
    assert "of memory was too little: unpacked on disk instead" in result.reason
    assert Path(result.sif).read_bytes()[:10].startswith(b"#!/usr/bin")  # a whole SIF, from the second build


def test_a_sif_is_squashed_with_gzip_which_every_runtime_reads(client, runtime, tmp_path):
    [result] = cv.convert(client, runtime, [derived(client, "hpcimages-test/stale:gzip", "gzip")], tmp_path,
                          progress=lambda _: None)
    data = Path(result.sif).read_bytes()
    start = data.index(b"hsqs")  # the squashfs superblock inside the SIF: its compression id at byte 20
    assert int.from_bytes(data[start + 20:start + 22], "little") == 1  # 1: gzip (4: xz, 5: lz4, 6: zstd)


def test_failed_conversion_names_the_cell_and_the_others_continue(client, runtime, tmp_path):
    empty = "hpcimages-test/empty:nolayers"  # an image without a file system: the engine refuses to export it
    client.images.build(fileobj=io.BytesIO(b"FROM scratch\nLABEL io.hpcimages.test=empty\n"), tag=empty, rm=True)
    good = derived(client, "hpcimages-test/stale:good", "good")
    results = cv.convert(client, runtime, ["hpcimages-test/never:built", empty, good], tmp_path,
                         progress=lambda _: None)
    assert [r.status for r in results] == ["not built", "failed", "converted"]
    assert "is not built" in results[0].reason
    assert results[1].reason
    assert "hpcimages-test/empty:nolayers" in cv.table(results)
    assert not (tmp_path / cv.sif_name(empty)).exists()


@pytest.mark.parametrize("reader", ["skopeo", "apptainer"])
def test_a_refused_archive_is_reported_and_leaves_no_partial_sif(client, runtime, tmp_path, monkeypatch, reader):
    # A corrupt archive cannot be made with a real engine on demand: cut a real export short instead. skopeo reads
    # it first; without skopeo (lay_out says so) Apptainer reads it.
    real_save = cv.save_image

    def truncated_save(client, image, tar):
        real_save(client, image, tar)
        with tar.open("r+b") as f:
            f.truncate(tar.stat().st_size // 3)

    monkeypatch.setattr(cv, "save_image", truncated_save)
    if reader == "apptainer":
        monkeypatch.setattr(cv, "lay_out", lambda *_: False)
    good = derived(client, "hpcimages-test/stale:good", "good")
    [result] = cv.convert(client, runtime, [good], tmp_path, progress=lambda _: None, force=True)
    assert result.status == "failed"
    assert ("skopeo could not lay out" if reader == "skopeo" else "apptainer build failed") in result.reason
    assert not (tmp_path / cv.sif_name(good)).exists()
    assert not list((tmp_path / ".work").iterdir())  # no partial .sif, archive or layout left


SLOW_HDF5 = pytest.mark.skipif(os.environ.get("HPCIMAGES_SLOW") != "1",
                               reason="HDF5 compiled under Apptainer: HPCIMAGES_SLOW=1")


@pytest.mark.parametrize("ref", [
    "mpi4py:py3.11-mpich4.3.2",
    # its smoke test is a 2-rank driver='mpio' write through the HDF5 the recipe compiled
    pytest.param("h5py-mpi:py3.11-mpich4.3.2", marks=[pytest.mark.slow, SLOW_HDF5]),
])
def test_a_committed_recipe_builds_with_a_real_apptainer(client, ref):
    proc = subprocess.run([sys.executable, "-m", "invoke", "convert", "--from-recipe", "--profile", "ci",
                           "--only", ref], cwd=ROOT, capture_output=True, text=True, check=False, timeout=3000)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "smoke test: pass" in proc.stdout
    assert "bootstrap: oci; unpacked in " in proc.stdout  # skopeo's layout, a memory file system: as convert's
    assert (cv.sif_dir(ROOT) / "from-recipe" / cv.sif_name(f"hpcimages/{ref}")).is_file()


def test_convert_skips_cells_that_were_never_built_and_fails_only_when_nothing_converts(client):
    m = load_matrix(ROOT / "matrix.toml")
    registry = m.profile("offline").registry
    unbuilt = [c for c in m.cells("offline")
               if c.family.name == "mpi4py" and find_image(client, c.image(registry)) is None]
    assert unbuilt, "the offline profile has mpi4py cells that this engine has never built"
    both = subprocess.run([sys.executable, "-m", "invoke", "convert", "--profile", "offline", "--only",
                           "mpi4py:py3.11-mpich4.3.2", "--only", unbuilt[0].ref], cwd=ROOT, capture_output=True,
                          text=True, check=False, timeout=1200)
    assert both.returncode == 0, both.stdout[-3000:] + both.stderr[-2000:]
    assert "1 not built, skipped" in both.stdout and "FAIL" not in both.stdout
    alone = subprocess.run([sys.executable, "-m", "invoke", "convert", "--profile", "offline", "--only",
                            unbuilt[0].ref], cwd=ROOT, capture_output=True, text=True, check=False, timeout=600)
    assert alone.returncode == 1 and "0/1 converted" in alone.stdout, alone.stdout[-2000:]


def test_apptainer_runs_without_the_gocryptfs_notice(client, runtime):
    sif = cv.sif_dir(ROOT) / cv.sif_name(BASE)
    if not sif.is_file():
        cv.convert(client, runtime, [BASE], sif.parent, progress=lambda _: None)
    code, out = ap.exec_in_sif(runtime, sif, ["true"], ROOT / "bench")
    assert code == 0 and "gocryptfs" not in out, out

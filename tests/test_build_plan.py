"""Planning and inputs of a build: no engine needed."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from hpcimages.define import load_matrix
from hpcimages.define.render import dockerfile_path
from hpcimages.define.singularity import split_stages
from hpcimages.errors import SelectionError
from hpcimages.images.build import (
    Builder,
    BuildError,
    CellResult,
    build_args,
    check_inputs_fresh,
    context_archive,
    copied_files,
    input_hash,
    plan,
    shared_compiles,
)

ROOT = Path(__file__).resolve().parent.parent


def test_dry_run_lists_every_published_cell_with_its_tags():
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--all", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    m = load_matrix(ROOT / "matrix.toml")
    cells = m.cells("published")
    for cell in cells:
        assert f"hpcimages/{cell.family.name}:{cell.tag}" in proc.stdout
    assert f"{len(cells)} cells" in proc.stdout
    assert "hpcimages/cuda-python:py3.12-mpich4.3.2-cuda12.6" in proc.stdout


def test_dry_run_without_an_engine_says_that_up_to_date_is_not_known(tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--profile", "ci", "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "no Docker engine answered: which are up to date is not known" in proc.stdout
    assert "up to date  " not in proc.stdout and "to build  " not in proc.stdout


def test_only_adds_ancestors_and_rejects_unknown_patterns():
    m = load_matrix(ROOT / "matrix.toml")
    refs = [c.ref for c in plan(m, "ci", ["cuda-python:*"])]
    cuda = [c for c in m.cells("ci") if c.family.name == "cuda-python"]
    assert cuda and sorted(refs) == sorted({c.ref for c in cuda} | {c.parent_ref() for c in cuda})
    assert all(refs.index(c.parent_ref()) < refs.index(c.ref) for c in cuda)
    with pytest.raises(SelectionError, match="matches no cell"):
        plan(m, "ci", ["openmpi*"])


def test_unknown_profile_is_a_clear_error():
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--profile", "nightly", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "unknown profile 'nightly'" in proc.stderr and "Traceback" not in proc.stderr


def test_build_refuses_stale_generated_files(repo_copy):
    m = load_matrix(repo_copy / "matrix.toml")
    lock = repo_copy / "pip-requirements/hpc-python/requirements.in"
    lock.write_text(lock.read_text() + "matplotlib\n")
    with pytest.raises(BuildError, match="out of date"):
        check_inputs_fresh(m)


def test_input_hash_follows_copied_files_args_and_from_image(repo_copy):
    m = load_matrix(repo_copy / "matrix.toml")
    cell = m.cells("ci")[0]
    profile = m.profile("ci")
    args = build_args(m, profile, cell, None)
    first = input_hash(m, cell, args, "sha256:aaa")
    assert first == input_hash(m, cell, build_args(m, profile, cell, "http://127.0.0.1:1234"), "sha256:aaa"), \
        "the wheelhouse URL (a random port) must not change the hash"
    assert first != input_hash(m, cell, args, "sha256:bbb")
    assert first != input_hash(m, cell, {**args, "MAKE_JOBS": "8"}, "sha256:aaa")
    lock = repo_copy / "pip-requirements/mpi4py/requirements-py3.11.txt"
    lock.write_text(lock.read_text() + "\n")
    assert first != input_hash(m, cell, args, "sha256:aaa")


def test_build_context_holds_exactly_the_dockerfile_and_what_it_copies():
    m = load_matrix(ROOT / "matrix.toml")
    cell = m.cells("ci")[0]
    buf, dockerfile = context_archive(m, cell)
    with tarfile.open(fileobj=io.BytesIO(buf.read())) as tar:
        names = tar.getnames()
    assert dockerfile == "dockerfiles/generated/mpi4py/py3.11-mpich4.3.2/Dockerfile"
    assert names == [dockerfile, "pip-requirements/mpi/mpich-4.3.2.txt",
                     "pip-requirements/mpi4py/requirements-py3.11.txt"]


def test_copy_lines_are_parsed():
    text = "FROM x\nCOPY a/b.txt /x\nCOPY --chown=1:1 c /y\nCOPY --from=build /o /p\n"
    assert copied_files(text) == ["a/b.txt", "c"]


# --- one HDF5 compile per MPI: the image of that MPI for the profile's MPI build Python compiles it --------------


def test_every_python_s_h5py_cell_of_an_mpi_compiles_its_hdf5_in_one_image():
    m = load_matrix(ROOT / "matrix.toml")
    published = m.profile("published")
    h5py = [c for c in m.cells(published) if c.family.hdf5]
    builders = {c.ref: m.hdf5_builder(published, c) for c in h5py}
    assert all(b is not None and b.family.name == c.family.parent and b.mpi == c.mpi and
               b.python == published.mpi_build_python for c in h5py for b in [builders[c.ref]])
    assert len({b.ref for b in builders.values() if b}) == len({c.mpi.key for c in h5py}) < len(h5py)
    assert m.hdf5_builder(published, m.cells(published)[0]) is None  # a cell without HDF5 compiles none
    ci = m.profile("ci")
    cell = m.cell("h5py-mpi:py3.13-openmpi5.0.11")
    assert cell is not None
    assert m.build_needs(ci, cell) == ["mpi4py:py3.13-openmpi5.0.11", "mpi4py:py3.11-openmpi5.0.11"]
    assert build_args(m, ci, cell, None)["HDF5_BUILD_IMAGE"] == "hpcimages/mpi4py:py3.11-openmpi5.0.11"
    own = m.cell("h5py-mpi:py3.11-mpich4.3.2")
    assert own is not None and m.build_needs(ci, own) == ["mpi4py:py3.11-mpich4.3.2"]  # its parent is the builder


def test_a_profile_without_the_build_python_s_cell_compiles_hdf5_in_the_parent(repo_copy):
    text = (repo_copy / "matrix.toml").read_text()
    (repo_copy / "matrix.toml").write_text(text.replace('    "mpi4py:py3.11-openmpi5.0.11",\n', "", 1))
    m = load_matrix(repo_copy / "matrix.toml")
    cell = m.cell("h5py-mpi:py3.13-openmpi5.0.11")
    assert cell is not None
    builder = m.hdf5_builder("ci", cell)
    assert builder is not None and builder.ref == cell.parent_ref()


def test_a_plan_builds_the_image_an_hdf5_is_compiled_in_before_the_cell():
    m = load_matrix(ROOT / "matrix.toml")
    refs = [c.ref for c in plan(m, "ci", ["h5py-mpi:py3.13-*"])]
    assert refs == ["mpi4py:py3.11-openmpi5.0.11", "mpi4py:py3.13-openmpi5.0.11", "h5py-mpi:py3.13-openmpi5.0.11"]
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--profile", "ci", "--only", "h5py-mpi:py3.13-*",
                           "--dry-run"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "(HDF5 compiled in mpi4py:py3.11-openmpi5.0.11)" in proc.stdout


def hdf5_stages(dockerfile: str) -> str:
    """The text of a rendered Dockerfile's HDF5 stages (what the engine's cache keys their compile by)."""
    _, stages = split_stages(dockerfile)
    return "".join(f"FROM {s.from_arg} AS {s.name}{s.text}" for s in stages if s.name.startswith("hdf5-"))


def test_the_hdf5_stages_read_nothing_of_the_cell_s_python_so_its_compile_is_shared():
    """The engine reuses a compile only for the same image and the same instructions: every cell of one MPI must
    render its HDF5 stages byte for byte alike, and the h5py stage must not compile HDF5 again."""
    m = load_matrix(ROOT / "matrix.toml")
    by_mpi: dict[str, set[str]] = {}
    for cell in (c for c in m.all_cells if c.family.hdf5):
        text = dockerfile_path(m, cell).read_text(encoding="utf-8")
        stages = hdf5_stages(text)
        assert "make install-strip" in stages and "pip" not in stages and f"py{cell.python}" not in stages
        _, (*_, h5py_build, _image) = split_stages(text)
        assert h5py_build.name == "h5py-build" and "./configure" not in h5py_build.text
        by_mpi.setdefault(cell.mpi.key, set()).add(stages)
    assert by_mpi and all(len(texts) == 1 for texts in by_mpi.values()), \
        [key for key, texts in by_mpi.items() if len(texts) > 1]


def test_cells_sharing_a_compile_are_never_built_at_once():
    m = load_matrix(ROOT / "matrix.toml")
    offline = m.profile("offline")
    a, b, c = (m.cell(ref) for ref in ("h5py-mpi:py3.11-mpich4.3.2", "h5py-mpi:py3.13-mpich4.3.2",
                                       "h5py-mpi:py3.13-openmpi5.0.11"))
    assert a and b and c
    assert shared_compiles(m, offline, a) == shared_compiles(m, offline, b) == {"hdf5 1.14.5@mpi4py:py3.11-mpich4.3.2"}
    assert not shared_compiles(m, offline, a) & shared_compiles(m, offline, c)
    source = [m.cell(f"mpi4py:py{py}-mpich4.0.2") for py in ("3.11", "3.13")]
    assert source[0] and source[1]
    assert shared_compiles(m, offline, source[0]) == shared_compiles(m, offline, source[1]) != set()


def scheduled(cells, fail: set[str] = frozenset()) -> tuple[dict, list[tuple[str, str]]]:
    """Builder._schedule over ``cells`` with a build that only records when each cell starts and ends (the cells in
    ``fail`` fail): (the results, the events in order)."""
    m = load_matrix(ROOT / "matrix.toml")
    builder = Builder(None, m, m.profile("offline"), jobs=2, progress=lambda _: None)  # type: ignore[arg-type]
    events: list[tuple[str, str]] = []
    lock = threading.Lock()

    def build_cell(cell, parent_id, served, result):
        with lock:
            events.append(("start", cell.ref))
        time.sleep(0.05)
        with lock:
            events.append(("end", cell.ref))
        result.status = "failed" if cell.ref in fail else "built"
        return result

    builder.build_cell = build_cell  # type: ignore[method-assign]
    results = {c.ref: CellResult(c.ref, c.image("hpcimages")) for c in cells}
    builder._schedule(cells, results, "http://127.0.0.1:1")
    return results, events


def test_the_builder_runs_two_cells_of_one_hdf5_compile_one_after_the_other():
    m = load_matrix(ROOT / "matrix.toml")
    cells = plan(m, "offline", ["h5py-mpi:py3.1*-mpich4.3.2"])
    assert [c.ref for c in cells] == ["mpi4py:py3.11-mpich4.3.2", "mpi4py:py3.13-mpich4.3.2",
                                      "h5py-mpi:py3.11-mpich4.3.2", "h5py-mpi:py3.13-mpich4.3.2"]
    results, events = scheduled(cells)
    assert all(r.status == "built" for r in results.values())
    running: set[str] = set()
    for kind, ref in events:
        if kind == "start":
            running.add(ref)
            assert not {"h5py-mpi:py3.11-mpich4.3.2", "h5py-mpi:py3.13-mpich4.3.2"} <= running, events
        else:
            running.discard(ref)
    assert events.index(("end", "mpi4py:py3.11-mpich4.3.2")) < events.index(("start", "h5py-mpi:py3.13-mpich4.3.2"))


def test_a_failed_hdf5_build_image_skips_the_cells_that_compile_in_it_and_says_so():
    m = load_matrix(ROOT / "matrix.toml")
    cells = plan(m, "offline", ["h5py-mpi:py3.1*-mpich4.3.2"])
    results, events = scheduled(cells, fail={"mpi4py:py3.11-mpich4.3.2"})
    assert results["h5py-mpi:py3.11-mpich4.3.2"].reason == "parent mpi4py:py3.11-mpich4.3.2 failed"
    assert results["h5py-mpi:py3.13-mpich4.3.2"].reason == "HDF5 build image mpi4py:py3.11-mpich4.3.2 failed"
    assert results["mpi4py:py3.13-mpich4.3.2"].status == "built"
    assert ("start", "h5py-mpi:py3.13-mpich4.3.2") not in events

"""Planning and inputs of a build: no engine needed."""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from hpcimages.define import load_matrix
from hpcimages.errors import SelectionError
from hpcimages.images.build import (
    BuildError,
    build_args,
    check_inputs_fresh,
    context_archive,
    copied_files,
    input_hash,
    plan,
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

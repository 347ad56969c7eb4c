"""One `--only` rule for every task: a glob on family:tag or on the family name. Whether parents come along is a
property of the task (build: yes; check, convert, bench: no), never a second rule."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcimages.define import load_matrix
from hpcimages.define.matrix import select_cells
from hpcimages.errors import SelectionError
from test_matrix import MINIMAL  # the small matrix the loader tests use

ROOT = Path(__file__).resolve().parent.parent
M311, M311_OLD = "mpi4py:py3.11-mpich4.3.2", "mpi4py:py3.11-mpich4.0.2"
M313, M313_OLD = "mpi4py:py3.13-mpich4.3.2", "mpi4py:py3.13-mpich4.0.2"
H311, H311_OLD = "hpc-python:py3.11-mpich4.3.2", "hpc-python:py3.11-mpich4.0.2"
H313, H313_OLD = "hpc-python:py3.13-mpich4.3.2", "hpc-python:py3.13-mpich4.0.2"

# (patterns, cells chosen, what a build adds: the parents of the chosen cells)
RULE = [
    (["mpi4py"], [M311, M311_OLD, M313, M313_OLD], []),                       # a family name
    (["mpi4py*"], [M311, M311_OLD, M313, M313_OLD], []),                      # a glob on family names
    (["hpc-*"], [H311, H311_OLD, H313, H313_OLD], [M311, M311_OLD, M313, M313_OLD]),
    (["hpc-python:py3.13-*"], [H313, H313_OLD], [M313, M313_OLD]),            # a glob on family:tag
    (["*:py3.11-mpich4.3.2"], [M311, H311], []),                              # across families
    (["*4.0.2"], [M311_OLD, M313_OLD, H311_OLD, H313_OLD], []),
    (["mpi4py:py3.13-*", "hpc-python:py3.11-mpich4.3.2"], [M313, M313_OLD, H311], [M311]),
]


@pytest.fixture
def matrix(tmp_path):
    shutil.copytree(ROOT / "dockerfiles", tmp_path / "dockerfiles", ignore=shutil.ignore_patterns("generated"))
    shutil.copytree(ROOT / "pip-requirements", tmp_path / "pip-requirements")
    (tmp_path / "matrix.toml").write_text(MINIMAL)
    return load_matrix(tmp_path / "matrix.toml")


@pytest.mark.parametrize("patterns,chosen,parents", RULE, ids=[" ".join(r[0]) for r in RULE])
def test_one_rule_parents_only_where_the_task_needs_them(matrix, patterns, chosen, parents):
    without = [c.ref for c in select_cells(matrix, "offline", patterns, with_parents=False)]
    assert sorted(without) == sorted(chosen)
    with_parents = [c.ref for c in select_cells(matrix, "offline", patterns, with_parents=True)]
    assert sorted(with_parents) == sorted(chosen + parents)
    order = {ref: i for i, ref in enumerate(with_parents)}
    assert all(order[c.parent_ref()] < order[c.ref] for c in matrix.cells("offline") if c.ref in order and
               c.parent_ref() in order), "parents come first"


def test_no_pattern_means_every_cell_and_each_pattern_must_match(matrix):
    assert select_cells(matrix, "offline", [], with_parents=False) == matrix.cells("offline")
    with pytest.raises(SelectionError, match=r"--only 'mpi5py' matches no cell of profile 'offline'"):
        select_cells(matrix, "offline", ["mpi4py", "mpi5py"], with_parents=False)


TASKS = [["build", "--dry-run"], ["check"], ["convert"], ["bench"]]


@pytest.mark.parametrize("task", TASKS, ids=[t[0] for t in TASKS])
def test_every_task_refuses_a_pattern_that_matches_nothing_the_same_way(task, tmp_path):
    # the selection is checked before any engine is contacted: the same message everywhere, no traceback
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "invoke", *task, "--profile", "ci", "--only", "mpi5py*"],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: --only 'mpi5py*' matches no cell of profile 'ci'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_every_task_help_states_the_rule():
    for task in ("build", "check", "convert", "bench"):
        proc = subprocess.run([sys.executable, "-m", "invoke", "--help", task], cwd=ROOT, capture_output=True,
                              text=True, check=False)
        text = " ".join(proc.stdout.split())
        assert proc.returncode == 0 and "glob on family:tag or on the family name" in text, proc.stdout


@pytest.mark.integration
def test_build_check_and_convert_choose_the_same_cells(ci_built):
    """The real tasks with one pattern: build plans the cells and the images they need (parents, the image an HDF5 is
    compiled in), check and convert take the cells.
    The pattern is h5py-mpi's: its .sif files are the ones the convert and Slurm tests make anyway (up to date here)."""
    m = load_matrix(ROOT / "matrix.toml")
    child = next(c for c in m.cells("ci") if c.family.name == "h5py-mpi")
    pattern = child.family.name

    def invoke(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "invoke", *args, "--profile", "ci", "--only", pattern],
                              cwd=ROOT, capture_output=True, text=True, check=False, timeout=1800)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
        return proc.stdout

    def named(text: str) -> set[str]:
        return {c.ref for c in m.cells("ci") if c.ref in text or c.image("hpcimages") in text}

    chosen = select_cells(m, "ci", [pattern], with_parents=False)
    expected = {c.ref for c in chosen}
    parents = {ref for c in chosen for ref in m.build_needs("ci", c)}  # and the image an HDF5 is compiled in
    assert child.ref in expected and len(expected) >= 2 and not parents & expected
    assert named(invoke("build", "--dry-run").split("\n", 1)[1]) == expected | parents
    assert named(invoke("check")) == expected
    assert named(invoke("convert")) == expected


@pytest.mark.parametrize("args,message", [
    (["build", "--profile", "ci", "--dry-run", "--jobs", "abc"], "--jobs 'abc': a whole number from 1 to 64"),
    (["build", "--profile", "ci", "--dry-run", "--jobs", "0"], "--jobs 0: must be from 1 to 64"),
    (["build", "--profile", "ci", "--dry-run", "--jobs", "-1"], "--jobs -1: must be from 1 to 64"),
    (["check", "--profile", "ci", "--jobs", "two"], "--jobs 'two': a whole number from 1 to 64"),
    (["check", "--profile", "ci", "--jobs", "0"], "--jobs 0: must be from 1 to 64"),
    (["bench", "--repeats", "x"], "--repeats 'x': a whole number from 1 to 1000"),
    (["bench", "--sizes", "osu_bw=5:1"], "--sizes osu_bw='5:1': osu_bw needs 1 <= MIN <= MAX"),
    (["collect", "--timeout", "-5"], "--timeout -5: must be from 0 to 604800"),
    (["registry", "--port", "http"], "--port 'http': a whole number from 1024 to 65535"),
    (["registry", "--port", "80"], "--port 80: must be from 1024 to 65535"),
    (["abi", "--repeats", "-1"], "--repeats -1: must be from 0 to 50"),
    (["abi", "--test-timeout", "1"], "--test-timeout 1: must be from 5 to 3600"),
    (["abi", "--suite-timeout", "ten"], "--suite-timeout 'ten': a whole number from 30 to 7200"),
])
def test_numeric_options_get_one_clear_error(args, message, tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 2 and f"error: {message}" in proc.stderr, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_build_all_beside_only_is_a_contradiction_not_a_silent_choice(tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--all", "--only", "mpi4py", "--profile", "ci",
                           "--dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: --all builds every cell of the profile, --only mpi4py chooses some" in proc.stderr
    alone = subprocess.run([sys.executable, "-m", "invoke", "build", "--all", "--profile", "ci", "--dry-run"],
                           cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert alone.returncode == 0 and "mpi4py:py3.11-mpich4.3.2" in alone.stdout, alone.stdout + alone.stderr


def _help(task: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "invoke", "--help", task], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_bench_help_names_every_benchmark_it_runs_by_default():
    from hpcimages.measure.bench import BENCHMARKS

    text = "".join(_help("bench").split())
    assert f"default:allof{','.join(BENCHMARKS)}" in text, text


def test_help_shows_every_option_with_its_value_and_no_stray_short_flag():
    assert "--, " not in _help("submit") and "--no-sharens" in _help("submit")
    lock = " ".join(_help("lock").split())
    assert "--only TEXT: compile only locks" in lock, lock
    build = " ".join(_help("build").split())
    assert "--only GLOB: only cells matching" in build, build

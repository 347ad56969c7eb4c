"""Locks: complete, hashed, consistent with their parents, and drift-checked."""

from __future__ import annotations

import http.server
import sys
import threading
from pathlib import Path

from hpcimages.define import load_matrix
from hpcimages.define.lock import compile_lock, lock_drift, lock_jobs, locked_pins

ROOT = Path(__file__).resolve().parent.parent


def test_committed_locks_match_their_inputs():
    assert lock_drift(load_matrix(ROOT / "matrix.toml")) == []


def test_every_pin_is_hashed_and_the_header_says_how_to_regenerate():
    m = load_matrix(ROOT / "matrix.toml")
    for job in lock_jobs(m):
        text = (ROOT / job.output).read_text()
        assert text.startswith("# GENERATED FILE - DO NOT EDIT. Regenerate with `invoke lock`.")
        blocks = [b for b in text.split("\n") if "==" in b and not b.startswith("#")]
        assert blocks, job.output
        for line in blocks:
            assert line.rstrip().endswith("\\"), f"{job.output}: {line} has no --hash"


def test_child_locks_keep_the_parent_pins():
    m = load_matrix(ROOT / "matrix.toml")
    for job in lock_jobs(m):
        if job.constraint:
            parent, child = locked_pins(ROOT / job.constraint), locked_pins(ROOT / job.output)
            shared = set(parent) & set(child)
            # the constraint is a lock of the same target Python (a family need not pin numpy to have a parent)
            assert f"py{job.python}" in job.constraint and f"py{job.python}" in job.output, job.output
            assert {p: child[p] for p in shared} == {p: parent[p] for p in shared}, job.output


def test_locks_are_resolved_for_the_target_python():
    pins311 = locked_pins(ROOT / "pip-requirements/mpi4py/requirements-py3.11.txt")
    assert pins311["mpi4py"] == "4.1.2"
    header = (ROOT / "pip-requirements/mpi4py/requirements-py3.13.txt").read_text().splitlines()[1]
    assert "for Python 3.13" in header


def test_cuda_locks_pin_the_cells_cuda_version():
    pins = locked_pins(ROOT / "pip-requirements/cuda-python/requirements-py3.11-cuda12.6.txt")
    assert pins["nvidia-cuda-nvcc-cu12"].startswith("12.6.")
    pins = locked_pins(ROOT / "pip-requirements/cuda-python/requirements-py3.11-cuda12.8.txt")
    assert pins["nvidia-cuda-runtime-cu12"].startswith("12.8.")


def test_changed_requirements_in_is_drift_and_a_real_compile_fixes_it(repo_copy):
    req = repo_copy / "pip-requirements/mpi4py/requirements.in"
    req.write_text(req.read_text() + "# a comment changes the input too\n")
    m = load_matrix(repo_copy / "matrix.toml")
    stale = lock_drift(m)
    assert any("mpi4py/requirements-py3.11.txt" in p for p in stale)
    # children are constrained by the parent lock: they are stale only once it changes
    job = next(j for j in lock_jobs(m) if j.output.endswith("mpi4py/requirements-py3.11.txt"))
    compile_lock(job, repo_copy)  # real uv run against the package index
    assert not any(p.startswith("pip-requirements/mpi4py/requirements-py3.11.txt") for p in lock_drift(m))
    assert locked_pins(repo_copy / job.output)["mpi4py"] == "4.1.2"


def test_a_lock_edited_by_hand_is_flagged_itself_not_only_its_children(repo_copy):
    m = load_matrix(repo_copy / "matrix.toml")
    assert lock_drift(m) == []
    lock = repo_copy / "pip-requirements/mpi/mpich-4.3.2.txt"
    text = lock.read_text()
    first_hash = text.split("--hash=sha256:")[1][:64]
    lock.write_text(text.replace(first_hash, "0" * 64, 1))
    problems = lock_drift(m)
    assert [p for p in problems if p.startswith("pip-requirements/mpi/mpich-4.3.2.txt: its content differs")]


def test_a_lock_for_a_python_this_machine_lacks_downloads_no_interpreter(repo_copy, tmp_path, monkeypatch):
    """uv, finding no interpreter of the lock's Python, would fetch one (and offline wait on its retries): every
    fetch of a managed Python goes to a local mirror that counts them, and the lock is written without any."""
    asked: list[str] = []

    class Mirror(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        # the project's venv alone on PATH: its Python is the only interpreter uv can find
        monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
        monkeypatch.setenv("UV_PYTHON_INSTALL_MIRROR", f"http://127.0.0.1:{server.server_port}")
        monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "managed-pythons"))
        m = load_matrix(repo_copy / "matrix.toml")
        other = "3.13" if sys.version_info[:2] != (3, 13) else "3.11"
        job = next(j for j in lock_jobs(m) if j.output.endswith(f"mpi4py/requirements-py{other}.txt"))
        compile_lock(job, repo_copy)
    finally:
        server.shutdown()
    assert asked == []
    assert locked_pins(repo_copy / job.output)["mpi4py"] == "4.1.2"

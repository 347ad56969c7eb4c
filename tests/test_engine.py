"""No engine: one clear error that says how to get one (a real unreachable socket, no mock)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hpcimages.engine import connect
from hpcimages.errors import EngineError

ROOT = Path(__file__).resolve().parent.parent


def test_unreachable_engine_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(EngineError, match=r"cannot reach a Docker engine.*start one first"):
        connect()


@pytest.mark.parametrize("address", ["tcp://host:notaport", "tcp://[::1", "tcp://"])
def test_a_malformed_engine_address_is_named_and_build_dry_run_still_plans(address, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", address)
    with pytest.raises(EngineError, match=r"DOCKER_HOST|cannot reach a Docker engine"):
        connect(ping_timeout=2)
    env = {"DOCKER_HOST": address, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--profile", "ci", "--dry-run"], cwd=ROOT,
                          env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "no Docker engine answered" in proc.stdout, proc.stdout


def test_build_without_engine_exits_2_without_traceback(tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "invoke", "build", "--profile", "ci"], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error: cannot reach a Docker engine" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_an_engine_that_never_answers_is_an_error_not_a_hang(tmp_path, monkeypatch):
    import socket

    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # accepts connections, never answers
    server.bind(str(tmp_path / "silent.sock"))
    server.listen(5)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/silent.sock")
    try:
        with pytest.raises(EngineError, match=r"did not answer within 2s"):
            connect(ping_timeout=2)
    finally:
        server.close()

"""files.held: the lock that lets two processes (two shells running `invoke abi` and `invoke bench`) share one
stand-in cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from hpcimages.files import held

TRY_LOCK = """
import fcntl, sys
with open(sys.argv[1], "a") as handle:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(3)
"""


def other_process_gets(lock: Path) -> bool:
    proc = subprocess.run([sys.executable, "-c", TRY_LOCK, str(lock)], check=False, timeout=60)
    assert proc.returncode in (0, 3)
    return proc.returncode == 0


def test_a_held_lock_keeps_another_process_out_until_the_block_ends(tmp_path):
    lock = tmp_path / "folder" / "build.lock"
    with held(lock):
        assert lock.is_file() and not other_process_gets(lock)
    assert other_process_gets(lock)


def test_a_block_that_raises_lets_the_lock_go(tmp_path):
    lock = tmp_path / "build.lock"
    try:
        with held(lock):
            raise RuntimeError("the build failed")
    except RuntimeError:
        pass
    assert other_process_gets(lock)

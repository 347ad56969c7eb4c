"""The code stays ruff-clean (the same check as `nox -s lint`). Skipped where ruff is not installed (it is part of
the [test] extra, so `nox -s tests` and CI always have it); `nox -s lint` runs it alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]'); `nox -s lint` installs it")
    proc = subprocess.run([ruff, "check", "src", "tests", "bench", "tasks.py", "noxfile.py"], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

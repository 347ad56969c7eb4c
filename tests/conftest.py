from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def repo_copy(tmp_path: Path) -> Path:
    """A copy of the parts of the repository the tool reads: matrix, templates, generated files, locks."""
    for name in ("matrix.toml",):
        shutil.copy(ROOT / name, tmp_path / name)
    for folder in ("dockerfiles", "pip-requirements"):
        shutil.copytree(ROOT / folder, tmp_path / folder)
    return tmp_path

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


@pytest.fixture(scope="session")
def ci_built():
    """(engine client, matrix) once the `ci` profile is built: what every integration test starts from."""
    from hpcimages.bases import ensure_bases
    from hpcimages.build import build
    from hpcimages.engine import connect
    from hpcimages.matrix import load_matrix

    client = connect()
    matrix = load_matrix(ROOT / "matrix.toml")
    ensure_bases(client, matrix.profile("ci"))
    report = build(client, matrix, "ci", jobs=2)
    assert report.ok, report.table()
    return client, matrix

"""Stage 1, define: the matrix (and the --only rule), templates, generated files, locks, and site profiles."""

from __future__ import annotations

from pathlib import Path

from .matrix import Matrix, read_matrix
from .templates import check_templates


def load_matrix(path: str | Path) -> Matrix:
    """Read the matrix file and check it against the templates: every error names the file and the key."""
    matrix = read_matrix(path)
    check_templates(matrix)
    return matrix

"""Render every cell's Dockerfile into ``dockerfiles/generated/<family>/<tag>/`` and detect drift."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from ..files import write_text
from .matrix import Cell, Matrix
from .singularity import recipe
from .templates import render_cell

GENERATED = Path("dockerfiles") / "generated"


RECIPE_HEADER = """GENERATED FILE - DO NOT EDIT.
Converted by `invoke render` with spython from the Dockerfile beside it (plus fixes for spython's known
defects, see src/hpcimages/define/singularity.py); `nox -s render_check` fails when it differs from a fresh render.
Build from the repository root:  apptainer build x.sif dockerfiles/generated/{family}/{tag}/Singularity.def
Offline:  --build-arg BOOTSTRAP=docker-archive --build-arg FROM=<image.tar> --build-arg WHEELHOUSE=<url>
(a recipe with an mpi-build or hdf5-build stage also takes MPI_BUILD_IMAGE or HDF5_BUILD_IMAGE=<image.tar>
and MPI_SOURCE_URL or HDF5_SOURCE_URL=<tarball url>)"""


def dockerfile_path(matrix: Matrix, cell: Cell) -> Path:
    return matrix.root / GENERATED / cell.family.name / cell.tag / "Dockerfile"


def recipe_path(matrix: Matrix, cell: Cell) -> Path:
    return dockerfile_path(matrix, cell).with_name("Singularity.def")


def singularity_recipe(cell: Cell, dockerfile_text: str) -> str:
    return recipe(dockerfile_text, RECIPE_HEADER.format(family=cell.family.name, tag=cell.tag))


def expected_files(matrix: Matrix) -> dict[Path, str]:
    """Every generated file and the text a fresh render gives it."""
    files = {}
    for cell in matrix.all_cells:
        text = render_cell(matrix, cell).text
        files[dockerfile_path(matrix, cell)] = text
        files[recipe_path(matrix, cell)] = singularity_recipe(cell, text)
    return files


@dataclass
class RenderResult:
    written: list[Path]
    unchanged: list[Path]
    removed: list[Path]


def render_all(matrix: Matrix) -> RenderResult:
    """Write what changed, remove generated files of cells that left the matrix."""
    expected = expected_files(matrix)
    result = RenderResult([], [], [])
    for path, text in expected.items():
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            result.unchanged.append(path)
            continue
        write_text(path, text)
        result.written.append(path)
    for stale in _generated_files(matrix):
        if stale not in expected:
            stale.unlink()
            result.removed.append(stale)
            _remove_empty_parents(stale.parent, matrix.root / GENERATED)
    return result


def drift(matrix: Matrix) -> list[str]:
    """Human-readable differences between the committed files and a fresh render (empty: in sync)."""
    problems = []
    expected = expected_files(matrix)
    for path, text in expected.items():
        rel = path.relative_to(matrix.root)
        if not path.is_file():
            problems.append(f"{rel}: missing (run `invoke render`)")
            continue
        current = path.read_text(encoding="utf-8")
        if current != text:
            diff = "".join(difflib.unified_diff(current.splitlines(True), text.splitlines(True),
                                                f"{rel} (committed)", f"{rel} (fresh render)", n=1))
            problems.append(f"{rel}: differs from a fresh render (run `invoke render`):\n{diff}")
    for path in _generated_files(matrix):
        if path not in expected:
            problems.append(f"{path.relative_to(matrix.root)}: no cell of the matrix renders it (run `invoke render`)")
    return problems


def _generated_files(matrix: Matrix) -> list[Path]:
    root = matrix.root / GENERATED
    if not root.is_dir():
        return []
    return sorted([*root.glob("*/*/Dockerfile"), *root.glob("*/*/Singularity.def")])


def _remove_empty_parents(folder: Path, stop: Path) -> None:
    while folder != stop and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent

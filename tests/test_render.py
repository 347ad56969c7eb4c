"""Rendering: committed files equal a fresh render, drift is detected, output is exact."""

from __future__ import annotations

from pathlib import Path

from hpcimages.define import load_matrix
from hpcimages.define.render import dockerfile_path, drift, render_all
from hpcimages.define.templates import render_cell

ROOT = Path(__file__).resolve().parent.parent


def test_committed_dockerfiles_match_a_fresh_render():
    assert drift(load_matrix(ROOT / "matrix.toml")) == []


def test_edit_of_a_generated_file_is_drift(repo_copy):
    m = load_matrix(repo_copy / "matrix.toml")
    path = dockerfile_path(m, m.cells("ci")[0])
    path.write_text(path.read_text() + "RUN echo hand-edited\n")
    problems = drift(m)
    assert len(problems) == 1
    assert "differs from a fresh render" in problems[0] and "+" not in problems[0].splitlines()[0]
    assert "-RUN echo hand-edited" in problems[0]


def test_matrix_change_is_drift_until_rendered(repo_copy):
    text = (repo_copy / "matrix.toml").read_text()
    (repo_copy / "matrix.toml").write_text(text.replace('cuda = ["12.6", "12.8"]', 'cuda = ["12.6"]', 1)
                                           .replace('cells = [', 'cuda = ["12.6"]\ncells = [', 1)
                                           .replace("cuda12.8", "cuda12.6"))
    m = load_matrix(repo_copy / "matrix.toml")
    problems = drift(m)
    assert any("no cell of the matrix renders it" in p and "cuda12.8" in p for p in problems)
    result = render_all(m)
    assert result.removed and all("cuda12.8" in str(p) for p in result.removed)
    assert drift(m) == []


def test_rendered_wheel_cell_is_exact():
    m = load_matrix(ROOT / "matrix.toml")
    cell = next(c for c in m.cells("ci") if c.ref == "mpi4py:py3.11-mpich4.3.2")
    text = render_cell(m, cell).text
    lines = text.splitlines()
    assert lines[0] == "# GENERATED FILE - DO NOT EDIT."
    assert "ARG BASE_IMAGE=python:3.11-slim-bookworm" in lines
    assert "FROM ${BASE_IMAGE}" in lines
    assert "COPY pip-requirements/mpi/mpich-4.3.2.txt /usr/local/share/hpcimages/requirements/mpi.txt" in lines
    assert "COPY pip-requirements/mpi4py/requirements-py3.11.txt /usr/local/share/hpcimages/requirements/mpi4py.txt" \
        in lines
    assert "ARG MPI_SOURCE_URL" not in text  # wheel cells download no tarball
    assert text.count("--require-hashes") == 2


def test_rendered_source_cell_checks_the_tarball_before_building():
    m = load_matrix(ROOT / "matrix.toml")
    cell = next(c for c in m.all_cells if c.ref == "mpi4py:py3.11-mpich4.0.2")
    text = render_cell(m, cell).text
    assert "ARG MPI_SOURCE_URL=https://www.mpich.org/static/downloads/4.0.2/mpich-4.0.2.tar.gz" in text
    assert text.index("sha256sum -c") < text.index("./configure")
    options = "--enable-fast=all,O3 --disable-fortran --disable-static --with-device=ch4:ofi"
    assert f'ARG MPI_CONFIGURE_OPTIONS="{options}"' in text


def test_child_starts_from_its_parent_tag():
    m = load_matrix(ROOT / "matrix.toml")
    cell = next(c for c in m.cells("ci") if c.family.name == "hpc-python")
    assert "ARG PARENT_IMAGE=hpcimages/mpi4py:py3.11-mpich4.3.2" in render_cell(m, cell).text

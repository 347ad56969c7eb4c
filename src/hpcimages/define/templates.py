"""Jinja2 templates of the Dockerfiles: what they declare, what they support, and rendering one cell.

A template starts with a front-matter comment that says which axis values it can build::

    {#- hpcimages
    supports.python = ["3.10", "3.11"]
    supports.mpi_name = ["mpich"]
    supports.mpi_method = ["wheel", "source"]
    -#}

The matrix is checked against it (and against the ``ARG`` lines of every rendered cell) before
anything is built.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from ..errors import MatrixError
from ..validate import DOCKERFILE_UNSAFE_RE, UnsafeValue, refuse_unsafe
from .matrix import Cell, Matrix, Profile

FRONT_MATTER_RE = re.compile(r"\{#-?\s*hpcimages\s*\n(.*?)-?#\}", re.S)
ARG_RE = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", re.M)
SUPPORT_KEYS = {"python", "mpi_name", "mpi_method", "mpi_abi", "cuda"}

#: Build args the build step itself passes, by what they are for.
PIP_ARGS = ("PIP_NO_INDEX", "PIP_FIND_LINKS")
SOURCE_ARGS = ("MPI_SOURCE_URL", "MPI_SOURCE_SHA256", "MPI_BUILD_IMAGE")
HDF5_ARGS = ("HDF5_SOURCE_URL", "HDF5_SOURCE_SHA256", "HDF5_BUILD_IMAGE")
#: How a family with ``hdf5`` configures it (the template's, and the bare-metal twin's of the benchmarks): the C
#: library with MPI, shared only, and nothing an image does not need.
HDF5_CONFIGURE_OPTIONS = ("--enable-parallel --enable-shared --disable-static --disable-fortran --disable-cxx "
                          "--disable-java --disable-tests --disable-tools --disable-doxygen")


@dataclass(frozen=True)
class Rendered:
    cell: Cell
    profile: str  # the profile whose values are the ARG defaults
    text: str

    @property
    def declared_args(self) -> set[str]:
        return set(ARG_RE.findall(self.text))


@cache
def _environment(template_dir: Path) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,  # Dockerfiles, not HTML; every value was pattern-checked by the matrix loader
        # and the template guarantees it again: no inserted value may break a line or a quoted ARG/LABEL value
        finalize=lambda value: refuse_unsafe(value, DOCKERFILE_UNSAFE_RE),
    )


def template_supports(matrix: Matrix, template: str) -> dict[str, list[str]]:
    path = matrix.template_dir / template
    match = FRONT_MATTER_RE.search(path.read_text(encoding="utf-8"))
    if not match:
        raise MatrixError(path, "(front matter)",
                          "template has no '{#- hpcimages ... -#}' block saying what it supports")
    try:
        data = tomllib.loads(match.group(1))
    except tomllib.TOMLDecodeError as exc:
        raise MatrixError(path, "(front matter)", f"not valid TOML: {exc}") from None
    supports = data.get("supports", {})
    unknown = set(supports) - SUPPORT_KEYS
    if unknown or set(data) - {"supports"}:
        allowed = ",".join(sorted(SUPPORT_KEYS))
        raise MatrixError(path, "(front matter)", f"unknown keys; allowed: supports.{{{allowed}}}")
    return {k: [str(x) for x in v] for k, v in supports.items()}


def render_profile_of(matrix: Matrix, cell: Cell) -> Profile:
    """The first profile (in file order) that builds the cell: its values become the ARG defaults."""
    for profile in matrix.profiles.values():
        if any(c.ref == cell.ref for c in matrix.cells(profile.name)):
            return profile
    raise MatrixError(matrix.path, "profiles", f"no profile builds {cell.ref}")


def template_context(matrix: Matrix, cell: Cell, profile: Profile) -> dict[str, Any]:
    source = profile.sources.get(cell.mpi.key)
    hdf5 = profile.sources.get(cell.family.hdf5_key or "")
    parent_image = None
    if cell.family.parent is not None:
        parent_ref = cell.parent_ref()
        parent = next(c for c in matrix.cells(profile.name) if c.ref == parent_ref)
        parent_image = parent.image(profile.registry)
    hdf5_builder = matrix.hdf5_builder(profile, cell)
    return {
        "cell": cell,
        "family": cell.family,
        "python": cell.python,
        "mpi": cell.mpi,
        "cuda": cell.cuda,
        "base_image": profile.bases[cell.python].image,
        "mpi_build_image": profile.mpi_build_image,
        "parent_image": parent_image,
        # a `debian:` URL only exists on a machine with a mirror: the build step passes the real one
        "source_url": source.url if source and not source.url.startswith("debian:") else "",
        "source_sha256": source.sha256 if source else "",
        "hdf5": cell.family.hdf5,
        "hdf5_configure": HDF5_CONFIGURE_OPTIONS,
        "hdf5_build_image": hdf5_builder.image(profile.registry) if hdf5_builder else None,
        "hdf5_source_url": hdf5.url if hdf5 and not hdf5.url.startswith("debian:") else "",
        "hdf5_source_sha256": hdf5.sha256 if hdf5 else "",
        "build_args": cell.family.build_args,
        "mpi_lock": cell.mpi_lock,
        "build_lock": cell.build_lock,
        "lock": cell.lock,
    }


def header(matrix: Matrix, cell: Cell, profile: Profile) -> str:
    return (
        "# GENERATED FILE - DO NOT EDIT.\n"
        f"# Rendered from dockerfiles/{cell.family.template} and matrix.toml by `invoke render`;\n"
        "# `nox -s render_check` fails when this file differs from a fresh render.\n"
        f"# Cell {cell.ref}: Python {cell.python}, {cell.mpi.name} {cell.mpi.version} ({cell.mpi.method})"
        f"{f', CUDA {cell.cuda}' if cell.cuda else ''}.\n"
        f"# ARG defaults are the '{profile.name}' profile's; `invoke build --profile P` passes P's values.\n"
        "# Build by hand from the repository root:  docker build -f <this file> .\n"
    )


def render_cell(matrix: Matrix, cell: Cell) -> Rendered:
    profile = render_profile_of(matrix, cell)
    env = _environment(matrix.template_dir)
    try:
        body = env.get_template(cell.family.template).render(**template_context(matrix, cell, profile))
    except (jinja2.TemplateError, UnsafeValue) as exc:
        raise MatrixError(matrix.template_dir / cell.family.template, "(template)",
                          f"cannot render {cell.ref}: {exc}") from None
    return Rendered(cell, profile.name, header(matrix, cell, profile) + body.lstrip("\n"))


def check_templates(matrix: Matrix) -> None:
    """Every cell's axis values are supported by its template; every build arg is a declared ARG."""
    for cell in matrix.all_cells:
        supports = template_supports(matrix, cell.family.template)
        key = f"families.{cell.family.name}"
        for axis, value in (("python", cell.python), ("mpi_name", cell.mpi.name),
                            ("mpi_method", cell.mpi.method), ("mpi_abi", cell.mpi.abi), ("cuda", cell.cuda)):
            if value is None or axis not in supports:
                continue
            if value not in supports[axis]:
                raise MatrixError(matrix.path, key, f"cell {cell.ref}: {axis} {value!r} is not supported by template "
                                  f"{cell.family.template} (supports: {', '.join(supports[axis])})")
        declared = render_cell(matrix, cell).declared_args
        for arg in cell.family.build_args:
            if arg not in declared:
                raise MatrixError(matrix.path, f"{key}.build_args.{arg}",
                                  f"template {cell.family.template} declares no ARG {arg} "
                                  f"(declared: {', '.join(sorted(declared))})")
        needed = set(PIP_ARGS) | ({"BASE_IMAGE"} if cell.family.parent is None else {"PARENT_IMAGE"})
        if cell.mpi.method == "source" and cell.family.parent is None:
            needed |= set(SOURCE_ARGS)
        if cell.family.hdf5:
            needed |= set(HDF5_ARGS)
        missing = needed - declared
        if missing:
            raise MatrixError(matrix.template_dir / cell.family.template, "(ARG)",
                              f"cell {cell.ref}: the build passes {', '.join(sorted(missing))} but the template "
                              "declares no such ARG")

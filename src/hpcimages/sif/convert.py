"""``invoke convert``: Docker images to ``.sif`` files with a real Apptainer, each then run (hello, 1 and 2 ranks).

A cell's ``.sif`` goes to ``<build>/sif/<family>_<tag>.sif``, with a ``.json`` beside it that records the image
id it came from; a ``.sif`` is rebuilt when it is older than its image or comes from another image id. A
half-written ``.sif`` never replaces a good one. ``--from-recipe`` builds from the committed Singularity.def
files instead (``from_recipe``).
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import docker
import docker.errors

from .. import mpirun, parallel, state, tables
from ..define.matrix import Cell, Matrix, Mpi, Profile
from ..define.render import recipe_path
from ..engine import engine_memory, find_image
from ..files import write_json
from ..images import wheelhouse
from ..images.build import fetch_build_sdists, fetch_sources, from_image, mpi_source, source_args
from ..images.check import H5PY_VERIFIED
from ..paths import build_dir
from .apptainer import ConvertError, Runtime, build_recipe, exec_in_sif, scratch_room, tail

Progress = Callable[[str], None]
HELLO = ["python3", "{bench}/hello_mpi4py.py"]
MPIO = ["python3", "{bench}/h5py_mpio.py"]
LAYOUT_TIMEOUT_S = 1800
NO_ROOM = "no space left on device"
RECIPE_GROWTH = 1 << 30
MPI_VERSION_SNIPPET = "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])"


def sif_dir(root: Path) -> Path:
    return build_dir(root) / "sif"


@dataclass
class Conversion:
    name: str
    image: str
    sif: str
    status: str = "pending"  # converted | up to date | not built | failed
    seconds: float = 0.0
    sif_bytes: int | None = None
    image_bytes: int | None = None
    reason: str = ""
    hello: str = ""  # the smoke test: "pass", or why it failed
    source: str = ""  # what Apptainer built from: "oci (zstd layers)", "oci (gzip layers)" or "docker-archive"
    scratch_bytes: int = 0  # the memory file system it unpacked into; 0: the disk


def sif_name(image: str) -> str:
    repo, _, tag = image.rpartition(":")
    return f"{repo.rsplit('/', 1)[-1]}_{tag}.sif"


def is_fresh(sif: Path, image: object) -> bool:
    """The .sif exists, is newer than the image, and records the same image id."""
    meta = sif.with_suffix(".json")
    if not sif.is_file() or not meta.is_file():
        return False
    recorded = (state.cached_object(meta) or {}).get("image_id")
    created = dt.datetime.fromisoformat(image.attrs["Created"][:19]).replace(tzinfo=dt.UTC)  # type: ignore[attr-defined]
    return recorded == image.id and sif.stat().st_mtime >= created.timestamp()  # type: ignore[attr-defined]


def save_image(client: docker.DockerClient, image: str, tar: Path) -> None:
    tar.parent.mkdir(parents=True, exist_ok=True)
    with tar.open("wb") as out:
        for chunk in client.images.get(image).save(named=True):
            out.write(chunk)
    tar.chmod(0o644)


def convert_one(client: docker.DockerClient, runtime: Runtime, image_ref: str, out_dir: Path,
                force: bool = False, cancelled: threading.Event | None = None) -> Conversion:
    sif = out_dir / sif_name(image_ref)
    result = Conversion(image_ref.rsplit("/", 1)[-1], image_ref, str(sif))
    start = time.monotonic()
    image = find_image(client, image_ref)
    if image is None:
        result.status, result.reason = "not built", f"{image_ref} is not built: run `invoke build`"
        return result
    result.image_bytes = image.attrs.get("Size")
    if not force and is_fresh(sif, image):
        result.status, result.sif_bytes = "up to date", sif.stat().st_size
        return result
    work = out_dir / ".work"
    tar = work / f"{sif.stem}.tar"
    layout = work / f"{sif.stem}.oci"
    partial = work / f"{sif.stem}.sif"
    try:
        save_image(client, image_ref, tar)
        seen, mounts = runtime.see(work, "/work", writable=True)
        source, result.source = f"docker-archive://{seen}/{tar.name}", "docker-archive"
        if lay_out(tar, layout, runtime.layer_compression):
            source, result.source = f"oci:{seen}/{layout.name}", f"oci ({runtime.layer_compression} layers)"
            tar.unlink()
        if cancelled is not None and cancelled.is_set():  # Ctrl-C while it was saved: build nothing
            raise ConvertError("interrupted (Ctrl-C) before its build")
        if runtime.memory_scratch:
            result.scratch_bytes = scratch_room(result.image_bytes, engine_memory(client))
        code, output, too_little = in_memory_or_on_disk(
            lambda room: runtime.build_sif(source, f"{seen}/{partial.name}", mounts, scratch_bytes=room),
            result.scratch_bytes)
        if too_little:
            result.reason = f"{tables.size(result.scratch_bytes)} of memory was too little: unpacked on disk instead"
            result.scratch_bytes = 0
        if code != 0 or not partial.is_file():
            raise ConvertError(f"apptainer build failed (exit {code}): {tail(output)}")
        partial.replace(sif)
        write_json(sif.with_suffix(".json"), {"image": image_ref, "image_id": image.id, "runtime": runtime.name})
        result.status, result.sif_bytes = "converted", sif.stat().st_size
    except (ConvertError, docker.errors.APIError, OSError) as exc:
        result.status, result.reason = "failed", str(exc)
        partial.unlink(missing_ok=True)
    finally:
        tar.unlink(missing_ok=True)
        shutil.rmtree(layout, ignore_errors=True)
        result.seconds = time.monotonic() - start
    return result


def in_memory_or_on_disk(build: Callable[[int], tuple[int, str]], room: int) -> tuple[int, str, bool]:
    """``build(room)``, and where it ran out of that memory (an image bigger unpacked than its size said, a stage
    that compiled more), ``build(0)`` again on disk: (exit status, output, whether the memory was too little)."""
    code, output = build(room)
    if code != 0 and room and NO_ROOM in output.lower():
        code, output = build(0)
        return code, output, True
    return code, output, False


def lay_out(archive: Path, layout: Path, compression: str) -> bool:
    """The saved image as an OCI layout whose layers skopeo compressed (``compression``, at level 1), which
    Apptainer then copies as they are; False, and the archive stays the source, where skopeo is not installed.

    Apptainer compresses a docker-archive's layers itself, with one core, before unpacking them. Measured on two
    cores, both unpacked in memory: a 281 MB image converted in 14 s this way against 22 s from the archive, a
    997 MB one in 47 s against 78 s (docs/apptainer.md, bench/convert_paths.py)."""
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        return False
    shutil.rmtree(layout, ignore_errors=True)
    # --insecure-policy: the source is the engine's own save of the image, made a moment ago; no signature to ask
    command = [skopeo, "--insecure-policy", "copy", "-q", "--dest-compress-format", compression,
               "--dest-compress-level", "1", f"docker-archive:{archive}", f"oci:{layout}"]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=LAYOUT_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise ConvertError(f"skopeo did not lay out {archive.name} in {LAYOUT_TIMEOUT_S}s") from None
    if proc.returncode != 0:
        raise ConvertError(f"skopeo could not lay out {archive.name} (exit {proc.returncode}): {tail(proc.stderr)}")
    for path in (layout, *layout.rglob("*")):  # the containerised Apptainer reads it as another user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return True


def conversions_at_once(runtime: Runtime, jobs: int) -> int:
    """``jobs`` where each conversion runs in a container of its own; one at a time with a host runtime, whose
    image cache concurrent builds would share."""
    return jobs if runtime.concurrent else 1


def convert(client: docker.DockerClient, runtime: Runtime, images: list[str], out_dir: Path,
            progress: Progress = print, force: bool = False, jobs: int = 1,
            then: Callable[[int, Conversion], None] | None = None) -> list[Conversion]:
    """Each image to its .sif, up to ``jobs`` at once (conversions_at_once; each in its own work files: one
    conversion's `docker save` and unpacking wait on the disk while another's squash keeps the cores busy). A
    Ctrl-C stops the conversions in flight (their containers are killed, no partial .sif is kept) and is raised.
    ``then(i, result)``: run on each result (``i`` from 0) as soon as its conversion ended, beside the others (the
    smoke tests: a run waits on its containers while another conversion squashes)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    said = threading.Lock()
    cancelled = threading.Event()

    def one(i: int, image: str) -> Conversion:
        with said:
            progress(f"[{i}/{len(images)}] {image} -> {out_dir / sif_name(image)} ({runtime.name}) ...")
        result = convert_one(client, runtime, image, out_dir, force=force, cancelled=cancelled)
        detail = result.reason if result.status == "failed" else f"{result.seconds:.1f}s"
        with said:
            progress(f"[{i}/{len(images)}] {image}: {result.status} ({detail})")
        if then is not None:
            then(i - 1, result)
        return result

    def stop() -> None:
        cancelled.set()  # a conversion between its save and its build builds nothing
        runtime.stop_all()

    results = parallel.run_numbered(one, images, conversions_at_once(runtime, jobs), stop, name="convert")
    write_json(out_dir / "convert-report.json", [asdict(r) for r in results])
    return results


def hello_test(runtime: Runtime, result: Conversion, bench: Path, mpi: Mpi | None = None) -> tuple[bool, bool]:
    """1 rank with `exec -e`, and 2 ranks launched outside the container; a failure fails the conversion. An Open
    MPI image's ranks start under its own mpirun inside the container: the launcher outside is MPICH's, whose ranks
    an Open MPI library would take for two singletons (under Slurm the site's own mpirun starts them instead:
    slurm.launch_line)."""
    sif = Path(result.sif)
    one = exec_in_sif(runtime, sif, HELLO, bench)
    two = two_ranks_in_sif(runtime, sif, HELLO, bench, mpi)
    ok1 = one[0] == 0 and "process 0 of 1" in one[1]
    ok2 = two[0] == 0 and "process 0 of 2" in two[1] and "process 1 of 2" in two[1]
    if not (ok1 and ok2):
        result.status = "failed"
        result.reason = "hello test failed: " + tail((one[1] if not ok1 else "") + (two[1] if not ok2 else ""))
    return ok1, ok2


def two_ranks_in_sif(runtime: Runtime, sif: Path, argv: list[str], bench: Path, mpi: Mpi | None) -> tuple[int, str]:
    """2 ranks of ``argv`` in the .sif: started by the launcher outside, or for an Open MPI image by its own
    mpirun inside (see hello_test)."""
    if mpi is not None and mpi.abi == "openmpi":
        settings = mpirun.image_mpi(mpi.abi, mpi.version).container_env()
        return exec_in_sif(runtime, sif, ["mpirun", "-n", "2", *argv], bench, env=settings)
    return exec_in_sif(runtime, sif, argv, bench, ranks=2)


def mpio_test(runtime: Runtime, sif: Path, bench: Path, mpi: Mpi | None) -> tuple[bool, str]:
    """2 ranks write a dataset collectively with h5py's driver='mpio', reopen it and verify every element (an image of
    a family with a parallel HDF5)."""
    code, out = two_ranks_in_sif(runtime, sif, [*MPIO, "--rows", "64", "--cols", "16"], bench, mpi)
    ok = code == 0 and "2 rank(s) wrote" in out and H5PY_VERIFIED in out
    return ok, "" if ok else f"mpio test failed (exit {code}): {tail(out)}"


def table(results: list[Conversion]) -> str:
    rows = [[r.image, r.status, f"{r.seconds:.1f}s", tables.size(r.image_bytes), tables.size(r.sif_bytes),
             Path(r.sif).name if r.status in ("converted", "up to date") else r.reason[:90]] for r in results]
    return tables.terminal(rows, ["image", "status", "time", "image size", "sif size", "sif / reason"])


def stage_images(matrix: Matrix, profile: Profile, cell: Cell) -> dict[str, str]:
    """The images a cell's build stages start from, by the build arg naming each: the profile's MPI build image for
    a source MPI's stages, the image an HDF5 is compiled in (the cell's parent, often: from_recipe saves an image
    once)."""
    stages = {}
    if mpi_source(profile, cell) is not None:
        stages["MPI_BUILD_IMAGE"] = profile.mpi_build_image
    builder = matrix.hdf5_builder(profile, cell)
    if builder is not None:
        stages["HDF5_BUILD_IMAGE"] = builder.image(profile.registry)
    return stages


def from_recipe(client: docker.DockerClient, runtime: Runtime, matrix: Matrix, profile: Profile, cell: Cell,
                progress: Progress = print) -> bool:
    """Build one cell's .sif from its committed Singularity.def (FROM the local image of its base or parent,
    wheels and tarballs served from the wheelhouse), then check its MPI version inside."""
    out_dir = sif_dir(matrix.root) / "from-recipe"
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = wheelhouse.cache_root()
    for lock in filter(None, (cell.mpi_lock, cell.lock, cell.build_lock)):
        wheelhouse.download_wheels(matrix.root / lock, cell.python, cache)
    fetch_build_sdists(matrix, cell, cache)
    fetch_sources(profile, cell, cache)
    _, base = from_image(matrix, profile, cell)
    sif = out_dir / sif_name(cell.image(profile.registry))
    recipe = recipe_path(matrix, cell)
    progress(f"apptainer build {sif.name} from {recipe.relative_to(matrix.root)} (FROM {base})")
    start = time.monotonic()
    archive = out_dir / ".work" / f"{sif.stem}-from.tar"
    save_image(client, base, archive)
    stages = stage_images(matrix, profile, cell)
    archives = {name: archive if image == base else archive.with_name(f"{sif.stem}-{name.lower()}.tar")
                for name, image in stages.items()}
    sources = {archive, *archives.values()}
    try:
        for name, image in stages.items():  # the recipe's build stages bootstrap from archives too
            if archives[name] != archive:
                save_image(client, image, archives[name])
        bootstrap = "docker-archive"
        if all([lay_out(path, path.with_suffix(".oci"), runtime.layer_compression) for path in sources]):
            bootstrap = "oci"  # as convert_one: Apptainer copies the layers instead of compressing them
            archive, archives = archive.with_suffix(".oci"), {k: v.with_suffix(".oci") for k, v in archives.items()}
        # each stage unpacks its own image, and a build stage grows by what it compiles (an HDF5 tree)
        sizes = [client.images.get(image).attrs.get("Size") or 0 for image in (base, *stages.values())]
        room = scratch_room(sum(sizes) + RECIPE_GROWTH, engine_memory(client)) if runtime.memory_scratch else 0
        progress(f"  bootstrap: {bootstrap}; unpacked {f'in {tables.size(room)} of memory' if room else 'on disk'}")
        with wheelhouse.serve(cache) as served:
            args = {**cell.family.build_args, **source_args(profile, cell, served),
                    "WHEELHOUSE": f"{served}/wheelhouse/", "BOOTSTRAP": bootstrap}
            code, output, too_little = in_memory_or_on_disk(
                lambda scratch: build_recipe(runtime, matrix.root, recipe, archive, sif, args, archives, scratch),
                room)
            if too_little:
                progress(f"  {tables.size(room)} of memory was too little: built on disk instead")
    finally:
        for path in sources:
            path.unlink(missing_ok=True)
            shutil.rmtree(path.with_suffix(".oci"), ignore_errors=True)
    if code != 0:
        progress(f"  FAILED (exit {code}): {tail(output)}")
        return False
    code, output = exec_in_sif(runtime, sif, ["python3", "-c", MPI_VERSION_SNIPPET + "; print('ABI', "
                                              "getattr(MPI, 'Get_abi_version', lambda: (-1, -1))())"],
                               matrix.root / "bench")
    banner = f"Open MPI v{cell.mpi.version}," if cell.mpi.abi == "openmpi" else \
        f"MPICH Version:      {cell.mpi.version}"
    ok = code == 0 and banner in output
    if cell.mpi.abi == "mpi":  # mpi4py must have been compiled for the standard ABI, not taken from PyPI
        ok = ok and "ABI (1, 0)" in output
    if ok and cell.family.hdf5:  # h5py must write in parallel through the HDF5 the recipe compiled
        ok, output = mpio_test(runtime, sif, matrix.root / "bench", cell.mpi)
    progress(f"  built in {time.monotonic() - start:.0f}s, {tables.size(sif.stat().st_size)}; smoke test: "
             f"{'pass' if ok else 'FAIL ' + tail(output)}")
    return ok

"""Apptainer runtimes: where ``apptainer`` runs, and how a ``.sif`` is run.

Two runtimes, one interface:

* a host ``apptainer`` (or ``singularity``) on PATH; it builds through spython's client with streamed output
  (spython's non-streamed build returns None on failure, so it is never trusted blindly);
* the containerised Apptainer of the tools image (tools.py), run unprivileged with the security options it
  needs, when the host has none.

A runtime says how it sees a host path (``see``): the host runtime uses the path itself, the containerised one
mounts it. Callers never ask which runtime they have.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors

from .. import engine, mpirun
from ..engine import Mount
from ..errors import HpcImagesError, output_tail
from . import tools

Progress = Callable[[str], None]
NO_RUNTIME = ("no Apptainer/Singularity runtime: either install one on this machine (`apptainer` or `singularity` "
              "on PATH; Debian packages it in sid), or start a Docker engine (`bash scripts/setup.sh`) so that "
              "hpcimages runs its containerised Apptainer")
#: Unprivileged ranks live in separate user namespaces: UCX must not open /proc/<pid>/fd of the other rank
#: (hybrid model with Debian's or the wheel's MPICH, whose shared memory goes through UCX).
MPI_ENV_IN_CONTAINER = {"UCX_POSIX_USE_PROC_LINK": "n"}
MPI_ENV = {f"APPTAINERENV_{k}": v for k, v in MPI_ENV_IN_CONTAINER.items()}


class ConvertError(HpcImagesError):
    """A conversion or an Apptainer run failed."""


#: mksquashfs's gzip at level 6 instead of its default 9. Measured on the 992 MB root file system of a cuda-python
#: cell (2 cores): 18 s against 51 s for a 0.5 % larger image (level 3: 9 s, 6 % larger), and a whole conversion
#: 53 s against 100 s. Still gzip, so every runtime and kernel that reads a .sif reads it.
SQUASHFS_ARGS = ("--mksquashfs-args", "-Xcompression-level 6")

#: where a containerised build unpacks its image when the engine's machine has the memory (scratch_room)
SCRATCH = "/scratch"
SCRATCH_ENV = {"APPTAINER_TMPDIR": SCRATCH, "APPTAINER_CACHEDIR": f"{SCRATCH}/cache"}
#: a conversion holds the image's layers twice (compressed in the cache, unpacked in the root file system), plus
#: Apptainer's own files; one may take at most this share of the machine's memory, so two at once leave it half
SCRATCH_SHARE = 4
SCRATCH_SLACK = 512 << 20


def scratch_room(image_bytes: int | None, memory_bytes: int | None) -> int:
    """Bytes of memory file system for converting an image of ``image_bytes`` on a machine with ``memory_bytes``
    of memory; 0 (the container's disk) when either is unknown or the room would exceed its share."""
    if not image_bytes or not memory_bytes:
        return 0
    room = 2 * image_bytes + SCRATCH_SLACK
    return room if room <= memory_bytes // SCRATCH_SHARE else 0


class Runtime:
    name = "runtime"
    #: builds may run at once: each in a container of its own (a host runtime's builds share its image cache)
    concurrent = False
    #: how the layers of an image given to `build_sif` as an OCI layout are compressed: gzip, which every Apptainer
    #: and Singularity unpacks
    layer_compression = "gzip"
    #: build_sif can unpack into a memory file system (scratch_bytes)
    memory_scratch = False

    def run(self, command: list[str], mounts: Iterable[Mount] = (), env: dict[str, str] | None = None,
            network: bool = False, workdir: str | None = None, timeout: int = 3600) -> tuple[int, str]:
        raise NotImplementedError

    def see(self, host: Path, inside: str, writable: bool = False) -> tuple[str, list[Mount]]:
        """How this runtime's commands name a host directory, and the mounts that make it so."""
        raise NotImplementedError

    def build_sif(self, source: str, out: str, mounts: list[Mount], scratch_bytes: int = 0) -> tuple[int, str]:
        """`apptainer build` of ``source`` (e.g. docker-archive://...) into ``out``, both as the runtime sees them.
        ``scratch_bytes``: room in memory for unpacking the image, where the runtime can give it (scratch_room)."""
        return self.run(["apptainer", "build", "--force", *self.squashfs_args(), out, source], mounts)

    def squashfs_args(self) -> tuple[str, ...]:
        """SQUASHFS_ARGS where the runtime takes them (the tools image's Apptainer does)."""
        return SQUASHFS_ARGS

    def in_memory(self, scratch_bytes: int) -> dict[str, Any]:
        """``run``'s options that put a build's temporary folder and image cache on a memory file system of
        ``scratch_bytes`` (memory_scratch runtimes; none where 0)."""
        return {}

    def stop_all(self) -> None:
        """Stop what this runtime runs for other threads (a concurrent runtime's containers); nothing by default."""


class HostRuntime(Runtime):
    """apptainer/singularity installed on this machine."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.name = f"host {Path(binary).name}"
        self._squashfs_args: tuple[str, ...] | None = None

    def squashfs_args(self) -> tuple[str, ...]:
        """SQUASHFS_ARGS if the runtime that builds has the option (Apptainer 1.x and SingularityCE 3.9 on; an older
        one builds at its own default rather than failing on an unknown flag). spython's build runs `singularity`
        (Apptainer's compatibility name), so that is the one asked, where there is one."""
        if self._squashfs_args is None:
            builder = shutil.which("singularity") or self.binary
            code, out = self.run([builder, "build", "--help"], timeout=60)
            self._squashfs_args = SQUASHFS_ARGS if code == 0 and SQUASHFS_ARGS[0] in out else ()
        return self._squashfs_args

    def run(self, command: list[str], mounts: Iterable[Mount] = (), env: dict[str, str] | None = None,
            network: bool = False, workdir: str | None = None, timeout: int = 3600) -> tuple[int, str]:
        # paths are the host's own: mounts map to themselves
        if command and command[0] in ("apptainer", "singularity"):
            command = [self.binary, *command[1:]]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})},
                                  cwd=workdir, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            return 124, f"timed out after {timeout}s"
        return proc.returncode, proc.stdout + proc.stderr

    def see(self, host: Path, inside: str, writable: bool = False) -> tuple[str, list[Mount]]:
        return str(host), []

    def build_sif(self, source: str, out: str, mounts: list[Mount], scratch_bytes: int = 0) -> tuple[int, str]:
        """spython's client, streamed: the non-streamed call hides failures (it returns None). Its temporary
        folder is the user's (APPTAINER_TMPDIR), not chosen here."""
        from spython.main import Client

        Client.quiet = True
        lines = []
        try:
            stream = Client.build(recipe=source, image=out, build_folder=str(Path(out).parent), sudo=False,
                                  stream=True, force=True, options=["--force", *self.squashfs_args()])
            lines.extend(str(line) for line in stream or [])
        except subprocess.CalledProcessError as exc:  # the streamed build raises on a non-zero exit
            return exc.returncode or 1, "".join(lines) + str(exc)
        return (0 if Path(out).is_file() else 1), "".join(lines)


class ContainerRuntime(Runtime):
    """The tools image's Apptainer, as the unprivileged user `hpc` in a container of the local engine."""

    name = "containerised Apptainer"
    concurrent = True
    #: the tools image's Apptainer (1.4) unpacks zstd, which compresses faster than gzip: a 997 MB image converted
    #: in 47 s against 53 s
    layer_compression = "zstd"
    memory_scratch = True  # the engine mounts it

    def __init__(self, client: docker.DockerClient, image: str) -> None:
        self.client = client
        self.image = image
        # names this runtime's containers, so that a Ctrl-C can stop the ones other threads are waiting on
        self.label = {"io.hpcimages.runtime": f"apptainer-{os.getpid()}-{id(self)}"}

    def run(self, command: list[str], mounts: Iterable[Mount] = (), env: dict[str, str] | None = None,
            network: bool = False, workdir: str | None = None, timeout: int = 3600,
            tmpfs: Mapping[str, str] | None = None) -> tuple[int, str]:
        return engine.run(self.client, self.image, command, timeout=timeout, env=env, mounts=mounts,
                          network="host" if network else "none", workdir=workdir, sandbox=mpirun.APPTAINER,
                          labels=self.label, tmpfs=tmpfs)

    def build_sif(self, source: str, out: str, mounts: list[Mount], scratch_bytes: int = 0) -> tuple[int, str]:
        command = ["apptainer", "build", "--force", *self.squashfs_args(), out, source]
        return self.run(command, mounts, **self.in_memory(scratch_bytes))

    def in_memory(self, scratch_bytes: int) -> dict[str, Any]:
        """Unpacking a 281 MB image in memory took 5 s against 15-21 s on the container's own overlay
        (docs/apptainer.md)."""
        if scratch_bytes <= 0:
            return {}
        # dev and exec: Apptainer warns that a nodev temporary folder can break a build
        return {"env": SCRATCH_ENV, "tmpfs": {SCRATCH: f"rw,exec,dev,nosuid,mode=1777,size={scratch_bytes}"}}

    def stop_all(self) -> None:
        """Kill every container this runtime started that is still running (their runs end, and remove them)."""
        key, value = next(iter(self.label.items()))
        for container in self.client.containers.list(filters={"label": f"{key}={value}"}):
            with contextlib.suppress(docker.errors.APIError):
                container.kill()

    def see(self, host: Path, inside: str, writable: bool = False) -> tuple[str, list[Mount]]:
        if writable:
            os.chmod(host, 0o777)  # the unprivileged user in the container writes here
        return inside, [Mount(host, inside, read_only=not writable)]


def choose_runtime(kind: str, client_factory: Callable[[], docker.DockerClient], root: Path,
                   progress: Progress = print) -> Runtime:
    """`auto`: a host runtime if there is one, else the containerised one; `host` / `container` force it."""
    if kind not in ("auto", "host", "container"):
        raise ConvertError(f"unknown runtime {kind!r}; use auto, host or container")
    if kind in ("auto", "host"):
        binary = shutil.which("apptainer") or shutil.which("singularity")
        if binary:
            return HostRuntime(binary)
        if kind == "host":
            raise ConvertError(NO_RUNTIME)
    try:
        client = client_factory()
    except HpcImagesError as exc:
        raise ConvertError(f"{NO_RUNTIME} ({exc})") from None
    return ContainerRuntime(client, tools.ensure_tools_image(client, root, progress))


def exec_in_sif(runtime: Runtime, sif: Path, command: list[str], bench: Path, ranks: int = 0,
                env: dict[str, str] | None = None, options: Iterable[str] = ()) -> tuple[int, str]:
    """`apptainer exec -e x.sif ...`, or with ranks, `mpiexec -n R apptainer exec x.sif ...` (launcher outside).
    ``{bench}`` in the command names the bench/ directory as the container sees it; ``options`` go to
    `apptainer exec` (e.g. --contain --no-home)."""
    sif_dir, sif_mounts = runtime.see(sif.parent, "/sif")
    bench_path, bench_mounts = runtime.see(bench, mpirun.BENCH_MOUNT)
    mounts = [*sif_mounts, *bench_mounts]
    command = [c.replace("{bench}", bench_path) for c in command]
    sif_path = f"{sif_dir}/{sif.name}"
    if ranks:
        inner = ["apptainer", "exec", "-B", bench_path, sif_path, *command]
        return runtime.run(["mpiexec", "-n", str(ranks), *inner], mounts, env={**MPI_ENV, **(env or {})})
    return runtime.run(["apptainer", "exec", "-e", *options, "-B", bench_path, sif_path, *command], mounts, env=env)


def tail(output: str, lines: int = 4, limit: int = 500) -> str:
    """The end of an Apptainer run's output for a message, without its `gocryptfs not found` notices."""
    return output_tail(output, lines, limit, skip=("gocryptfs",))


def build_recipe(runtime: Runtime, root: Path, recipe: Path, archive: Path, out: Path,
                 args: dict[str, str], stages: Mapping[str, Path] | None = None,
                 scratch_bytes: int = 0) -> tuple[int, str]:
    """`apptainer build` of a committed Singularity.def, bootstrapping from a saved image (docker-archive, or an OCI
    layout where ``args`` say BOOTSTRAP=oci), and its build stages that start from another image (an mpi-build or
    hdf5-build stage) from theirs: ``stages`` maps the build arg that names such an image (MPI_BUILD_IMAGE,
    HDF5_BUILD_IMAGE) to its archive, in the same folder. ``scratch_bytes``: as build_sif's."""
    work = archive.parent
    work_seen, work_mounts = runtime.see(work, "/work", writable=True)
    src_seen, src_mounts = runtime.see(root, "/src")
    build_args = {"BOOTSTRAP": "docker-archive", **args, "FROM": f"{work_seen}/{archive.name}"}
    text = recipe.read_text(encoding="utf-8")
    for name in ("BASE_IMAGE", "PARENT_IMAGE"):  # a build stage on the image's own base or parent
        if f"{{{{ {name} }}}}" in text:
            build_args[name] = build_args["FROM"]
    for name, stage_archive in (stages or {}).items():
        build_args[name] = f"{work_seen}/{stage_archive.name}"
    flags = [part for key, value in build_args.items() for part in ("--build-arg", f"{key}={value}")]
    command = ["apptainer", "build", "--force", *runtime.squashfs_args(), *flags, f"{work_seen}/{out.name}",
               f"{src_seen}/{recipe.relative_to(root)}"]
    code, output = runtime.run(command, [*work_mounts, *src_mounts], network=True, workdir=src_seen,
                               **runtime.in_memory(scratch_bytes))
    if code == 0:
        (work / out.name).replace(out)
    return code, output

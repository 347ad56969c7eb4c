"""``invoke convert``: Docker images to ``.sif`` files with a real Apptainer, and runs of them.

Two runtimes, the same interface:

* a host ``apptainer`` (or ``singularity``) on PATH, driven through spython's client with streamed output
  (spython's non-streamed build returns None on failure, so it is never trusted blindly);
* the containerised Apptainer of the tools image (tools.py), run unprivileged with the security options it
  needs, when the host has none.

A cell's ``.sif`` goes to ``build/sif/<family>_<tag>.sif``, with a ``.json`` beside it that records the image
id it came from; a ``.sif`` is rebuilt when it is older than its image or comes from another image id.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import docker
import docker.errors
import requests
from tabulate import tabulate

from . import tools
from .engine import find_image
from .errors import HpcImagesError, output_tail

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


@dataclass
class Mount:
    host: Path
    inside: str
    read_only: bool = True


class Runtime:
    name = "runtime"

    def run(self, command: list[str], mounts: Iterable[Mount] = (), env: dict[str, str] | None = None,
            network: bool = False, workdir: str | None = None, timeout: int = 3600) -> tuple[int, str]:
        raise NotImplementedError


class HostRuntime(Runtime):
    """apptainer/singularity installed on this machine."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.name = f"host {Path(binary).name}"

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


class ContainerRuntime(Runtime):
    """The tools image's Apptainer, as the unprivileged user `hpc` in a container of the local engine."""

    name = "containerised Apptainer"

    def __init__(self, client: docker.DockerClient, image: str) -> None:
        self.client = client
        self.image = image

    def run(self, command: list[str], mounts: Iterable[Mount] = (), env: dict[str, str] | None = None,
            network: bool = False, workdir: str | None = None, timeout: int = 3600) -> tuple[int, str]:
        volumes = {str(m.host): {"bind": m.inside, "mode": "ro" if m.read_only else "rw"} for m in mounts}
        container = tools.create_container(
            self.client, self.image, command, environment=env, volumes=volumes,
            network_mode="host" if network else "none", working_dir=workdir,
        )
        try:
            container.start()
            try:
                code = int(container.wait(timeout=timeout).get("StatusCode", 1))
            except requests.exceptions.ConnectionError:  # the engine's wait timed out: the run hangs
                container.kill()
                code = 124
            output = container.logs(stdout=True, stderr=True).decode(errors="replace")
        finally:
            container.remove(force=True)
        return code, output


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


# ---------------------------------------------------------------------------------------------
# conversion


@dataclass
class Conversion:
    name: str
    image: str
    sif: str
    status: str = "pending"  # converted | up to date | failed
    seconds: float = 0.0
    sif_bytes: int | None = None
    image_bytes: int | None = None
    reason: str = ""


def sif_name(image: str) -> str:
    repo, _, tag = image.rpartition(":")
    return f"{repo.rsplit('/', 1)[-1]}_{tag}.sif"


def is_fresh(sif: Path, image: object) -> bool:
    """The .sif exists, is newer than the image, and records the same image id."""
    meta = sif.with_suffix(".json")
    if not sif.is_file() or not meta.is_file():
        return False
    try:
        recorded = json.loads(meta.read_text(encoding="utf-8")).get("image_id")
    except json.JSONDecodeError:
        return False
    created = dt.datetime.fromisoformat(image.attrs["Created"][:19]).replace(tzinfo=dt.UTC)  # type: ignore[attr-defined]
    return recorded == image.id and sif.stat().st_mtime >= created.timestamp()  # type: ignore[attr-defined]


def save_image(client: docker.DockerClient, image: str, tar: Path) -> None:
    tar.parent.mkdir(parents=True, exist_ok=True)
    with tar.open("wb") as out:
        for chunk in client.images.get(image).save(named=True):
            out.write(chunk)
    tar.chmod(0o644)


def convert_one(client: docker.DockerClient, runtime: Runtime, image_ref: str, out_dir: Path,
                force: bool = False) -> Conversion:
    sif = out_dir / sif_name(image_ref)
    result = Conversion(image_ref.rsplit("/", 1)[-1], image_ref, str(sif))
    start = time.monotonic()
    image = find_image(client, image_ref)
    if image is None:
        result.status, result.reason = "failed", f"{image_ref} is not built: run `invoke build`"
        return result
    result.image_bytes = image.attrs.get("Size")
    if not force and is_fresh(sif, image):
        result.status, result.sif_bytes = "up to date", sif.stat().st_size
        return result
    work = out_dir / ".work"
    tar = work / f"{sif.stem}.tar"
    partial = work / f"{sif.stem}.sif"
    try:
        save_image(client, image_ref, tar)
        if isinstance(runtime, HostRuntime):
            code, output = build_with_spython(runtime, f"docker-archive://{tar}", partial)
        else:
            os.chmod(work, 0o777)  # the unprivileged user in the container writes here
            code, output = runtime.run(["apptainer", "build", "--force", f"/work/{partial.name}",
                                        f"docker-archive:///work/{tar.name}"], [Mount(work, "/work", False)])
        if code != 0 or not partial.is_file():
            raise ConvertError(f"apptainer build failed (exit {code}): {tail(output)}")
        partial.replace(sif)
        sif.with_suffix(".json").write_text(json.dumps({"image": image_ref, "image_id": image.id,
                                                        "runtime": runtime.name}, indent=2) + "\n")
        result.status, result.sif_bytes = "converted", sif.stat().st_size
    except (ConvertError, docker.errors.APIError, OSError) as exc:
        result.status, result.reason = "failed", str(exc)
        partial.unlink(missing_ok=True)
    finally:
        tar.unlink(missing_ok=True)
        result.seconds = time.monotonic() - start
    return result


def build_with_spython(runtime: HostRuntime, source: str, sif: Path) -> tuple[int, str]:
    """spython's client, streamed: the non-streamed call hides failures (it returns None)."""
    from spython.main import Client

    Client.quiet = True
    lines = []
    try:
        stream = Client.build(recipe=source, image=str(sif), build_folder=str(sif.parent), sudo=False,
                              stream=True, force=True, options=["--force"])
        lines.extend(str(line) for line in stream or [])
    except subprocess.CalledProcessError as exc:  # the streamed build raises on a non-zero exit
        return exc.returncode or 1, "".join(lines) + str(exc)
    return (0 if sif.is_file() else 1), "".join(lines)


def convert(client: docker.DockerClient, runtime: Runtime, images: list[str], out_dir: Path,
            progress: Progress = print, force: bool = False) -> list[Conversion]:
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for i, image in enumerate(images, 1):
        progress(f"[{i}/{len(images)}] {image} -> {out_dir / sif_name(image)} ({runtime.name}) ...")
        result = convert_one(client, runtime, image, out_dir, force=force)
        detail = result.reason if result.status == "failed" else f"{result.seconds:.1f}s"
        progress(f"[{i}/{len(images)}] {image}: {result.status} ({detail})")
        results.append(result)
    (out_dir / "convert-report.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    return results


def table(results: list[Conversion]) -> str:
    def mb(n: int | None) -> str:
        return "-" if n is None else f"{n / 1e6:.0f} MB"

    rows = [[r.image, r.status, f"{r.seconds:.1f}s", mb(r.image_bytes), mb(r.sif_bytes),
             Path(r.sif).name if r.status != "failed" else r.reason[:90]] for r in results]
    return tabulate(rows, headers=["image", "status", "time", "image size", "sif size", "sif / reason"])


# ---------------------------------------------------------------------------------------------
# running .sif files


def exec_in_sif(runtime: Runtime, sif: Path, command: list[str], bench: Path, ranks: int = 0,
                env: dict[str, str] | None = None, extra_mounts: Iterable[Mount] = ()) -> tuple[int, str]:
    """`apptainer exec -e x.sif ...`, or with ranks, `mpiexec -n R apptainer exec x.sif ...` (launcher outside)."""
    if isinstance(runtime, HostRuntime):
        sif_path, bench_path, mounts = str(sif), str(bench), []
    else:
        sif_path, bench_path = f"/sif/{sif.name}", "/opt/hpcimages-bench"
        mounts = [Mount(sif.parent, "/sif"), Mount(bench, bench_path), *extra_mounts]
    command = [c.replace("{bench}", bench_path) for c in command]
    inner = ["apptainer", "exec", "-B", bench_path, sif_path, *command]
    if ranks:
        return runtime.run(["mpiexec", "-n", str(ranks), *inner], mounts, env={**MPI_ENV, **(env or {})})
    return runtime.run(["apptainer", "exec", "-e", "-B", bench_path, sif_path, *command], mounts, env=env)


def tail(output: str, lines: int = 4, limit: int = 500) -> str:
    """The end of an Apptainer run's output for a message, without its `gocryptfs not found` notices."""
    return output_tail(output, lines, limit, skip=("gocryptfs",))


# ---------------------------------------------------------------------------------------------
# building from the committed recipe


def build_recipe(client: docker.DockerClient, runtime: Runtime, root: Path, recipe: Path, from_image: str,
                 out: Path, extra_args: dict[str, str]) -> tuple[int, str]:
    """`apptainer build` of a committed Singularity.def, bootstrapping from a local image via docker-archive."""
    work = out.parent / ".work"
    tar = work / f"{out.stem}-from.tar"
    save_image(client, from_image, tar)
    os.chmod(work, 0o777)
    args = {"BOOTSTRAP": "docker-archive", **extra_args}
    try:
        if isinstance(runtime, HostRuntime):
            args["FROM"] = str(tar)
            command = ["apptainer", "build", "--force", *_build_args(args), str(out), str(recipe)]
            return runtime.run(command, workdir=str(root))
        args["FROM"] = f"/work/{tar.name}"
        command = ["apptainer", "build", "--force", *_build_args(args), f"/work/{out.name}",
                   str(recipe.relative_to(root))]
        code, output = runtime.run(command, [Mount(root, "/src"), Mount(work, "/work", False)], network=True,
                                   workdir="/src")
        if code == 0:
            (work / out.name).replace(out)
        return code, output
    finally:
        tar.unlink(missing_ok=True)


def _build_args(args: dict[str, str]) -> list[str]:
    return [part for key, value in args.items() for part in ("--build-arg", f"{key}={value}")]

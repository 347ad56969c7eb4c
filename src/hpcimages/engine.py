"""The Docker engine, through the Docker SDK: one clear error when it cannot be reached, and one way to run a
command in a container (``run``/``create``; MPI runs go through mpirun.py, which builds on them)."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors
import requests
from docker.models.containers import Container
from docker.models.images import Image

from .errors import EngineError

HOW_TO_START = ("start one first: `bash scripts/setup.sh` (installs and starts it), or `dockerd &` as root, "
                "or `systemctl start docker`")
EXIT_TIMEOUT = 124


def connect(timeout: int = 900, ping_timeout: int = 15) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default: the local socket), checked with a ping that may take
    ``ping_timeout`` seconds (an engine that never answers is an error, not a hang); later calls get ``timeout``."""
    try:
        client = docker.from_env(timeout=ping_timeout)
        client.ping()
    except ValueError as exc:  # the SDK parses some malformed addresses (a port that is no number) with a bare int()
        raise EngineError(f"DOCKER_HOST={_host()!r} is not an engine address ({_short(exc)}); "
                          "use unix:///path/to/docker.sock or tcp://host:port") from None
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        if isinstance(exc, requests.exceptions.Timeout) or "timed out" in str(exc).lower():
            raise EngineError(f"the Docker engine at {_host()} did not answer within {ping_timeout}s; is it "
                              f"running and not stuck? {HOW_TO_START}") from None
        raise EngineError(f"cannot reach a Docker engine ({exc.__class__.__name__}: {_short(exc)}); "
                          f"{HOW_TO_START}") from None
    client.api.timeout = timeout
    return client


def _host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def find_image(client: docker.DockerClient, ref: str) -> Image | None:
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise EngineError(f"the Docker engine failed to inspect {ref}: {_short(exc)}") from None


@dataclass(frozen=True)
class Mount:
    """A host path bound into a container."""

    host: Path
    inside: str
    read_only: bool = True


@dataclass(frozen=True)
class Sandbox:
    """What a container may do beyond the engine's defaults. The named sandboxes, each with its reason, are in
    mpirun.py; ``label`` is how results and reports name one."""

    security_opt: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    unmask_paths: bool = False
    cap_add: tuple[str, ...] = ()
    label: str = "engine default"
    reason: str = ""


def create(client: docker.DockerClient, image: str, command: list[str] | None, *, env: dict[str, str] | None = None,
           mounts: Iterable[Mount] = (), network: str = "none", workdir: str | None = None, user: str | None = None,
           sandbox: Sandbox | None = None, shm_size: int | str | None = None, name: str | None = None,
           hostname: str | None = None, entrypoint: list[str] | None = None,
           labels: dict[str, str] | None = None, init: bool = False, aliases: Iterable[str] = (),
           tmpfs: Mapping[str, str] | None = None) -> Container:
    """A created (not started) container; ``command`` is an argument list, never a shell string; ``sandbox`` None:
    the engine's defaults (mpirun.ENGINE_DEFAULT names them). ``aliases``:
    further names under which the others on a user-defined ``network`` reach it. ``tmpfs``: a memory file system
    at each path, with its mount options (e.g. ``size=...``)."""
    sandbox = sandbox or Sandbox()
    binds = {str(m.host): {"bind": m.inside, "mode": "ro" if m.read_only else "rw"} for m in mounts}
    host_config = client.api.create_host_config(
        binds=binds, network_mode=network, security_opt=list(sandbox.security_opt) or None,
        devices=list(sandbox.devices) or None, shm_size=shm_size, init=init, cap_add=list(sandbox.cap_add) or None,
        tmpfs=dict(tmpfs) if tmpfs else None,
    )
    if sandbox.unmask_paths:
        host_config["MaskedPaths"] = []
        host_config["ReadonlyPaths"] = []
    networking = client.api.create_networking_config(
        {network: client.api.create_endpoint_config(aliases=list(aliases))}) if aliases else None
    created = client.api.create_container(
        image, command, environment=env or {}, host_config=host_config, working_dir=workdir, user=user,
        name=name, hostname=hostname, volumes=[spec["bind"] for spec in binds.values()], entrypoint=entrypoint,
        labels=labels, networking_config=networking,
    )
    return client.containers.get(created["Id"])


def engine_memory(client: docker.DockerClient) -> int | None:
    """The memory of the machine the engine runs on, in bytes (None when the engine does not say)."""
    try:
        total = client.info().get("MemTotal")
    except (docker.errors.APIError, requests.exceptions.RequestException):
        return None
    return int(total) if isinstance(total, int) and total > 0 else None


def run(client: docker.DockerClient, image: str, command: list[str], *, timeout: int, **options: object) -> \
        tuple[int, str]:
    """Run ``command`` in a new container to its end: (exit status, stdout+stderr). The container is removed
    whatever happens (Ctrl-C included); one that outlives ``timeout`` is killed and reports 124."""
    code, output, _ = run_split(client, image, command, timeout=timeout, together=True, **options)
    return code, output


def run_split(client: docker.DockerClient, image: str, command: list[str], *, timeout: int, together: bool = False,
              **options: object) -> tuple[int, str, str]:
    """``run``, with stdout and stderr apart: (exit status, stdout, stderr). A long line on stdout stays whole
    (read together, the engine's frames of the two streams can interleave inside it). ``together``: both streams
    as one text, in the order they came, as the first string."""
    container = create(client, image, command, **options)  # type: ignore[arg-type]
    try:
        container.start()
        try:
            code = int(container.wait(timeout=timeout).get("StatusCode", 1))
        except (requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout):
            container.kill()
            code = EXIT_TIMEOUT
        if together:
            out, err = container.logs(stdout=True, stderr=True).decode(errors="replace"), ""
        else:
            out = container.logs(stdout=True, stderr=False).decode(errors="replace")
            err = container.logs(stdout=False, stderr=True).decode(errors="replace")
    finally:
        container.remove(force=True)
    if code == EXIT_TIMEOUT:  # said where the messages are: stderr, or the one text
        note = f"\n(timed out after {timeout}s)"
        out, err = (out + note, err) if together else (out, err + note)
    return code, out, err


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else exc.__class__.__name__


def build_from_memory(client: docker.DockerClient, tag: str, dockerfile: str, files: Mapping[str, bytes]) -> str:
    """Build ``tag`` from a Dockerfile and a few files held in memory (the host network, so apt reaches the
    mirror); raises docker.errors.BuildError with the engine's message when a step fails."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("Dockerfile", dockerfile.encode()), *files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, network_mode="host", rm=True, forcerm=True)
    return tag


def last_json_line(output: str) -> dict | None:
    """The last line of a container's output that is a JSON object (what the in-container probes print)."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except json.JSONDecodeError:
                return None
            return found if isinstance(found, dict) else None
    return None

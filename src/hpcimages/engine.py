"""The Docker engine, through the Docker SDK, with one clear error when it cannot be reached."""

from __future__ import annotations

import docker
import docker.errors
from docker.models.images import Image

from .errors import EngineError

HOW_TO_START = ("start one first: `bash scripts/setup.sh` (installs and starts it), or `dockerd &` as root, "
                "or `systemctl start docker`")


def connect(timeout: int = 900) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default: the local socket), checked with a ping."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise EngineError(f"cannot reach a Docker engine ({exc.__class__.__name__}: {_short(exc)}); "
                          f"{HOW_TO_START}") from None
    return client


def find_image(client: docker.DockerClient, ref: str) -> Image | None:
    try:
        return client.images.get(ref)
    except docker.errors.ImageNotFound:
        return None
    except docker.errors.APIError as exc:
        raise EngineError(f"the Docker engine failed to inspect {ref}: {_short(exc)}") from None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else exc.__class__.__name__

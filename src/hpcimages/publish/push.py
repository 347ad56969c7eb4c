"""One tag pushed by the engine, its stream read line by line.

The engine reports a failed push inside a stream that started with HTTP 200 (an ``error``/``errorDetail`` entry),
so the stream is the verdict, not the status code. Failures that a retry can cure (the registry restarting, a
dropped connection, a 5xx) are retried with backoff; a refusal (no login, access denied) is not.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import docker
import docker.errors
import requests

from ..errors import HpcImagesError

TRANSIENT_RE = re.compile(r"connection refused|connection reset|broken pipe|EOF|timeout|timed out|"
                          r"no such host|temporarily unavailable|50[0234]|i/o|dial tcp|retry", re.I)
REFUSED_RE = re.compile(r"unauthorized|authentication required|denied|forbidden|no basic auth", re.I)
BACKOFF_S = (1.0, 2.0, 4.0, 8.0)

Progress = Callable[[str], None]


class PushError(HpcImagesError):
    def __init__(self, message: str, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Pushed:
    digest: str
    size: int
    layers: int
    attempts: int
    seconds: float


def _classify(message: str) -> PushError:
    if REFUSED_RE.search(message):
        host_hint = " (run `docker login` for the registry; credentials come only from the engine's login store)"
        return PushError(message + host_hint, transient=False)
    return PushError(message, transient=bool(TRANSIENT_RE.search(message)))


def push_once(client: docker.DockerClient, repository: str, tag: str,
              answers: Callable[[], bool] = lambda: True) -> tuple[str, int, int]:
    """(digest, manifest size, layers) of one push, or PushError with what the engine said.

    When the engine says it will retry a layer, ``answers`` is asked whether the registry still answers at all; if
    it does not, the push is stopped there instead of after the engine's own retries (five per layer, about a
    minute): a registry that went away mid-push fails the attempt in seconds, and ``push`` retries it."""
    layers: set[str] = set()
    digest, size = None, 0
    try:
        for line in client.api.push(repository, tag=tag, stream=True, decode=True):
            if not isinstance(line, dict):
                continue
            error = line.get("error") or (line.get("errorDetail") or {}).get("message")
            if error:
                raise _classify(str(error).strip())
            status = str(line.get("status", ""))
            if status.startswith("Retrying in") and not answers():
                raise PushError(f"the registry stopped answering while the engine pushed (it said: {status}); the "
                                "push was stopped without waiting for the engine's own retries", transient=True)
            if status.startswith(("Pushed", "Layer already exists", "Mounted from")) and line.get("id"):
                layers.add(line["id"])
            aux = line.get("aux") or {}
            if aux.get("Digest"):
                digest, size = str(aux["Digest"]), int(aux.get("Size") or 0)
    except docker.errors.APIError as exc:
        raise _classify(str(exc.explanation or exc)) from None
    except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        raise PushError(f"the engine's push stream broke: {exc}", transient=True) from None
    if digest is None:
        raise PushError("the engine ended the push without reporting a digest", transient=True)
    return digest, size, len(layers)


def push(client: docker.DockerClient, repository: str, tag: str, attempts: int, progress: Progress,
         sleep: Callable[[float], None] = time.sleep, answers: Callable[[], bool] = lambda: True) -> Pushed:
    """Push with up to ``attempts`` tries; the last error is raised with how many were made. ``answers``: whether
    the registry answers at all (push_once)."""
    start = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            digest, size, layers = push_once(client, repository, tag, answers)
            return Pushed(digest, size, layers, attempt, time.monotonic() - start)
        except PushError as exc:
            if not exc.transient or attempt == attempts:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                raise PushError(f"push of {repository}:{tag} failed{tries}: {exc}", exc.transient) from None
            wait = BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)]
            progress(f"    push of {repository}:{tag} failed ({exc}); retry {attempt + 1}/{attempts} in {wait:.0f}s")
            sleep(wait)
    raise AssertionError("unreachable")

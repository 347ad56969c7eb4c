"""The registry a profile publishes to, seen from outside the engine.

``Target`` is a validated ``HOST[:PORT][/NAMESPACE]``. ``ping`` asks the registry API whether it answers and whether
the engine's login store has credentials it accepts, before anything is pushed. ``inspect`` reads a manifest with
``skopeo`` — a path independent of the engine that pushed it — and computes its digest from the bytes the registry
serves, so a digest the engine reports is proven, not repeated. Credentials are never read by this module beyond
what ``ping`` needs for one request: skopeo is pointed at the engine's own credential file.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from docker import auth as docker_auth
from docker.utils import config as docker_config

from ..define.tags import registry_problem
from ..errors import HpcImagesError, output_tail

SKOPEO_TIMEOUT_S = 120
MISSING_MANIFEST = ("manifest unknown", "not found", "name unknown")


class RegistryError(HpcImagesError):
    """The registry cannot be reached, refuses us, or serves something unexpected."""


@dataclass(frozen=True)
class Target:
    host: str  # host[:port]
    namespace: str  # "" or a path

    @classmethod
    def parse(cls, value: str, origin: str = "--registry") -> Target:
        reason = registry_problem(value)
        if reason:
            raise RegistryError(f"{origin}: {reason}")
        host, _, namespace = value.partition("/")
        return cls(host, namespace)

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}" if self.namespace else self.host

    @property
    def loopback(self) -> bool:
        """The engine pushes to these over plain HTTP (insecure-allowed by default), so skopeo must too."""
        name = self.host.rsplit(":", 1)[0] if self.host.count(":") == 1 else self.host
        return name == "localhost" or name.startswith("127.")

    @property
    def api(self) -> str:
        return f"{'http' if self.loopback else 'https'}://{self.host}/v2/"

    def repository(self, family: str) -> str:
        return f"{self}/{family}"

    def sif_repository(self, family: str) -> str:
        return f"{self}/sif/{family}"


@dataclass(frozen=True)
class Manifest:
    digest: str  # sha256 of the bytes the registry served
    media_type: str
    config_digest: str | None
    layer_sizes: tuple[int, ...]

    @property
    def compressed_size(self) -> int:
        return sum(self.layer_sizes)


def credential_file() -> Path | None:
    """The engine's login store (``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``), if there is one."""
    found = docker_config.find_config_file()
    return Path(found) if found else None


def credentials(target: Target) -> dict[str, Any] | None:
    """What ``docker login HOST`` stored for the host (file or credential helper), or None."""
    configs = docker_auth.load_config()
    return docker_auth.resolve_authconfig(configs, target.host) or None


def ping(target: Target) -> str:
    """Fail with one clear message unless the registry answers and, when it requires a login, has one it
    accepts. Returns ``open`` or ``login`` (the access it granted)."""
    try:
        with urllib.request.urlopen(target.api, timeout=10) as response:
            if response.status == 200:
                return "open"
    except urllib.error.HTTPError as exc:
        if exc.code != 401:
            raise RegistryError(f"registry {target.host} answered {exc.code} {exc.reason} at {target.api}: is it a "
                                "registry (distribution API v2)?") from None
        return _check_login(target, exc.headers.get("WWW-Authenticate", ""))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        hint = " (start the project's registry with `invoke registry`)" if target.loopback else ""
        raise RegistryError(f"registry {target.host} does not answer at {target.api}: {reason}{hint}") from None
    raise RegistryError(f"registry {target.host} answered unexpectedly at {target.api}")


def answers(target: Target, timeout: float = 5.0) -> bool:
    """The registry answers HTTP at its API at all (any status, a login challenge too); False when nothing does
    (refused, reset, timed out): what tells a registry that went away from one that is slow."""
    try:
        with urllib.request.urlopen(target.api, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def _check_login(target: Target, challenge: str) -> str:
    creds = credentials(target)
    if not creds or not creds.get("username"):
        raise RegistryError(f"registry {target.host} requires authentication and the engine's login store has no "
                            f"credentials for it: run `docker login {target.host}` (credentials are read only from "
                            "there, never from the repository)")
    if not challenge.lower().startswith("basic"):
        return "login"  # token realms are negotiated by the engine and skopeo themselves
    token = base64.b64encode(f"{creds['username']}:{creds.get('password', '')}".encode()).decode()
    request = urllib.request.Request(target.api, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(request, timeout=10):
            return "login"
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise RegistryError(f"registry {target.host} refuses the credentials stored for it (user "
                                f"{creds['username']!r}): run `docker login {target.host}` again") from None
        raise RegistryError(f"registry {target.host} answered {exc.code} to a login") from None
    except (urllib.error.URLError, OSError) as exc:
        raise RegistryError(f"registry {target.host} stopped answering: {exc}") from None


def _skopeo(target: Target, *args: str) -> subprocess.CompletedProcess[bytes]:
    binary = shutil.which("skopeo")
    if binary is None:
        raise RegistryError("skopeo is not installed: run `bash scripts/setup.sh` (it installs it; publish reads "
                            "every pushed manifest back with it)")
    command = [binary, *args]
    if target.loopback:
        command.insert(2, "--tls-verify=false")
    authfile = credential_file()
    if authfile is not None:
        command.insert(2, f"--authfile={authfile}")
    try:
        return subprocess.run(command, capture_output=True, timeout=SKOPEO_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise RegistryError(f"skopeo {args[0]} timed out after {SKOPEO_TIMEOUT_S}s") from None


def inspect(target: Target, ref: str) -> Manifest | None:
    """The manifest of ``ref`` (``repo:tag`` or ``repo@digest``) as the registry serves it, or None if there is
    no such tag."""
    proc = _skopeo(target, "inspect", "--raw", f"docker://{ref}")
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        if any(marker in err.lower() for marker in MISSING_MANIFEST):
            return None
        raise RegistryError(f"skopeo cannot read {ref}: {output_tail(err, lines=2, limit=300)}")
    raw = proc.stdout
    try:
        data = json.loads(raw)
    except json.JSONDecodeError:
        raise RegistryError(f"{ref}: the registry served a manifest that is not JSON") from None
    config = data.get("config") or {}
    return Manifest("sha256:" + hashlib.sha256(raw).hexdigest(), str(data.get("mediaType", "")),
                    config.get("digest"), tuple(int(layer.get("size", 0)) for layer in data.get("layers") or []))

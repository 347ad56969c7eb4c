"""The project's own registry: the CNCF distribution registry (Debian's ``docker-registry``) on 127.0.0.1, with its
storage, config, log and pid file in one folder (default ``<build>/registry``).

The engine treats registries on 127.0.0.0/8 as insecure-allowed (plain HTTP), so no TLS is needed. ``start`` is
idempotent: a registry of ours that answers is left running. With ``htpasswd`` it requires basic authentication
(Debian's packaged config points htpasswd at a directory, so the config is always written here).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import HpcImagesError
from ..files import write_text

BINARY = "docker-registry"
DEFAULT_PORT = 5000
START_TIMEOUT_S = 20


class RegistryServerError(HpcImagesError):
    """The local registry cannot be started or stopped."""


@dataclass(frozen=True)
class RegistryServer:
    folder: Path
    port: int = DEFAULT_PORT
    htpasswd: Path | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config(self) -> Path:
        return self.folder / "config.yml"

    @property
    def log(self) -> Path:
        return self.folder / "registry.log"

    @property
    def pid_file(self) -> Path:
        return self.folder / "registry.pid"

    def config_text(self) -> str:
        auth = ""
        if self.htpasswd is not None:
            auth = f"auth:\n  htpasswd:\n    realm: hpcimages\n    path: {self.htpasswd}\n"
        return (f"# written by hpcimages (invoke registry); rewritten at every start\nversion: 0.1\n"
                f"log:\n  level: info\n  accesslog:\n    disabled: false\n"
                f"storage:\n  filesystem:\n    rootdirectory: {self.folder / 'data'}\n  delete:\n    enabled: true\n"
                f"http:\n  addr: {self.address}\n{auth}")

    def pid(self) -> int | None:
        """The pid of our registry process, when it is alive."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _alive(pid):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if any(BINARY.encode() in part for part in cmdline[:1]) else None

    def answers(self) -> bool:
        """The registry API answers at the address (200, or 401 when it requires a login)."""
        try:
            with urllib.request.urlopen(f"http://{self.address}/v2/", timeout=3) as response:
                return response.status == 200
        except urllib.error.HTTPError as exc:
            return exc.code == 401
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> str:
        """Start it unless ours already answers; returns what happened, for the progress line."""
        if self.pid() is not None and self.answers():
            return f"already running at {self.address} (pid {self.pid()})"
        binary = shutil.which(BINARY)
        if binary is None:
            raise RegistryServerError(f"{BINARY} is not installed: run `bash scripts/setup.sh` (it installs Debian's "
                                      "docker-registry and skopeo)")
        if _port_taken(self.port):
            raise RegistryServerError(f"port {self.port} on 127.0.0.1 is taken by another program; choose another "
                                      "with --port")
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        write_text(self.config, self.config_text())
        with open(self.log, "ab") as log:
            process = subprocess.Popen([binary, "serve", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, start_new_session=True)
        write_text(self.pid_file, f"{process.pid}\n")
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RegistryServerError(f"{BINARY} exited with {process.returncode} at start; see {self.log}")
            if self.answers():
                return f"started at {self.address} (pid {process.pid}, log {self.log})"
            time.sleep(0.2)
        process.kill()
        raise RegistryServerError(f"{BINARY} did not answer at {self.address} within {START_TIMEOUT_S}s; see "
                                  f"{self.log}")

    def stop(self) -> str:
        pid = self.pid()
        if pid is None:
            return f"not running (no live pid in {self.pid_file})"
        os.kill(pid, signal.SIGTERM)
        for _ in range(50):
            if not _alive(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return f"stopped (pid {pid}); storage kept in {self.folder / 'data'}"


def _alive(pid: int) -> bool:
    """Running, not a zombie (a registry started by this process stays one until it is reaped)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0

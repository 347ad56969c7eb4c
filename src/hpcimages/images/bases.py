"""Offline base images that behave like ``python:X-slim``, bootstrapped from the Debian mirror.

``debootstrap`` builds a minimal Debian root file system from the mirror configured in this machine's
apt sources, with the distribution's Python and pip; it is made to behave like the official
``python`` images (``python3 -m pip install`` works system-wide, ``python`` exists) and handed to the
engine with ``docker import``. A label records the recipe, so a second run does nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker

from ..define.matrix import Base, Profile
from ..engine import find_image
from ..errors import BaseImageError
from .aptsources import debian_mirror

RECIPE_LABEL = "io.hpcimages.base-recipe"
#: Debian's pip *wheel*, not its python3-pip package: that one brings python3-packaging and python3-wheel, installed
#: by dpkg with no RECORD, so pip can never upgrade them and a lock that pins another `packaging` (numba-cuda's)
#: fails with "Cannot uninstall packaging ... installed by debian". pip is installed from the wheel instead, with its
#: RECORD, in /usr/local, and no Debian-packaged Python module is left for a lock to collide with (python:3.11-slim
#: also ships setuptools and wheel; nothing here needs them at run time: the build stages lock their own).
PACKAGES = ("python3", "python3-pip-whl", "python3-venv", "ca-certificates")
RECIPE_VERSION = 2  # bump when the bootstrap steps below change
PIP_WHEELS = "usr/share/python-wheels"


@dataclass(frozen=True)
class BaseResult:
    python: str
    image: str
    status: str  # "up to date" | "bootstrapped" | "not bootstrapped here"
    detail: str = ""


def recipe_digest(python: str, base: Base) -> str:
    recipe = {"python": python, "debian": base.debian, "packages": PACKAGES, "version": RECIPE_VERSION}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def ensure_bases(client: docker.DockerClient, profile: Profile, progress: Callable[[str], None] = print,
                 force: bool = False) -> list[BaseResult]:
    """Bootstrap every base of the profile that has a ``debian`` suite and is missing or stale."""
    results = []
    mirror: str | None = None
    for python, base in sorted(profile.bases.items()):
        if base.debian is None:
            results.append(BaseResult(python, base.image, "not bootstrapped here", "a registry image"))
            continue
        digest = recipe_digest(python, base)
        image = find_image(client, base.image)
        if image is not None and image.labels.get(RECIPE_LABEL) == digest and not force:
            results.append(BaseResult(python, base.image, "up to date"))
            continue
        mirror = mirror or debian_mirror()
        progress(f"bootstrapping {base.image} from Debian {base.debian} ({mirror}) ...")
        bootstrap(client, python, base, mirror, digest)
        results.append(BaseResult(python, base.image, "bootstrapped", f"Debian {base.debian}"))
    return results


def bootstrap(client: docker.DockerClient, python: str, base: Base, mirror: str, digest: str) -> None:
    assert base.debian is not None
    debootstrap_import(
        client, base.debian, PACKAGES, base.image, mirror,
        changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "ENV LANG=C.UTF-8",
                 'CMD ["python3"]',
                 f"LABEL {RECIPE_LABEL}={digest} io.hpcimages.debian={base.debian} io.hpcimages.python={python}"],
        prepare=lambda rootfs: _make_python_slim_like(rootfs, python, base),
    )


def debootstrap_import(client: docker.DockerClient, suite: str, packages: tuple[str, ...], image: str, mirror: str,
                       changes: list[str], prepare: Callable[[Path], None] | None = None) -> None:
    """debootstrap a minimal Debian `suite` with `packages`, adjust it, and `docker import` it as `image`."""
    if shutil.which("debootstrap") is None:
        raise BaseImageError("debootstrap is not installed: `apt-get install debootstrap` (the set-up script does)")
    if os.geteuid() != 0:
        raise BaseImageError("debootstrap needs root to build a root file system; run this as root")
    with tempfile.TemporaryDirectory(prefix="hpcimages-rootfs-", dir=_scratch()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        cmd = ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite, str(rootfs), mirror]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise BaseImageError(f"debootstrap of Debian {suite} failed (exit {proc.returncode}):\n{tail}")
        if prepare is not None:
            prepare(rootfs)
        for leftovers in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (rootfs / leftovers).glob("*"):
                if entry.is_file():
                    entry.unlink()
        archive = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
        repository, _, tag = image.rpartition(":")
        client.api.import_image_from_file(str(archive), repository=repository, tag=tag, changes=changes)
    if find_image(client, image) is None:
        raise BaseImageError(f"docker import reported success but {image} is not in the engine")


def _make_python_slim_like(rootfs: Path, python: str, base: Base) -> None:
    """pip installs system-wide (no PEP 668 marker), `python` exists, no apt caches are left."""
    found = os.readlink(rootfs / "usr/bin/python3") if (rootfs / "usr/bin/python3").is_symlink() else ""
    if found.removeprefix("python") != python:
        raise BaseImageError(f"Debian {base.debian} ships {found or 'no python3'}, but the matrix maps it to "
                             f"Python {python}; fix profiles.*.bases in matrix.toml")
    (rootfs / f"usr/lib/python{python}/EXTERNALLY-MANAGED").unlink(missing_ok=True)
    (rootfs / "usr/local/bin/python").symlink_to("/usr/bin/python3")
    _install_pip(rootfs, base)


def _install_pip(rootfs: Path, base: Base) -> None:
    """pip from Debian's own pip wheel (python3-pip-whl, what venvs get), run from the wheel itself, with no
    index: /usr/local/bin/pip and a pip that can upgrade what it installed."""
    wheels = list((rootfs / PIP_WHEELS).glob("pip-*.whl"))
    if not wheels:
        raise BaseImageError(f"Debian {base.debian}'s python3-pip-whl put no pip wheel in /{PIP_WHEELS}")
    wheel = f"/{PIP_WHEELS}/{newest_wheel(wheels).name}"
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    cmd = [chroot, str(rootfs), "python3", f"{wheel}/pip", "install", "--no-index", "--no-cache-dir",
           "--disable-pip-version-check", "--no-warn-script-location", wheel]
    # the chroot's own PATH, not the caller's (a venv's bin/ does not exist inside the root file system)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise BaseImageError(f"installing pip from {wheel} in Debian {base.debian} failed:\n{tail}")


def newest_wheel(wheels: list[Path]) -> Path:
    """The wheel of the highest version (pip-25.1.1 before pip-9.0.1, which a sort by name would pick)."""
    def key(path: Path) -> tuple[int, ...]:
        version = path.name.split("-")[1]
        return tuple(int(part) if part.isdigit() else -1 for part in version.split("."))

    return max(wheels, key=key)


def _scratch() -> str:
    for candidate in (os.environ.get("TMPDIR"), "/var/tmp", "/tmp"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK):
            return candidate
    return tempfile.gettempdir()

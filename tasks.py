"""Invoke tasks: each one calls one function of the pipeline stage that owns it (`invoke --list`, `invoke --help
TASK`). Every task goes through hpcimages.cli.exit_code: a mistake is one line on stderr and exit 2, Ctrl-C 130."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from invoke import Exit, task

sys.path.insert(0, str(Path(__file__).parent / "src"))  # works before `pip install -e .` too

from hpcimages.abi import commands as abi_stage
from hpcimages.cli import exit_code
from hpcimages.cluster import commands as cluster
from hpcimages.define import commands as define
from hpcimages.images import commands as images
from hpcimages.measure import commands as measure
from hpcimages.publish import commands as publish_stage
from hpcimages.sif import commands as sif

MATRIX = "matrix.toml"
MATRIX_HELP = "matrix file (default: matrix.toml); the repository is its folder"
PROFILE_HELP = "matrix profile: published, offline or ci (see matrix.toml)"
# invoke shows no placeholder for a repeatable option: the help text names its value (--only GLOB)
ONLY_HELP = ("--only GLOB: only cells matching this glob on family:tag or on the family name, e.g. 'mpi4py', "
             "'cuda-*', '*:py3.11-*' (repeatable; the same rule in every task{})")


def _run(fn: Callable[..., int], **kwargs: object) -> None:
    code = exit_code(fn, **kwargs)
    if code:
        raise Exit(code=code)


@task(help={"matrix": MATRIX_HELP, "check": "only report files that differ from a fresh render (exit 1)"})
def render(c, matrix=MATRIX, check=False):
    """Render dockerfiles/generated/<family>/<tag>/Dockerfile for every cell of every profile."""
    _run(define.render, matrix=matrix, check=check)


@task(iterable=["only"], help={"matrix": MATRIX_HELP, "upgrade": "allow every pin to move to its newest version",
                               "only": "--only TEXT: compile only locks whose path contains TEXT (repeatable)",
                               "profile": "only the locks this profile's cells use (default: every profile's)"})
def lock(c, matrix=MATRIX, upgrade=False, only=None, profile=None):
    """Compile pinned, hashed locks (uv pip compile) per family and Python version into pip-requirements/."""
    _run(define.lock, matrix=matrix, upgrade=upgrade, only=only or [], profile=profile)


@task(positional=["action"], iterable=["only", "env"], auto_shortflags=False, help={
    "action": "discover (find the host MPI's bind model, write the profile and the users' module file), verify "
              "(prove it through Slurm, image by image) or status",
    "name": "the site profile to write (discover) or to verify: slurm/sites/NAME.toml",
    "mpi-lib": "discover: the host MPI library on the node, e.g. /usr/lib/x86_64-linux-gnu/libmpi.so.12",
    "mpicc": "discover: the host MPI's compiler wrapper (its -show names the library)",
    "mpiexec": "discover: the host MPI's launcher (the library is looked for under its prefix; also what runs the "
               "two ranks when there is no --via)",
    "via": "discover: a site profile whose Slurm and launcher reach the nodes (default: probe on this machine)",
    "profile": "discover: the profile whose cells the fit table covers (default: ci)",
    "only": ONLY_HELP.format("; verify: of the discovered cells"),
    "env": "discover: --env NAME=VALUE the host MPI needs (what its module sets, e.g. I_MPI_PMI_LIBRARY=...); "
           "written into [host_mpi] vars with bound paths as the container sees them (repeatable)",
    "rounds": "verify: interleaved bare-metal/bind rounds of osu_bw and osu_latency (default 3)",
    "timeout": "verify: seconds to wait for the jobs (default 1200)",
    "matrix": MATRIX_HELP})
def site(c, action, name="", mpi_lib="", mpicc="", mpiexec="", via="", profile="ci", only=None, env=None,
         rounds="3", timeout="1200", matrix=MATRIX):
    """The bind model configured from the host: `invoke site discover --name S --mpi-lib PATH [--via SITE]`,
    `invoke site verify --name S`, `invoke site status` (docs/site.md)."""
    _run(cluster.site, matrix=matrix, action=action, name=name, mpi_lib=mpi_lib, mpicc=mpicc, mpiexec=mpiexec,
         via=via, profile=profile, only=only or [], env=env or [], rounds=rounds, timeout=timeout)


@task(help={"matrix": MATRIX_HELP, "profile": "profile whose bases to bootstrap (default: offline)",
            "force": "bootstrap again even if the image is up to date"})
def bases(c, matrix=MATRIX, profile="offline", force=False):
    """Bootstrap offline base images (debootstrap from the configured Debian mirror + docker import)."""
    _run(images.bases, matrix=matrix, profile=profile, force=force)


@task(iterable=["only"], help={
    "all": "build every cell of the profile (the default when --only is not given; refused beside --only)",
    "profile": PROFILE_HELP + " (default: published)",
    "only": ONLY_HELP.format("; the parents of the chosen cells are built too"),
    "jobs": "cells built in parallel (default 2)",
    "dry-run": "print the plan (cells, tags, FROM) and build nothing",
    "force": "rebuild cells even when their inputs are unchanged",
    "matrix": MATRIX_HELP,
})
def build(c, all=False, profile="published", only=None, jobs="2", dry_run=False, force=False, matrix=MATRIX):
    """Build the image matrix in dependency order: incremental, parallel, fail-soft, with a summary table."""
    _run(images.build, matrix=matrix, profile=profile, only=only or [], jobs=jobs, dry_run=dry_run, force=force,
         every_cell=all)


@task(iterable=["only"], help={
    "profile": PROFILE_HELP + " (default: published)",
    "only": ONLY_HELP.format(""),
    "jobs": "cells checked at once (default 2: a check mostly waits on its containers)",
    "matrix": MATRIX_HELP,
})
def check(c, profile="published", only=None, jobs="2", matrix=MATRIX):
    """Run the checks inside every built image: contents, labels, linking, 2-rank MPI, bind-model swap, hygiene."""
    _run(images.check, matrix=matrix, profile=profile, only=only or [], jobs=jobs)


@task(iterable=["only"], help={
    "profile": PROFILE_HELP + " (default: published)",
    "only": ONLY_HELP.format(""),
    "runtime": "auto (a host apptainer/singularity, else the containerised one), host or container",
    "force": "convert again even when the .sif is newer than its image",
    "from-recipe": "build from the committed Singularity.def files instead of the Docker images",
    "jobs": "conversions at once with the containerised Apptainer (default 2; a host Apptainer, whose cache they "
            "would share, converts one at a time)",
    "matrix": MATRIX_HELP,
})
def convert(c, profile="published", only=None, runtime="auto", force=False, from_recipe=False, jobs="2",
            matrix=MATRIX):
    """Convert built images to .sif files in build/sif/ with a real Apptainer, then run the hello test in each."""
    _run(sif.convert, matrix=matrix, profile=profile, only=only or [], runtime=runtime, force=force,
         from_recipe=from_recipe, jobs=jobs)


@task(help={"force": "bootstrap and build again", "matrix": MATRIX_HELP})
def tools(c, force=False, matrix=MATRIX):
    """Bootstrap the tools image (Apptainer, Slurm, munge, MPICH's launcher; Debian sid) into the engine."""
    _run(sif.tools, matrix=matrix, force=force)


@task(iterable=["only", "sizes"], auto_shortflags=False, help={
    "profile": PROFILE_HELP + " (default: ci)",
    "only": ONLY_HELP.format("; default: every cell of the profile's root family (mpi4py)"),
    "bench": f"comma-separated benchmarks (default: all of {','.join(measure.BENCHMARK_NAMES)}; h5py_write runs in "
             "images with a parallel HDF5, the others in the rest)",
    "sizes": "message sizes of one benchmark, BENCH=MIN:MAX, e.g. osu_bw=1048576:4194304 (repeatable)",
    "repeats": "interleaved repeats; tables keep the median; a target's distribution-free 95 % interval needs 6 "
               "(default 6)",
    "no-swap": "skip the bind-model swap variant (container+impi: Intel MPI bound into an MPICH-ABI image; "
               "container+openmpi: the other Open MPI series bound into an Open MPI image)",
    "no-c": "skip the C reference variants",
    "no-bare-metal": "skip the bare-metal variants",
    "no-default-sandbox": "skip the 'container (default sandbox)' variant (the image under Docker's defaults, beside "
                          "the informed --cap-add SYS_PTRACE run)",
    "no-ceiling": "skip the copy ceiling beside osu_bw (one memcpy between the ranks' two CPUs, and one by "
                  "process_vm_readv, each repeat)",
    "until-decided": "instead of --repeats: repeat until every target and anomaly question is decided, looking after "
                     f"{', '.join(map(str, measure.SEQUENTIAL.looks))} repeats, each look's interval at "
                     f"{100 * measure.SEQUENTIAL.level:.0f} % so that stopping on a verdict keeps each question's "
                     "interval at 95 %",
    "budget": "minutes --until-decided may spend: the first look always runs, a later one only when the last "
              f"repeat's run times say it fits (default {measure.DEFAULT_BUDGET_MIN})",
    "results": "results file (default: results/<profile>.jsonl)",
    "strict": "exit 3 when a variant looks misconfigured (far below bare metal)",
    "no-plots": "do not draw the PNG plots",
    "matrix": MATRIX_HELP,
})
def bench(c, profile="ci", only=None, bench="", sizes=None, repeats="6", no_swap=False, no_c=False,
          no_bare_metal=False, no_default_sandbox=False, no_ceiling=False, until_decided=False, budget=None,
          results=None, strict=False, no_plots=False, matrix=MATRIX):
    """Benchmarks (OSU method) in built images, with the bind-model swap, C references and bare metal; tables, plots.

    Every repeat runs every variant before the next repeat starts; results are appended to a JSON-lines store.
    `nox -s bench -- OPTIONS` runs this task."""
    _run(measure.bench, matrix=matrix, profile=profile, only=only or [], benchmarks=bench, sizes=sizes or [],
         repeats=repeats, swap=not no_swap, c_reference=not no_c, bare_metal=not no_bare_metal,
         default_sandbox=not no_default_sandbox, ceiling=not no_ceiling, until_decided=until_decided, budget=budget,
         results=results, strict=strict, plots=not no_plots)


@task(help={
    "results": "results files: a path, a glob or a comma-separated list (e.g. 'results/*.jsonl')",
    "session": "only the runs of one `nox -s bench` session",
    "out": "Markdown file to write (default: beside the first results file)",
    "no-plots": "do not draw the PNG plots",
    "strict": "exit 3 when a variant looks misconfigured (far below bare metal)",
    "skip-corrupt": "warn about corrupt lines instead of failing",
})
def tabulate(c, results, session=None, out=None, no_plots=False, strict=False, skip_corrupt=False):
    """Rebuild the benchmark tables and plots from stored results, without running anything."""
    _run(measure.tables_from_results, results=results, session=session, out=out, plots=not no_plots, strict=strict,
         skip_corrupt=skip_corrupt)


SITE_HELP = "site profile: a name of slurm/sites/<site>.toml (cray-ex, ib-intelmpi, local, ...)"


@task(auto_shortflags=False, help={
    "site": SITE_HELP,
    "bench": "hello, osu_bw, osu_latency, osu_allreduce, h5py_write (an image with a parallel HDF5), cuda or convert",
    "image": "image tag, e.g. hpcimages/mpi4py:py3.11-mpich4.3.2 (its .sif must be converted, or be in the "
             "site's sif_dir)",
    "model": "hybrid (the image's own MPI; default), bind (the site's host MPI injected), or both: each repeat "
             "runs the two back to back in one job, so that `invoke collect` pairs them",
    "repeats": "runs of each model in the one job (default 1; at most 100), the order of the models rotated from "
               "one repeat to the next; the tables give the paired ratios an interval (6 repeats at least) and a "
               "verdict. Size the site's [slurm] time for them",
    "abi": "the MPI ABI of an image that is no cell of the matrix: mpich (default), mpi (the MPI-5 standard ABI) "
           "or openmpi (started by the site's [open_mpi] launcher); a cell's comes from the matrix",
    "sizes": "message sizes for the OSU benchmarks (bytes per rank for h5py_write), e.g. 1:4194304",
    "source": "convert only: what to build the .sif from (default docker://IMAGE)",
    "nodes": "nodes of the job (default: the site profile's); osu_bw/osu_latency need nodes x tasks = 2: "
             "--nodes 2 --ntasks-per-node 1 runs them across nodes",
    "ntasks-per-node": "ranks per node (default: the site profile's)",
    "no-sharens": "Apptainer sites: start each rank in its own user namespace (no `exec --sharens`): the plain "
                  "configuration, kept as a measured variant (`<site> no-sharens`)",
    "dry-run": "render the script into build/slurm/runs/ and print it; submit nothing",
    "matrix": MATRIX_HELP,
})
def submit(c, site, bench, image, model="hybrid", sizes="", source="", nodes=None, ntasks_per_node=None,
           no_sharens=False, abi="", repeats="1", dry_run=False, matrix=MATRIX):
    """Render a batch script for a site profile and submit it with `sbatch --parsable`, keeping a job record."""
    _run(cluster.submit, matrix=matrix, site=site, bench=bench, image=image, model=model, sizes=sizes, source=source,
         nodes=nodes, ntasks_per_node=ntasks_per_node, no_sharens=no_sharens, abi=abi, repeats=repeats,
         dry_run=dry_run)


@task(help={"all": "also list scripts only rendered (--dry-run)", "matrix": MATRIX_HELP})
def jobs(c, all=False, matrix=MATRIX):
    """List the job records with their live Slurm state (squeue, then sacct, then scontrol)."""
    _run(cluster.jobs, matrix=matrix, all_states=all)


@task(iterable=["site"], help={
    "timeout": "seconds to wait for unfinished jobs (default 1800); they stay pending for a later collect",
    "site": "only this site's jobs (repeatable)",
    "store": "results file (default: results/slurm-<site>.jsonl)",
    "matrix": MATRIX_HELP,
})
def collect(c, timeout="1800", site=None, store=None, matrix=MATRIX):
    """Wait for submitted jobs and store their results beside the `nox -s bench` ones (site = variant)."""
    _run(cluster.collect, matrix=matrix, timeout=timeout, site=site or [], store=store)


@task(help={"nodes": "compute nodes, each a container with its own hostname and address (default 2, at most 8)",
            "stop": "stop and remove the test cluster (its containers and network)", "matrix": MATRIX_HELP})
def testcluster(c, nodes="2", stop=False, matrix=MATRIX):
    """Start the Slurm test cluster for the site `local`: slurmctld and N slurmd nodes (Apptainer, munge, host MPI)."""
    _run(cluster.testcluster, matrix=matrix, stop=stop, nodes=nodes)


@task(help={"port": "port on 127.0.0.1 (default 5000)", "stop": "stop it (its storage is kept)", "matrix": MATRIX_HELP})
def registry(c, port="5000", stop=False, matrix=MATRIX):
    """Start (or stop) the project's own registry: Debian's docker-registry on 127.0.0.1, storage in build/registry."""
    _run(publish_stage.registry, matrix=matrix, port=port, stop=stop)


@task(iterable=["only"], help={
    "profile": PROFILE_HELP + " (default: published)",
    "only": ONLY_HELP.format(""),
    "registry": "HOST[:PORT]/NAMESPACE to push to (default: the profile's [publish] registry), e.g. 127.0.0.1:5000/hpc",
    "dry-run": "print what would be pushed under which tags, and what is refused and why; push nothing",
    "sif": "also push each cell's .sif (invoke convert) with `apptainer push oras://` and pull it back",
    "runtime": "Apptainer for --sif: auto, host or container",
    "keys": "the centre's keys folder, when the profile signs (default: $HPCIMAGES_KEYS, else "
            "~/.config/hpcimages/keys); their password comes from $COSIGN_PASSWORD",
    "matrix": MATRIX_HELP,
})
def publish(c, profile="published", only=None, registry=None, dry_run=False, sif=False, runtime="auto", keys=None,
            matrix=MATRIX):
    """Push images whose check passed on that exact image id, prove their digests, write the catalogue; where the
    profile says `sign = true`, sign every pushed digest and attest its SBOMs (SPDX, CycloneDX) and provenance."""
    _run(publish_stage.publish, matrix=matrix, profile=profile, only=only or [], registry=registry, dry_run=dry_run,
         sif=sif, runtime=runtime, keys=keys)


@task(help={
    "dir": "where to keep the keys, outside the repository (default: $HPCIMAGES_KEYS, else ~/.config/hpcimages/keys)",
    "name": "the centre's name, carried by the Apptainer key, e.g. 'Example HPC Centre'",
    "email": "the centre's contact address, carried by the Apptainer key",
    "force": "replace keys that are there (what they signed no longer verifies with the new public keys)",
    "matrix": MATRIX_HELP,
})
def keys(c, dir=None, name="", email="", force=False, matrix=MATRIX):
    """Create the centre's signing keys: a cosign key pair (images) and an Apptainer key pair (.sif), both encrypted
    with the password in $COSIGN_PASSWORD, in a folder outside the repository."""
    _run(publish_stage.keys, matrix=matrix, folder=dir, name=name, email=email, force=force)


@task(positional=["reference"], help={
    "reference": "an image (HOST[:PORT]/PATH/NAME:TAG or ...@sha256:DIGEST) or a .sif file",
    "key": "the centre's public key: cosign.pub for an image, apptainer.pub.asc for a .sif (default: the keys "
           "folder's)",
    "runtime": "Apptainer that runs a .sif: auto, host or container",
    "matrix": MATRIX_HELP,
})
def verify(c, reference, key=None, runtime="auto", matrix=MATRIX):
    """What a site runs before it trusts an image: its signature by the centre's key, its signed SBOMs and
    provenance, the provenance against the matrix at its revision, the versions the image reports against its SBOM.
    One line per check; exit 0 only when all hold."""
    _run(publish_stage.verify, matrix=matrix, reference=reference, key=key, runtime=runtime)


@task(iterable=["only", "host", "suite_include"], help={
    "profile": PROFILE_HELP + " (default: ci)",
    "only": ONLY_HELP.format(""),
    "host": "only this host-MPI stand-in of matrix.toml's [[host_mpi]], e.g. impi-rt-2021.18.1 (repeatable; "
            "the default is every stand-in but the one with swap = true)",
    "no-suite": "skip mpi4py's own test suite (the slowest column)",
    "suite-include": "run only the suite's modules matching this regular expression, e.g. test_p2p (repeatable)",
    "suite-timeout": "seconds one run of the suite may take before the test it hangs in is named (default 600)",
    "test-timeout": "seconds one test of the suite may take before it is named as hung and left out (default 60)",
    "repeats": "interleaved benchmark repeats per pair, medians reported (default 3; 0 skips the ratios)",
    "no-apptainer": "skip the Apptainer hello column",
    "matrix": MATRIX_HELP,
})
def abi(c, profile="ci", only=None, host=None, no_suite=False, suite_include=None, suite_timeout="600",
        test_timeout="60", repeats="3", no_apptainer=False, matrix=MATRIX):
    """ABI compatibility table: every built image x every host-MPI stand-in, injected as a site binds its MPI
    (loads by path, 2-rank hello in Docker and Apptainer, osu_bw/osu_latency ratios, mpi4py's test suite, verdict);
    build/abi/abi-table.{md,json}."""
    _run(abi_stage.abi, matrix=matrix, profile=profile, only=only or [], host=host or [], suite=not no_suite,
         suite_timeout=suite_timeout, test_timeout=test_timeout, repeats=repeats, apptainer=not no_apptainer,
         suite_include=suite_include or [])


@task(help={"profile": "profile whose [publish] registry is meant (default: ci)",
            "registry": "HOST[:PORT]/NAMESPACE (default: the profile's)",
            "results": "benchmark stores to summarise (default: results/*.jsonl; a glob or a comma-separated list)",
            "matrix": MATRIX_HELP})
def catalogue(c, profile="ci", registry=None, results=None, matrix=MATRIX):
    """Write build/catalogue/ again (index and one page per published image) from the reports and the images, and
    the catalogue's web site (build/pages/) from it."""
    _run(publish_stage.catalogue, matrix=matrix, profile=profile, registry=registry, results=results)


@task(help={"profile": "profile whose [publish] registry is meant (default: ci)",
            "registry": "HOST[:PORT]/NAMESPACE (default: the profile's)", "matrix": MATRIX_HELP})
def pages(c, profile="ci", registry=None, matrix=MATRIX):
    """Write the catalogue's static web site, build/pages/<host_port>/<namespace>/, from build/catalogue/ and docs/:
    the image matrix with a filter, one page per image (pull and verify commands, checks, host MPIs, benchmarks,
    packages) and the docs; no server needed, nothing loaded from the network. invoke publish and invoke catalogue
    write it too; a run with nothing changed rewrites no file."""
    _run(publish_stage.site_pages, matrix=matrix, profile=profile, registry=registry)

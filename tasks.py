"""Invoke tasks: thin wrappers over hpcimages.commands (run `invoke --list`, `invoke --help TASK`)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from invoke import Exit, task

sys.path.insert(0, str(Path(__file__).parent / "src"))  # works before `pip install -e .` too

from hpcimages import commands
from hpcimages.errors import HpcImagesError

MATRIX_HELP = "matrix file (default: matrix.toml)"
PROFILE_HELP = "matrix profile: published, offline or ci (see matrix.toml)"


def _run(fn: Callable[..., int], **kwargs: object) -> None:
    try:
        code = fn(**kwargs)
    except HpcImagesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise Exit(code=2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise Exit(code=130) from None
    if code:
        raise Exit(code=code)


@task(help={"matrix": MATRIX_HELP, "check": "only report files that differ from a fresh render (exit 1)"})
def render(c, matrix="matrix.toml", check=False):
    """Render dockerfiles/generated/<family>/<tag>/Dockerfile for every cell of every profile."""
    _run(commands.render, matrix=matrix, check=check)


@task(iterable=["only"], help={"matrix": MATRIX_HELP, "upgrade": "allow every pin to move to its newest version",
                               "only": "compile only locks whose path contains this (repeatable)",
                               "profile": "only the locks this profile's cells use (default: every profile's)"})
def lock(c, matrix="matrix.toml", upgrade=False, only=None, profile=None):
    """Compile pinned, hashed locks (uv pip compile) per family and Python version into pip-requirements/."""
    _run(commands.lock, matrix=matrix, upgrade=upgrade, only=only or [], profile=profile)


@task(help={"matrix": MATRIX_HELP, "profile": "profile whose bases to bootstrap (default: offline)",
            "force": "bootstrap again even if the image is up to date"})
def bases(c, matrix="matrix.toml", profile="offline", force=False):
    """Bootstrap offline base images (debootstrap from the configured Debian mirror + docker import)."""
    _run(commands.bases, matrix=matrix, profile=profile, force=force)


@task(iterable=["only"], help={
    "all": "build every cell of the profile (the default when --only is not given)",
    "profile": PROFILE_HELP + " (default: published)",
    "only": "only cells matching this glob on family:tag or family (repeatable); their parents come too",
    "jobs": "cells built in parallel (default 2)",
    "dry-run": "print the plan (cells, tags, FROM) and build nothing",
    "force": "rebuild cells even when their inputs are unchanged",
    "matrix": MATRIX_HELP,
})
def build(c, all=False, profile="published", only=None, jobs=2, dry_run=False, force=False, matrix="matrix.toml"):
    """Build the image matrix in dependency order: incremental, parallel, fail-soft, with a summary table."""
    _run(commands.build, matrix=matrix, profile=profile, only=only or [], jobs=int(jobs), dry_run=dry_run,
         force=force)


@task(iterable=["only"], help={
    "profile": PROFILE_HELP + " (default: published)",
    "only": "only cells matching this glob on family:tag or family (repeatable)",
    "matrix": MATRIX_HELP,
})
def check(c, profile="published", only=None, matrix="matrix.toml"):
    """Run the checks inside every built image: contents, labels, linking, 2-rank MPI, bind-model swap, hygiene."""
    _run(commands.check, matrix=matrix, profile=profile, only=only or [])


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
    _run(commands.tabulate_results, paths=commands.expand_paths(results), session=session, out=out,
         plots=not no_plots, strict=strict, skip_corrupt=skip_corrupt)


@task(iterable=["only"], help={
    "profile": PROFILE_HELP + " (default: published)",
    "only": "only cells matching this glob on family:tag or family (repeatable)",
    "runtime": "auto (a host apptainer/singularity, else the containerised one), host or container",
    "force": "convert again even when the .sif is newer than its image",
    "from-recipe": "build from the committed Singularity.def files instead of the Docker images",
    "matrix": MATRIX_HELP,
})
def convert(c, profile="published", only=None, runtime="auto", force=False, from_recipe=False,
            matrix="matrix.toml"):
    """Convert built images to .sif files in build/sif/ with a real Apptainer, then run the hello test in each."""
    if from_recipe:
        _run(commands.build_from_recipe, matrix=matrix, profile=profile, only=only or [], runtime=runtime)
    else:
        _run(commands.convert, matrix=matrix, profile=profile, only=only or [], runtime=runtime, force=force)


@task(help={"force": "bootstrap and build again"})
def tools(c, force=False):
    """Bootstrap the tools image (Apptainer, Slurm, munge, MPICH's launcher; Debian sid) into the engine."""
    _run(commands.tools, force=force)


SITE_HELP = "site profile: a name of slurm/sites/<site>.toml (cray-ex, ib-intelmpi, local, ...)"


@task(help={
    "site": SITE_HELP,
    "bench": "hello, osu_bw, osu_latency, osu_allreduce, cuda or convert",
    "image": "image tag, e.g. hpcimages/mpi4py:py3.11-mpich4.3.2 (its .sif must be converted, or be in the "
             "site's sif_dir)",
    "model": "hybrid (the image's MPICH; default) or bind (the site's host MPI injected)",
    "sizes": "message sizes for the OSU benchmarks, e.g. 1:4194304",
    "source": "convert only: what to build the .sif from (default docker://IMAGE)",
    "dry-run": "render the script into build/slurm/runs/ and print it; submit nothing",
    "matrix": MATRIX_HELP,
})
def submit(c, site, bench, image, model="hybrid", sizes="", source="", dry_run=False, matrix="matrix.toml"):
    """Render a batch script for a site profile and submit it with `sbatch --parsable`, keeping a job record."""
    _run(commands.submit, site=site, bench=bench, image=image, model=model, sizes=sizes, source=source,
         dry_run=dry_run, matrix=matrix)


@task(help={"all": "also list scripts only rendered (--dry-run)", "matrix": MATRIX_HELP})
def jobs(c, all=False, matrix="matrix.toml"):
    """List the job records with their live Slurm state (squeue, then sacct, then scontrol)."""
    _run(commands.jobs, all_states=all, matrix=matrix)


@task(iterable=["site"], help={
    "timeout": "seconds to wait for unfinished jobs (default 1800); they stay pending for a later collect",
    "site": "only this site's jobs (repeatable)",
    "store": "results file (default: results/slurm-<site>.jsonl)",
    "matrix": MATRIX_HELP,
})
def collect(c, timeout=1800, site=None, store=None, matrix="matrix.toml"):
    """Wait for submitted jobs and store their results beside the `nox -s bench` ones (site = variant)."""
    _run(commands.collect, timeout=int(timeout), site=site or [], store=store, matrix=matrix)


@task(help={"stop": "stop and remove the test cluster"})
def testcluster(c, stop=False):
    """Start the one-node Slurm test cluster (a container with Slurm, munge, Apptainer) for the site `local`."""
    _run(commands.testcluster, stop=stop)

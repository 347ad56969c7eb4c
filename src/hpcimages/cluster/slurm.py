"""Slurm: batch scripts rendered for a site profile, submitted with sbatch, tracked, and collected.

Every submission has a job record (``build/slurm/runs/<key>/record.json``) written before ``sbatch`` runs
and again after, so a job is never lost: an interrupted submission shows up as ``submitting``. ``collect``
waits for the jobs, parses their output into the same results store as ``nox -s bench`` (the site is the
variant), and marks each record only after its results are stored; a results row carries its job key, so a
collect interrupted between the two steps does not store a job twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import jinja2

from .. import state as statefile
from .. import tables
from ..define.matrix import IMAGE_RE, MPI_ABIS, SONAMES, Cell, Matrix
from ..define.sites import SITE_NAME_RE, Site, SiteError, load_site, site_names
from ..errors import HpcImagesError
from ..files import write_json
from ..measure.bench import BENCHMARKS, rotated
from ..measure.results import (
    PRIMARY,
    SITE_BIND,
    ResultRow,
    ResultsError,
    append_run,
    layout_contradiction,
    library_contradiction,
    load,
    parse_osu,
    series_of,
)
from ..paths import build_dir
from ..sif import apptainer
from ..sif.convert import sif_dir, sif_name
from ..validate import CONTROL_RE, UnsafeValue, problem, refuse_unsafe, shown

BENCHES = ("hello", "osu_bw", "osu_latency", "osu_allreduce", "h5py_write", "cuda", "convert")
#: jobs another task renders, submits and reads itself (`invoke site verify`): not `invoke submit`'s, not collected
NOT_COLLECTED = ("site_verify",)
MODELS = ("hybrid", "bind")
#: `invoke submit --model both`: each repeat runs the hybrid and the bind model back to back in one allocation
BOTH = "both"
MAX_REPEATS = 100
SCRIPT_NAME = "job.sbatch"
JOB_ID_RE = re.compile(r"\d{1,20}")
SIZES_RE = re.compile(r"\d{1,10}(:\d{1,10})?")
SOURCE_RE = re.compile(r"(docker|docker-archive|oras|library)://[A-Za-z0-9_@%+=:,./-]+")
HELLO_RE = re.compile(r"Hello World! I am process (\d+) of (\d+) on (\S+?)\.?$", re.M)
LIBRARY_RE = re.compile(r"^# library: (.+)$", re.M)
PROVENANCE_RE = re.compile(r"^# hpcimages: (.*)$", re.M)
#: the line before each run of a job of several (repeats.sbatch.j2), and the one after a run that failed
RUN_RE = re.compile(r"^# hpcimages-run: repeat (\d{1,3}) model (\w{1,10})$", re.M)
RUN_FAILED_RE = re.compile(r"# hpcimages-run-failed: repeat (\d{1,3}) model (\w{1,10}) exit (\d{1,3})")
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "SPECIAL_EXIT", "REVOKED"}
COMMAND_TIMEOUT_S = 120
POINT_TO_POINT = ("osu_bw", "osu_latency")  # exactly two ranks
MAX_LAYOUT = 10000
#: the benchmarks an Open MPI image has no job for, and why
OPEN_MPI_REFUSED = {"cuda": "no cuda-python image is built over Open MPI (matrix.toml excludes it)"}
#: what a launcher hands a rank to wire it up (its peers, its PMI/PMIx server): passed into a clean environment.
#: Open MPI's mpirun adds its own OMPI_ and PRTE_ settings (OPAL_PREFIX stays the launcher's: the image's Open MPI
#: must not be pointed at the host's folder)
LAUNCHER_ENV_RE = "^(PMI|PMIX|PALS)_"
OPEN_MPI_LAUNCHER_ENV_RE = "^(PMI|PMIX|PALS|OMPI|PRTE)_"


def launcher_env_names(pattern: str) -> str:
    """A launcher-variable pattern as the script's comment names it: ``PMI_*, PMIX_*, PALS_*``."""
    return ", ".join(f"{name}_*" for name in pattern[2:-2].split("|"))
Progress = Callable[[str], None]


class SlurmError(HpcImagesError):
    """Slurm refused something or cannot be reached; the message carries Slurm's own words."""


# ---------------------------------------------------------------------------------------------
# rendering


@dataclass(frozen=True)
class JobSpec:
    site: Site
    bench: str
    image: str
    model: str = "hybrid"
    sizes: str = ""
    source: str = ""  # convert: what to build the .sif from (default docker://<image>)
    nodes: int = 0  # the layout; 0: the site profile's
    ntasks_per_node: int = 0
    own_namespaces: bool = False  # Apptainer without --sharens although the site has it: the plain variant
    internal: bool = False  # a job of another task (NOT_COLLECTED), never from `invoke submit`
    repeats: int = 1  # runs of each model in the job (repeats.sbatch.j2 when more than one run)
    #: the image's MPI ABI: its matrix cell's (prepare); "" for an image of no cell means mpich, unless
    #: `invoke submit --abi` says otherwise. "openmpi": the site's [open_mpi] starts its ranks
    abi: str = ""

    @property
    def open_mpi(self) -> bool:
        return self.abi == "openmpi"

    @property
    def mpi_abi(self) -> str:
        return self.abi or "mpich"

    @property
    def models(self) -> tuple[str, ...]:
        return models_of(self.model)

    @property
    def several_runs(self) -> bool:
        return several_runs(self.model, self.repeats)

    @property
    def sharens(self) -> bool:
        return self.site.container.sharens and not self.own_namespaces

    @property
    def layout(self) -> tuple[int, int]:
        """(nodes, tasks per node) of the job: the command line's, else the site profile's; one task for convert."""
        if self.bench == "convert":
            return 1, 1
        return self.nodes or self.site.slurm.nodes, self.ntasks_per_node or self.site.slurm.ntasks_per_node

    def validate(self) -> None:
        if self.bench not in BENCHES and not (self.bench in NOT_COLLECTED and self.internal):
            raise SlurmError(f"unknown benchmark {shown(self.bench)}; known: {', '.join(BENCHES)}")
        if self.model not in (*MODELS, BOTH):
            raise SlurmError(f"unknown model {shown(self.model)}; known: {', '.join((*MODELS, BOTH))}")
        if not 1 <= self.repeats <= MAX_REPEATS:
            raise SlurmError(f"--repeats {self.repeats}: use 1 to {MAX_REPEATS}")
        if self.several_runs and self.bench not in BENCHMARKS:
            raise SlurmError(f"--bench {self.bench}: --repeats and --model {BOTH} are for the benchmarks, whose "
                             f"figures are paired by repeat ({', '.join(BENCHMARKS)})")
        if problem(self.image, IMAGE_RE):
            raise SlurmError(f"image {shown(self.image)}: not an image reference like "
                             "hpcimages/mpi4py:py3.11-mpich4.3.2")
        if self.abi and self.abi not in MPI_ABIS:
            raise SlurmError(f"--abi {shown(self.abi)}: one of {', '.join(MPI_ABIS)}")
        if self.open_mpi and self.bench != "convert":  # convert starts no ranks
            self._validate_open_mpi()
        elif "bind" in self.models and not self.site.has_bind_model and not self.open_mpi:
            raise SlurmError(f"site {self.site.name} has no [host_mpi] lib_dirs (or bind and lib_path): the bind "
                             "model needs them "
                             f"({self.site.path})")
        if self.sizes and self.bench in BENCHMARKS:  # the other jobs pass no sizes to their script
            reason = problem(self.sizes, SIZES_RE) and f"{shown(self.sizes)}: a size or a range like 1:4194304"
            reason = reason or BENCHMARKS[self.bench].sizes_problem(self.sizes)
            if reason:
                raise SlurmError(f"sizes {reason}")
        for option, value in (("--nodes", self.nodes), ("--ntasks-per-node", self.ntasks_per_node)):
            if not 0 <= value <= MAX_LAYOUT:
                raise SlurmError(f"{option} {value}: use 1 to {MAX_LAYOUT}")
        nodes, tasks = self.layout
        if self.bench in POINT_TO_POINT and nodes * tasks != 2:
            given = " and the command line" if self.nodes or self.ntasks_per_node else ""
            raise SlurmError(f"{self.bench} runs on exactly 2 ranks, but the layout is {nodes} node(s) x {tasks} "
                             f"task(s) (site {self.site.name}{given}): use --nodes 1 --ntasks-per-node 2 "
                             "(intra-node) or --nodes 2 --ntasks-per-node 1 (inter-node)")
        if self.source and problem(self.source, SOURCE_RE):
            raise SlurmError(f"source {shown(self.source)}: like docker://registry/repo:tag or "
                             "docker-archive:///x.tar")

    def _validate_open_mpi(self) -> None:
        site = self.site
        if not site.open_mpi.launcher:
            raise SlurmError(f"{self.image} is an Open MPI image and site {site.name} says nothing of Open MPI: add an "
                             "[open_mpi] table to its profile with the host's mpirun (launcher = \"/path/to/mpirun\","
                             " which starts one apptainer exec per rank inside the allocation), or launcher = "
                             f"\"srun\" with mpi = \"pmix\" where Slurm has PMIx ({site.path})")
        if "bind" in self.models and not site.open_mpi.lib_dirs:
            raise SlurmError(f"site {site.name} has no [open_mpi] lib_dirs: the bind model of an Open MPI image needs "
                             f"the host Open MPI's library folder ({site.path})")
        if self.bench in OPEN_MPI_REFUSED:
            raise SlurmError(f"--bench {self.bench}: {OPEN_MPI_REFUSED[self.bench]}")

    @property
    def host_dirs(self) -> tuple[str, ...]:
        """Where the bound host MPI lies inside the container: the Open MPI's for an Open MPI image."""
        return self.site.host_dirs_for(self.mpi_abi)

    @property
    def variant(self) -> str:
        """The results' variant (a job of both models: each model's, in MODELS' order, joined by ", ")."""
        return VARIANTS_JOIN.join(self.variant_of(model) for model in self.models)

    def variant_of(self, model: str) -> str:
        return variant_name(self.site.name, model, self.layout[0] > 1,
                            self.own_namespaces and self.site.container.sharens)


VARIANTS_JOIN = ", "  # a site name has no comma (SITE_NAME_RE)


def variant_name(site: str, model: str, inter_node: bool, no_sharens: bool) -> str:
    """A model's results variant: the site, +hostmpi for the bind model, " inter-node" when the ranks span nodes (so
    a table shows intra- and inter-node side by side), " no-sharens" for plain user namespaces."""
    name = site if model == "hybrid" else f"{site}{SITE_BIND}"
    name = f"{name} inter-node" if inter_node else name
    return f"{name} no-sharens" if no_sharens else name


def models_of(model: str) -> tuple[str, ...]:
    """The models a job runs: both for `--model both`, else its one."""
    return MODELS if model == BOTH else (model,)


def several_runs(model: str, repeats: int) -> bool:
    """A job of several runs (repeats.sbatch.j2): the models alternated, or one repeated."""
    return model == BOTH or repeats > 1


def rounds(models: tuple[str, ...], repeats: int) -> list[tuple[int, list[str]]]:
    """Each repeat's order of the models: rotated by one from a repeat to the next (hybrid first, then bind first)."""
    return [(r, rotated(list(models), r)) for r in range(1, repeats + 1)]


def job_key(spec: JobSpec, now: dt.datetime | None = None) -> str:
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%S%f")
    return f"{stamp}-{spec.site.name}-{spec.bench}-{spec.model}-{sif_name(spec.image)[:-4]}"


def sif_path(root: Path, spec: JobSpec) -> str:
    directory = spec.site.container.sif_dir or str(sif_dir(root))
    return f"{directory.rstrip('/')}/{sif_name(spec.image)}"


def _environment(root: Path) -> jinja2.Environment:
    # finalize: whatever a caller passes, no inserted value can add a line to the script (an sbatch directive
    # block ends at the first line that is not one, and a quote left open swallows the lines after it)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(root / "slurm" / "templates"),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False,
                             finalize=lambda value: refuse_unsafe(value, CONTROL_RE))
    env.filters["q"] = lambda value: shlex.quote(str(value))
    return env


def launch_line(spec: JobSpec) -> str:
    """The launcher and the runtime, e.g. `srun --mpi=pmi2 bash -c ... rank "$RUNTIME" exec -e "$IMAGE"`; for an
    Open MPI image the site's [open_mpi] launcher (the host's mpirun: one rank per task of the allocation)."""
    site = spec.site
    command, mpi, options = (site.open_mpi.launcher, site.open_mpi.mpi, site.open_mpi.options) if spec.open_mpi \
        else (site.launcher.command, site.launcher.mpi, site.launcher.options)
    words = [shlex.quote(command)]
    if mpi != "none":
        words.append(f"--mpi={mpi}")
    if spec.open_mpi and not site.open_mpi.uses_srun:
        nodes, tasks = spec.layout
        words += ["-n", str(nodes * tasks)]
    words += [shlex.quote(o) for o in options]
    if site.container.cleanenv:
        words += ['bash -c "$PASS_LAUNCHER_ENV" rank']
    if spec.open_mpi and spec.model == "hybrid":
        # the launcher's own settings (OPAL_PREFIX) must not reach the image's Open MPI, which a runtime without a
        # clean environment would hand them to
        private = [name for name, _ in site.open_mpi.vars if not re.match(OPEN_MPI_LAUNCHER_ENV_RE, name)]
        if private:
            words += ["env", *(f"-u {name}" for name in private)]
    words += ['"$RUNTIME"', "exec"]
    if spec.sharens:  # a node's ranks in one user namespace (see sites.Container.sharens)
        words.append("--sharens")
    if site.container.cleanenv:
        words.append("-e")
    if spec.bench == "cuda" and site.gpu.flag:
        words.append(site.gpu.flag)
    words.append('"$IMAGE"')
    return " ".join(words)


def preflight_libraries(site: Site, open_mpi: bool = False) -> list[str]:
    """What the bind model must be able to load inside the image: the host MPI, and libraries its variables
    name (e.g. I_MPI_PMI_LIBRARY). A host library built for a newer C library than the image's fails here."""
    named = [value for _, value in host_vars(site, open_mpi) if value.startswith("/")
             and re.search(r"\.so(\.|$)", value)]
    return [SONAMES["openmpi" if open_mpi else "mpich"], *named]


def host_vars(site: Site, open_mpi: bool) -> tuple[tuple[str, str], ...]:
    """The host MPI's variables of the bind model: [open_mpi] vars for an Open MPI image, [host_mpi] vars else."""
    return site.open_mpi.vars if open_mpi else site.host_mpi.vars


def render_files(root: Path, spec: JobSpec, run_dir: Path, extra: dict | None = None) -> dict[str, str]:
    """A job's files by name: its script, and for a job of several runs one script per model (each what a job of that
    model alone would be), which the job's script runs in turn, repeat by repeat."""
    if not spec.several_runs:
        return {SCRIPT_NAME: render(root, spec, run_dir, extra)}
    spec.validate()
    files = {}
    for model in spec.models:
        one = dataclasses.replace(spec, model=model, repeats=1)
        files[f"{model}.sh"] = render(root, one, run_dir, {**(extra or {}), "script": str(run_dir / f"{model}.sh")})
    context = {**_context(root, spec, run_dir), "models": spec.models, "repeats": spec.repeats,
               "rounds": rounds(spec.models, spec.repeats)}
    files[SCRIPT_NAME] = _render_template(root, spec, "repeats.sbatch.j2", context)
    return files


def render(root: Path, spec: JobSpec, run_dir: Path, extra: dict | None = None) -> str:
    spec.validate()
    return _render_template(root, spec, f"{spec.bench}.sbatch.j2", {**_context(root, spec, run_dir), **(extra or {})})


def _render_template(root: Path, spec: JobSpec, name: str, context: dict) -> str:
    try:
        text = _environment(root).get_template(name).render(context)
    except UnsafeValue as exc:
        raise SlurmError(f"{spec.site.path}: {exc}") from None
    return text.rstrip("\n") + "\n"


def _context(root: Path, spec: JobSpec, run_dir: Path) -> dict:
    site = spec.site
    bench_dir = site.container.bench_dir or str(root / "bench")
    binds = [*site.container.bind, bench_dir]
    if spec.model == "bind":
        binds += [*site.open_mpi.lib_dirs, *site.open_mpi.bind] if spec.open_mpi else \
            [*site.host_mpi.lib_dirs, *site.host_mpi.bind]
    if spec.bench == "h5py_write":  # the ranks' shared HDF5 file lives in the job's folder
        binds.append(str(run_dir))
    nodes, ntasks_per_node = spec.layout
    default_sizes = BENCHMARKS[spec.bench].default_sizes if spec.bench in BENCHMARKS else ""
    launcher_env = OPEN_MPI_LAUNCHER_ENV_RE if spec.open_mpi else LAUNCHER_ENV_RE
    models = f"{' and '.join(spec.models)} model{'s' if len(spec.models) > 1 else ''}"
    models = f"{spec.repeats} repeat{'s' if spec.repeats > 1 else ''} of the {models}" if spec.several_runs else \
        f"{spec.model} model"
    return {
        "title": f"hpcimages {spec.bench} job: {spec.image} on {site.name} ({models})",
        "site": site, "bench": spec.bench, "image": spec.image, "model": spec.model,
        "script": str(run_dir / SCRIPT_NAME), "output": str(run_dir / "slurm-%j.out"),
        "job_name": f"hpcimages-{spec.bench}", "sif": sif_path(root, spec), "bench_dir": bench_dir,
        "nodes": nodes, "ntasks_per_node": ntasks_per_node,
        "layout_args": (f" --nodes {spec.nodes}" if spec.nodes else "") +
                       (f" --ntasks-per-node {spec.ntasks_per_node}" if spec.ntasks_per_node else "") +
                       (" --no-sharens" if spec.own_namespaces else "") +
                       (f" --repeats {spec.repeats}" if spec.repeats > 1 else ""),
        "gpu": spec.bench == "cuda", "bindpath": ",".join(binds),
        "ld_library_path": ":".join(site.open_mpi.lib_dirs if spec.open_mpi else
                                    (*site.host_mpi.lib_dirs, *site.host_mpi.lib_path)),
        "preflight_libs": preflight_libraries(site, spec.open_mpi), "lib_dirs": ":".join(spec.host_dirs),
        "open_mpi": spec.open_mpi, "host_vars": host_vars(site, spec.open_mpi),
        "soname": SONAMES["openmpi" if spec.open_mpi else "mpich"],
        "launcher_env_re": launcher_env, "launcher_env_names": launcher_env_names(launcher_env),
        "mpi_env": sorted(apptainer.MPI_ENV_IN_CONTAINER.items()),
        "launch": launch_line(spec), "sizes": spec.sizes or default_sizes,
        "source": spec.source or f"docker://{spec.image}", "run_dir": str(run_dir),
    }


# ---------------------------------------------------------------------------------------------
# job records


@dataclass
class JobRecord:
    key: str
    site: str
    bench: str
    image: str
    model: str
    variant: str
    script: str
    run_dir: str
    sif: str
    cell: str | None = None
    mpi: str | None = None
    nodes: int = 0  # the job's layout (0 in records of earlier versions: the site's)
    ntasks_per_node: int = 0
    abi: str = "mpich"  # the image's MPI ABI: which host MPI folders prove a bind-model run
    repeats: int = 1  # runs of each model (a job of several runs: the models' variants joined in `variant`)
    state: str = "rendered"  # rendered | submitting | submitted | rejected | failed | collected
    job_id: str | None = None
    slurm_state: str | None = None
    message: str = ""
    created: str = field(default_factory=lambda: _now())
    submitted: str | None = None
    finished: str | None = None
    store: str | None = None
    summary: str = ""

    field_checks: ClassVar[dict[str, statefile.Check]] = {
        "nodes": statefile.at_most(MAX_LAYOUT), "ntasks_per_node": statefile.at_most(MAX_LAYOUT),
        "repeats": lambda v: None if 1 <= v <= MAX_REPEATS else f"must be from 1 to {MAX_REPEATS}, got {shown(v)}",
        "model": statefile.one_of(*MODELS, BOTH),
        "state": statefile.one_of("rendered", "submitting", "submitted", "rejected", "failed", "collected"),
        "abi": statefile.one_of(*MPI_ABIS),
        "job_id": lambda v: None if JOB_ID_RE.fullmatch(v) else f"{shown(v)} is not a Slurm job id",
        "cell": statefile.cell_ref, "site": lambda v: problem(v, SITE_NAME_RE)}

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / "record.json"

    @property
    def result_key(self) -> str:
        """What each of its results rows carries as `job`: unique across sites and restarted clusters."""
        return f"{self.site}:{self.job_id}:{self.key}"

    @property
    def several_runs(self) -> bool:
        return several_runs(self.model, self.repeats)

    def run_variants(self) -> dict[str, str]:
        """model -> its results' variant, as variant_name names it from the site and the layout (the record's
        `variant` must say the same: one whose labels were swapped or edited would store each model's figures
        under the other's name; the record does not keep --no-sharens, so either is taken)."""
        models = models_of(self.model)
        given = self.variant.split(VARIANTS_JOIN)
        for no_sharens in (False, True):
            if given == [variant_name(self.site, m, self.nodes > 1, no_sharens) for m in models]:
                return dict(zip(models, given, strict=True))
        raise ResultsError(f"record {self.key}: variant {shown(self.variant)} is not what the model(s) "
                           f"{', '.join(models)} at site {self.site} are named ('{self.site}', "
                           f"'{self.site}{SITE_BIND}', with ' inter-node' when the job spans nodes)")

    @property
    def output(self) -> Path | None:
        return Path(self.run_dir) / f"slurm-{self.job_id}.out" if self.job_id else None

    def save(self) -> None:
        """Written atomically and synced: a reader never sees half a record, a crash never loses a submission."""
        write_json(self.path, asdict(self), sync=True)


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def runs_dir(root: Path, site: Site | None = None) -> Path:
    """Where scripts, outputs and records go: the site's ``[slurm] runs_dir`` (a file system its jobs see), else
    build/slurm/runs, which HPCIMAGES_SLURM_RUNS moves (it must be visible to the jobs)."""
    if site is not None and site.slurm.runs_dir:
        return Path(site.slurm.runs_dir)
    override = os.environ.get("HPCIMAGES_SLURM_RUNS")
    return Path(override) if override else build_dir(root) / "slurm" / "runs"


def record_dirs(root: Path) -> list[Path]:
    """Every folder job records may be in: the default one and each site profile's own ``runs_dir``."""
    folders = [runs_dir(root)]
    sites_dir = root / "slurm" / "sites"
    for name in site_names(sites_dir):
        try:
            site = load_site(sites_dir, name)
        except SiteError:
            continue  # a broken profile is reported when it is used, not by every `invoke jobs`
        folder = runs_dir(root, site)
        if folder not in folders:
            folders.append(folder)
    return folders


def load_records(root: Path) -> list[JobRecord]:
    """Every job record of the default folder and the sites' runs_dir, oldest first (a key starts with its time, so
    records of several folders interleave in the order they were made)."""
    records = []
    for path in sorted(p for folder in record_dirs(root) for p in folder.glob("*/record.json")):
        try:
            records.append(read_record(path))
        except statefile.StateError as exc:
            raise SlurmError(f"unreadable job record: {exc}; it is left as it is: move its folder away to go on") \
                from None
    return sorted(records, key=lambda r: r.key)


def read_record(path: Path) -> JobRecord:
    """One record, every field checked. Its folder is the one it lies in, whatever ``run_dir`` says (a hand-edited
    one would send collect's writes elsewhere; a moved checkout's records still read), and so is its script."""
    record = statefile.typed(JobRecord, statefile.load_json(path, "job record"), path, "record")
    folder = path.parent
    if record.key != folder.name:
        raise statefile.StateError(f"{path}: record: key: {shown(record.key)} is not the name of the folder the "
                                   "record lies in")
    if Path(record.script).name != SCRIPT_NAME:
        raise statefile.StateError(f"{path}: record: script: {shown(record.script)} is not the record's "
                                   f"{SCRIPT_NAME}")
    record.run_dir, record.script = str(folder), str(folder / SCRIPT_NAME)
    return record


def not_a_cell(matrix: Matrix, image: str, consequence: str = " (its results will name no cell)") -> str:
    """What to tell someone whose image tag is no cell of the matrix: the nearest tags of every profile."""
    tags = sorted({c.image(p.registry) for p in matrix.profiles.values() for c in matrix.cells(p)})
    nearest = difflib.get_close_matches(image, tags, n=3, cutoff=0.6)
    hint = f"; nearest: {', '.join(nearest)}" if nearest else f"; e.g. {tags[0]}"
    return f"{shown(image)} is not a cell of any profile of the matrix{consequence}{hint}"


def cell_for(matrix: Matrix, image: str) -> Cell | None:
    """The matrix cell of an image tag (``registry/ns/family:tag``), if the tag is one of the matrix's."""
    repo, _, tag = image.rpartition(":")
    return matrix.cell(f"{repo.rsplit('/', 1)[-1]}:{tag}")


def cell_of(matrix: Matrix, image: str) -> tuple[str | None, str | None]:
    """The matrix cell (and its MPI) of an image tag, if the tag is one of the matrix's."""
    cell = cell_for(matrix, image)
    return (cell.ref, cell.mpi.key) if cell else (None, None)


# ---------------------------------------------------------------------------------------------
# talking to Slurm


class SlurmClient:
    """sbatch / squeue / sacct / scontrol, from the site's `commands` directory or the PATH."""

    def __init__(self, root: Path, site: Site) -> None:
        self.site = site
        self.bin_dir = (root / site.slurm.commands) if site.slurm.commands else None
        self.hint = f" (`invoke testcluster` provides them for the site {site.name})" if self.bin_dir else ""

    def command(self, name: str) -> str:
        found = shutil.which(name, path=str(self.bin_dir)) if self.bin_dir else shutil.which(name)
        if not found:
            where = self.bin_dir or "the PATH"
            raise SlurmError(f"`{name}` is not in {where}{self.hint}: run this where Slurm's commands are")
        return found

    def run(self, name: str, args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run([self.command(name), *args], cwd=cwd, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise SlurmError(f"`{name} {' '.join(args)}` did not answer in {COMMAND_TIMEOUT_S}s") from None

    def sbatch(self, script: Path) -> str:
        proc = self.run("sbatch", ["--parsable", str(script)], cwd=script.parent)
        message = (proc.stderr.strip() or proc.stdout.strip())
        if proc.returncode != 0:
            raise SlurmError(f"sbatch rejected {script.name}: {message or f'exit {proc.returncode}'}")
        job_id = proc.stdout.strip().splitlines()[-1].split(";")[0] if proc.stdout.strip() else ""
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed no job id: {message!r}")
        return job_id

    def state(self, job_id: str) -> tuple[str, str]:
        """(state, detail): squeue for live jobs, then sacct, then scontrol (clusters without accounting)."""
        proc = self.run("squeue", ["-h", "-j", job_id, "-o", "%T|%r"])
        if proc.returncode == 0 and proc.stdout.strip():
            state, _, reason = proc.stdout.strip().splitlines()[0].partition("|")
            return state, "" if reason in ("None", "") else reason
        if shutil.which("sacct", path=str(self.bin_dir) if self.bin_dir else None):
            proc = self.run("sacct", ["-n", "-X", "-P", "-j", job_id, "-o", "State,ExitCode,Reason"])
            if proc.returncode == 0 and proc.stdout.strip():
                state, exit_code, reason = [*proc.stdout.strip().splitlines()[0].split("|"), "", ""][:3]
                return state.split()[0], f"exit {exit_code}" + (f", {reason}" if reason not in ("", "None") else "")
        proc = self.run("scontrol", ["show", "job", "-o", job_id])
        if proc.returncode == 0 and "JobState=" in proc.stdout:
            fields = dict(re.findall(r"(\w+)=(\S*)", proc.stdout))
            reason = fields.get("Reason", "None")
            detail = f"exit {fields.get('ExitCode', '?')}" + (f", {reason}" if reason != "None" else "")
            return fields["JobState"], detail
        return "UNKNOWN", (proc.stderr.strip() or "no longer known to squeue, sacct or scontrol")[:300]


# ---------------------------------------------------------------------------------------------
# submit / jobs / collect


def prepare(root: Path, matrix: Matrix, spec: JobSpec, now: dt.datetime | None = None,
            extra: dict | None = None) -> JobRecord:
    """Render the script into its run directory and write the record (state `rendered`)."""
    cell = cell_for(matrix, spec.image)
    if cell is not None and spec.abi and spec.abi != cell.mpi.abi:
        raise SlurmError(f"--abi {spec.abi}: {spec.image} is the cell {cell.ref}, whose MPI ABI is {cell.mpi.abi}")
    spec = dataclasses.replace(spec, abi=cell.mpi.abi if cell is not None else spec.mpi_abi)
    spec.validate()
    sif = sif_path(root, spec)
    if not spec.site.container.sif_dir and spec.bench != "convert" and not Path(sif).is_file():
        cell, _ = cell_of(matrix, spec.image)
        if cell is None:
            raise SlurmError(f"{not_a_cell(matrix, spec.image, '')} (an image of your own runs once its .sif is "
                             f"at {sif})")
        raise SlurmError(f"{sif} does not exist: convert the image first (`invoke convert --only {cell}`), or set "
                         f"[container] sif_dir in {spec.site.path} to where the .sif files are on the cluster")
    key = job_key(spec, now)
    run_dir = runs_dir(root, spec.site) / key
    run_dir.mkdir(parents=True)
    for name, text in render_files(root, spec, run_dir, extra).items():
        (run_dir / name).write_text(text, encoding="utf-8")
        (run_dir / name).chmod(0o755)
    script = run_dir / SCRIPT_NAME
    cell, mpi = cell_of(matrix, spec.image)
    nodes, tasks = spec.layout
    record = JobRecord(key=key, site=spec.site.name, bench=spec.bench, image=spec.image, model=spec.model,
                       variant=spec.variant, script=str(script), run_dir=str(run_dir), sif=sif, cell=cell, mpi=mpi,
                       nodes=nodes, ntasks_per_node=tasks, abi=spec.abi, repeats=spec.repeats)
    record.save()
    return record


def submit(root: Path, matrix: Matrix, spec: JobSpec, dry_run: bool = False, extra: dict | None = None) -> JobRecord:
    record = prepare(root, matrix, spec, extra=extra)
    if dry_run:
        return record
    client = SlurmClient(root, spec.site)
    client.command("sbatch")  # a missing sbatch is not a rejection: fail before the record says `submitting`
    record.state = "submitting"
    record.save()
    try:
        record.job_id = client.sbatch(Path(record.script))
    except SlurmError as exc:
        record.state, record.message = "rejected", str(exc)
        record.save()
        raise
    record.state, record.submitted = "submitted", _now()
    record.save()
    return record


def live_states(root: Path, sites: dict[str, Site], records: Iterable[JobRecord]) -> dict[str, tuple[str, str]]:
    states = {}
    for record in records:
        if record.state == "submitted" and record.job_id and record.site in sites:
            try:
                states[record.key] = SlurmClient(root, sites[record.site]).state(record.job_id)
            except SlurmError as exc:
                states[record.key] = ("?", str(exc))
    return states


def jobs_table(records: list[JobRecord], states: dict[str, tuple[str, str]]) -> str:
    rows = []
    for r in records:
        live, detail = states.get(r.key, (r.slurm_state or "-", ""))
        note = r.summary or r.message or detail
        rows.append([r.key[:15], r.site, r.bench, r.model, r.image.rsplit("/", 1)[-1], r.job_id or "-", r.state,
                     live, note[:100]])
    return tables.terminal(rows, ["record", "site", "bench", "model", "image", "job", "state", "slurm", "note"])


@dataclass
class Collected:
    record: JobRecord
    stored: int = 0


def parse_output(record: JobRecord, text: str, expected_ranks: int, host_dirs: tuple[str, ...] = ()) -> \
        tuple[list[ResultRow], str]:
    """Result rows from a job's output, and a one-line summary; raises ResultsError when it holds none."""
    body = PROVENANCE_RE.sub("", text)
    provenance = dict(kv.split("=", 1) for line in PROVENANCE_RE.findall(text) for kv in line.split() if "=" in kv)
    library = (LIBRARY_RE.findall(text) or [None])[0]
    base = {"session": record.key, "run_id": record.key, "job": record.result_key,
            "repeat": 1, "date": record.finished or _now(), "host": provenance.get("node", "?"),
            "site": record.site, "profile": None, "variant": record.variant, "language": "python",
            "mpi": record.mpi, "cell": record.cell, "image": record.image, "image_id": _image_id(record.sif),
            "command": record.script, "model": record.model}  # what every row of this job shares
    if record.bench == "hello":
        ranks = sorted({(int(r), int(n)) for r, n, _ in HELLO_RE.findall(body)})
        seen = {r for r, _ in ranks}
        if not ranks or seen != set(range(expected_ranks)) or {n for _, n in ranks} != {expected_ranks}:
            raise ResultsError(f"expected 'process R of {expected_ranks}' from every rank, got "
                               f"{[f'{r} of {n}' for r, n in ranks] or 'no hello lines'}")
        row = ResultRow(**base, benchmark="hello", size=0, value=len(seen), metric="ranks", unit="ranks",
                        mpi_library=library)
        return [row], f"{len(seen)} of {expected_ranks} ranks answered" + (f"; {library}" if library else "")
    if record.bench not in BENCHMARKS:
        return [], "done (no figures to store)"
    parsed = parse_osu(body)
    contradiction = library_contradiction(parsed.library_file, host_dirs, record.model == "bind") or \
        layout_contradiction(parsed.layout, record.nodes > 1)  # the variant says inter-node exactly then
    if contradiction:
        raise ResultsError(f"{contradiction}; the rows are not stored under {record.variant!r}")
    rows = [ResultRow(**base, benchmark=name, size=int(r["size"]), value=r[metric], metric=metric,
                      unit=unit, mpi_library=parsed.library, mpi_library_file=parsed.library_file,
                      mpi_abi=parsed.mpi_abi, layout=parsed.layout, placement=parsed.placement,
                      transport=parsed.transport, settings=parsed.settings,
                      extra={k: v for k, v in r.items() if k not in ("size", metric)})
            for name in series_of(parsed.benchmark) for metric, unit in [PRIMARY[name]] for r in parsed.rows]
    last = rows[len(parsed.rows) - 1]
    return rows, (f"{len(parsed.rows)} sizes; {last.size} B: {last.value:.2f} {last.unit} ({last.benchmark}); "
                  f"{parsed.library or ''}").strip()


def parse_runs(record: JobRecord, text: str, expected_ranks: int, host_dirs: tuple[str, ...] = (),
               cut_off: bool = False) -> tuple[list[ResultRow], str]:
    """Result rows of a job of several runs: each run parsed as a job of its model alone would be (its library proven
    against its label), numbered by its repeat; the job's key is the session that pairs them. A run that failed, or
    whose output is not usable, is named in the summary and stores nothing; raises ResultsError when none gave
    figures. ``cut_off``: the job ended before its script did (a time limit): its last run may be cut short and is
    not stored."""
    variants = record.run_variants()
    marks = list(RUN_RE.finditer(text))
    if cut_off and marks:
        marks, last = marks[:-1], marks[-1]
    rows: list[ResultRow] = []
    problems: list[str] = []
    seen: set[tuple[int, str]] = set()
    for i, mark in enumerate(marks):
        repeat, model = int(mark[1]), mark[2]
        body = text[mark.end():marks[i + 1].start() if i + 1 < len(marks) else (last.start() if cut_off else None)]
        where = f"repeat {repeat} {model}"
        if model not in variants or not 1 <= repeat <= record.repeats or (repeat, model) in seen:
            problems.append(f"{where}: not a run of this job ({record.repeats} repeats of {', '.join(variants)}), "
                            "or named twice")
            continue
        seen.add((repeat, model))
        failed = run_failure(body, repeat, model)
        if failed:
            problems.append(f"{where}: exit {failed}")
            continue
        try:
            found, _ = parse_output(dataclasses.replace(record, model=model, variant=variants[model]), body,
                                    expected_ranks, host_dirs)
        except ResultsError as exc:
            problems.append(f"{where}: {exc}")
            continue
        script = str(Path(record.run_dir) / f"{model}.sh")
        rows += [dataclasses.replace(r, repeat=repeat, run_id=f"{record.key}:{repeat}:{model}", command=script)
                 for r in found]
    wanted = record.repeats * len(variants)
    if not rows:
        raise ResultsError(f"none of its {wanted} runs gave figures" + (f": {named(problems)}" if problems
                                                                         else " (no '# hpcimages-run:' line)"))
    runs = len({(r.repeat, r.variant) for r in rows})
    summary = f"{runs} of {wanted} runs ({record.repeats} repeats of {VARIANTS_JOIN.join(variants.values())})"
    return rows, summary + (f"; not stored: {named(problems)}" if problems else "")


def run_failure(body: str, repeat: int, model: str) -> str | None:
    """The exit status the job's script wrote after this run when it failed: its section's last line, naming this
    very run (a line that names another, wherever it stands, is the run's own output and proves nothing)."""
    lines = body.rstrip("\n").splitlines()
    found = RUN_FAILED_RE.fullmatch(lines[-1]) if lines else None
    return found[3] if found and (int(found[1]), found[2]) == (repeat, model) else None


def named(problems: list[str], most: int = 3) -> str:
    """The first problems, and how many more there were."""
    more = len(problems) - most
    return "; ".join(problems[:most]) + (f" (+{more} more)" if more > 0 else "")


def _image_id(sif: str) -> str | None:
    recorded = (statefile.cached_object(Path(sif).with_suffix(".json")) or {}).get("image_id")
    return recorded if isinstance(recorded, str) else None


def _already_stored(store: Path) -> set[str]:
    if not store.is_file():
        return set()
    records, _ = load([store], skip_corrupt=True)
    return {r.job for r in records if r.job}


def collect(root: Path, sites: dict[str, Site], store_for: Callable[[str], Path], *, timeout_s: float = 1800,
            poll_s: float = 5, progress: Progress = print, only: Iterable[str] = ()) -> list[Collected]:
    """Wait for every submitted job, store its results, mark its record. Returns what this call collected.

    Raises SlurmError when jobs are still running at the timeout (their records stay `submitted`: a later
    collect goes on with them)."""
    wanted = set(only)
    pending = [r for r in load_records(root) if r.state == "submitted" and (not wanted or r.site in wanted)
               and r.bench not in NOT_COLLECTED]
    if not pending:
        progress("nothing to collect: no submitted jobs")
        return []
    progress(f"collecting {len(pending)} job(s): " + ", ".join(f"{r.job_id} ({r.bench})" for r in pending))
    deadline = time.monotonic() + timeout_s
    done: list[Collected] = []
    stored: dict[Path, set[str]] = {}
    last_report = 0.0
    while pending:
        for record in list(pending):
            site = sites.get(record.site)
            if site is None:
                raise SlurmError(f"record {record.key}: unknown site {record.site!r}")
            state, detail = SlurmClient(root, site).state(record.job_id or "")
            if state not in TERMINAL and state != "UNKNOWN":
                continue
            pending.remove(record)
            store = store_for(record.site)
            if store not in stored:  # read each store once, not once per job
                stored[store] = _already_stored(store)
            done.append(_finish(record, site, state, detail, store, stored[store], progress))
        if not pending:
            break
        now = time.monotonic()
        if now > deadline:
            raise SlurmError(f"{len(pending)} job(s) still not finished after {timeout_s:.0f}s: "
                             + ", ".join(f"{r.job_id}" for r in pending) + " (run `invoke collect` again later)")
        if now - last_report >= 30:
            progress(f"waiting for {len(pending)} job(s): " + ", ".join(f"{r.job_id} ({r.bench})" for r in pending))
            last_report = now
        time.sleep(poll_s)
    return done


def _finish(record: JobRecord, site: Site, state: str, detail: str, store: Path, stored: set[str],
            progress: Progress) -> Collected:
    record.slurm_state, record.finished = state, _now()
    output = record.output
    text = output.read_text(encoding="utf-8", errors="replace") if output and output.is_file() else ""
    # a job of several runs that Slurm ended early (its time limit, a cancel) keeps the runs it finished
    partial = state != "COMPLETED" and record.several_runs and RUN_RE.search(text) is not None
    if state != "COMPLETED" and not partial:
        record.state = "failed"
        record.message = f"Slurm: {state} ({detail}): " + _tail(text)
        record.save()
        progress(f"job {record.job_id} ({record.bench}) {state}: {record.message}")
        return Collected(record)
    expected = (record.nodes or site.slurm.nodes) * (record.ntasks_per_node or site.slurm.ntasks_per_node)
    try:
        if record.several_runs:
            rows, summary = parse_runs(record, text, expected, site.host_dirs_for(record.abi), cut_off=partial)
        else:
            rows, summary = parse_output(record, text, expected, site.host_dirs_for(record.abi))
        if partial:
            summary = f"Slurm: {state} ({detail}) before the job's end, its last run not stored; {summary}"
    except ResultsError as exc:
        record.state, record.message = "failed", f"completed, but its output is not usable: {exc}: {_tail(text)}"
        record.save()
        progress(f"job {record.job_id} ({record.bench}): {record.message}")
        return Collected(record)
    if record.result_key not in stored:
        append_run(store, rows)
        stored.add(record.result_key)
    record.state, record.store, record.summary = "collected", str(store), summary
    record.save()
    progress(f"job {record.job_id} ({record.bench}, {record.variant}): {summary} -> {store}")
    return Collected(record, len(rows))


def _tail(text: str) -> str:
    return apptainer.tail(text, lines=6, limit=800)

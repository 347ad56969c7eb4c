"""The cluster stage's tasks: `invoke submit`, `invoke jobs`, `invoke collect`, `invoke testcluster`."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from ..cli import say, whole_number
from ..define import load_matrix
from ..define import sites as sites_mod
from ..engine import connect
from ..files import output_problem
from ..paths import relative, repository_root
from . import slurm as slurm_mod
from . import testcluster as testcluster_mod


def _sites(root: Path, records: list[slurm_mod.JobRecord] | None = None) -> dict[str, sites_mod.Site]:
    """The site profiles the job records name (a broken profile no record uses stops nothing)."""
    directory = root / "slurm" / "sites"
    records = slurm_mod.load_records(root) if records is None else records
    known = set(sites_mod.site_names(directory))
    return {name: sites_mod.load_site(directory, name) for name in sorted({r.site for r in records} & known)}


def submit(matrix: str, site: str, bench: str, image: str, model: str = "hybrid", sizes: str = "",
           source: str = "", dry_run: bool = False, nodes: int | str | None = None,
           ntasks_per_node: int | str | None = None,
           no_sharens: bool = False, abi: str = "", repeats: int | str = 1) -> int:
    m = load_matrix(matrix)
    profile = sites_mod.load_site(m.root / "slurm" / "sites", site)
    for warning in profile.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    limit = slurm_mod.MAX_LAYOUT
    # left out: the site profile's layout (0 in the spec); given, at least 1 (`--nodes 0` is no layout)
    layout = {"nodes": 0 if nodes is None else whole_number("--nodes", nodes, 1, limit),
              "ntasks_per_node": 0 if ntasks_per_node is None else whole_number("--ntasks-per-node",
                                                                              ntasks_per_node, 1, limit)}
    spec = slurm_mod.JobSpec(profile, bench, image, model, sizes, source, **layout, own_namespaces=no_sharens,
                             abi=abi, repeats=whole_number("--repeats", repeats, 1, slurm_mod.MAX_REPEATS))
    record = slurm_mod.submit(m.root, m, spec, dry_run=dry_run)
    if record.cell is None:  # allowed where the site has the .sif; the results will name no cell
        print(f"warning: {slurm_mod.not_a_cell(m, image)}", file=sys.stderr)
    script = Path(record.script)
    if dry_run:
        say(script.read_text(encoding="utf-8"))
        beside = sorted(p.name for p in script.parent.glob("*.sh"))
        also = f", with the runs' scripts {' and '.join(beside)} beside it" if beside else ""
        say(f"rendered {script}{also} (not submitted: --dry-run); submit it by hand with: sbatch {script}")
        return 0
    runs = f"{record.repeats} repeat(s) of the {' and '.join(spec.models)} model(s)" if spec.several_runs else \
        f"{model} model"
    say(f"submitted {bench} ({runs}, {image}, {record.nodes} node(s) x {record.ntasks_per_node} task(s)) to "
        f"{site}: job {record.job_id}; script {script}")
    say("follow it with `invoke jobs`; store its results with `invoke collect`")
    return 0


def jobs(matrix: str, all_states: bool = False) -> int:
    root = repository_root(matrix)
    records = slurm_mod.load_records(root)
    if not all_states:
        records = [r for r in records if r.state != "rendered"]
    if not records:
        say("no job records (submit one with `invoke submit`)")
        return 0
    say(slurm_mod.jobs_table(records, slurm_mod.live_states(root, _sites(root, records), records)))
    return 0


def collect(matrix: str, timeout: int | str = 1800, site: Iterable[str] = (), store: str | None = None) -> int:
    timeout = whole_number("--timeout", timeout, 0, 7 * 24 * 3600)
    root = repository_root(matrix)

    refused = output_problem("--store", Path(store), (), ".jsonl") if store is not None else None
    if refused:
        raise slurm_mod.SlurmError(refused)

    def store_for(name: str) -> Path:
        return Path(store) if store else root / "results" / f"slurm-{name}.jsonl"

    done = slurm_mod.collect(root, _sites(root), store_for, timeout_s=timeout, only=site, progress=say)
    failed = [c.record for c in done if c.record.state == "failed"]
    stored = sorted({c.record.store for c in done if c.record.store})
    if stored:
        say("tables: invoke tabulate " + ",".join(relative(Path(s), root) for s in stored))
    if failed:
        print(f"{len(failed)} job(s) failed: " + "; ".join(f"{r.job_id} ({r.bench}): {r.message[:300]}"
                                                          for r in failed), file=sys.stderr)
        return 1
    return 0


def testcluster(matrix: str, stop: bool = False, nodes: int | str = testcluster_mod.DEFAULT_NODES) -> int:
    root = repository_root(matrix)
    count = whole_number("--nodes", nodes, 1, testcluster_mod.MAX_NODES)
    if stop:
        say("stopped" if testcluster_mod.stop(connect()) else "no test cluster is running")
        return 0
    testcluster_mod.start(connect(), root, progress=say, nodes=count)
    say("submit to it with `invoke submit --site local ...`")
    return 0


def site(matrix: str, action: str, name: str = "", mpi_lib: str = "", mpicc: str = "", mpiexec: str = "",
         via: str = "", profile: str = "ci", only: Iterable[str] = (), env: Iterable[str] = (), rounds: int | str = 3,
         timeout: int | str = 1200) -> int:
    """`invoke site discover | verify | status`."""
    from . import discover as discover_mod
    from . import siteverify

    root = repository_root(matrix)
    sites_dir = root / "slurm" / "sites"
    if action == "discover":
        via_site = sites_mod.load_site(sites_dir, via) if via else None
        words = [f"invoke site discover --name {name}"] + [f"--{k} {v}" for k, v in
                                                           (("mpi-lib", mpi_lib), ("mpicc", mpicc),
                                                            ("mpiexec", mpiexec), ("via", via)) if v]
        words += [f"--env {item}" for item in env]
        found = discover_mod.discover(root, load_matrix(matrix), name, mpi_lib=mpi_lib, mpicc=mpicc,
                                      mpiexec=mpiexec, via=via_site, profile=profile, only=only, env=env,
                                      command=" ".join(words), progress=say)
        say(discover_mod.report(found, root))
        return 0
    if action == "verify":
        if not name:
            raise sites_mod.SiteError("invoke site verify needs --name SITE (a profile invoke site discover wrote)")
        result = siteverify.verify(root, load_matrix(matrix), name, only=only,
                                   rounds=whole_number("--rounds", rounds, 1, 100),
                                   timeout_s=whole_number("--timeout", timeout, 1, 86400), progress=say)
        say(siteverify.terminal(result))
        say(siteverify.status_line(sites_dir, name))
        say(f"report: {relative(siteverify.report_path(root, name), root)}")
        return 0 if result.verified else 1
    if action == "status":
        names = [name] if name else [n for n in sites_mod.site_names(sites_dir)
                                     if discover_mod.record_path(sites_dir, n).exists()
                                     or siteverify.record_path(sites_dir, n).exists()]
        if not names:
            say("no site was discovered or verified yet (invoke site discover --name SITE ...)")
        for n in names:
            say(siteverify.status_line(sites_dir, n))
        return 0
    raise sites_mod.SiteError(f"invoke site {action!r}: the actions are discover, verify and status")

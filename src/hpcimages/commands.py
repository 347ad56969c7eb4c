"""What the Invoke tasks do, as plain functions that return an exit status (tasks.py stays thin)."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from tabulate import tabulate

from . import apptainer as apptainer_mod
from . import bases as bases_mod
from . import bench as bench_mod
from . import build as build_mod
from . import check as check_mod
from . import lock as lock_mod
from . import render as render_mod
from . import report as report_mod
from . import results as results_mod
from . import sites as sites_mod
from . import slurm as slurm_mod
from . import testcluster as testcluster_mod
from .engine import connect
from .errors import HpcImagesError
from .matrix import Matrix, load_matrix, only_cells

DEFAULT_MATRIX = "matrix.toml"


def say(message: str) -> None:
    print(message, flush=True)


def load(matrix: str = DEFAULT_MATRIX) -> Matrix:
    return load_matrix(Path(matrix))


def render(matrix: str = DEFAULT_MATRIX, check: bool = False) -> int:
    m = load(matrix)
    if check:
        problems = render_mod.drift(m) + lock_mod.lock_drift(m)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{len(problems)} generated file(s) out of date", file=sys.stderr)
            return 1
        say(f"{len(m.all_cells)} Dockerfiles, {len(m.all_cells)} Singularity recipes and "
            f"{len(lock_mod.lock_jobs(m))} locks are up to date")
        return 0
    result = render_mod.render_all(m)
    for path in result.written:
        say(f"wrote   {path.relative_to(m.root)}")
    for path in result.removed:
        say(f"removed {path.relative_to(m.root)}")
    say(f"{len(result.written)} written, {len(result.unchanged)} unchanged, {len(result.removed)} removed")
    return 0


def lock(matrix: str = DEFAULT_MATRIX, upgrade: bool = False, only: Iterable[str] = (),
         profile: str | None = None) -> int:
    m = load(matrix)
    jobs = [j for j in lock_mod.lock_jobs(m, profile) if not only or any(p in j.output for p in only)]
    for i, job in enumerate(jobs, 1):
        say(f"[{i}/{len(jobs)}] {job.output} (Python {job.python})")
        lock_mod.compile_lock(job, m.root, upgrade=upgrade)
    return 0


def bases(matrix: str = DEFAULT_MATRIX, profile: str = "offline", force: bool = False) -> int:
    m = load(matrix)
    results = bases_mod.ensure_bases(connect(), m.profile(profile), progress=say, force=force)
    say(tabulate([[r.python, r.image, r.status, r.detail] for r in results],
                 headers=["python", "image", "status", ""], tablefmt="simple"))
    return 0


def build(matrix: str = DEFAULT_MATRIX, profile: str = "published", only: Iterable[str] = (), jobs: int = 2,
          dry_run: bool = False, force: bool = False) -> int:
    m = load(matrix)
    if dry_run:
        cells = build_mod.plan(m, profile, only)
        say(f"profile {profile!r}: {m.profile(profile).description}")
        say(build_mod.describe_plan(m, profile, cells))
        return 0
    report = build_mod.build(connect(), m, profile, only=only, jobs=jobs, progress=say, force=force)
    say("")
    say(report.table())
    say(f"\n{len(report.results)} cells, {len(report.failed)} failed or skipped, {report.seconds:.0f}s; "
        "report: build/build-report.json")
    return 0 if report.ok else 1


def check(matrix: str = DEFAULT_MATRIX, profile: str = "published", only: Iterable[str] = ()) -> int:
    m = load(matrix)
    results = check_mod.check(connect(), m, profile, only=only, progress=say)
    say("")
    say(check_mod.table(results))
    passed = sum(r.passed for r in results)
    say(f"\n{passed}/{len(results)} cells passed; report: build/check-report.json "
        "(publishable cells marked in build/build-report.json)")
    return 0 if passed == len(results) else 1


def expand_paths(spec: str) -> list[str]:
    """'a.jsonl,b.jsonl' or 'results/*.jsonl' -> paths (a glob that matches nothing stays, to be reported)."""
    import glob

    paths: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if part:
            paths.extend(sorted(glob.glob(part)) or [part])
    return paths


def tabulate_results(paths: Iterable[str], session: str | None = None, out: str | None = None,
                     plots: bool = True, strict: bool = False, skip_corrupt: bool = False) -> int:
    """Tables (and plots) from stored results, printed and written as Markdown."""
    files = [Path(p) for p in paths]
    if not files:
        raise results_mod.ResultsError("name at least one results file, e.g. results/ci.jsonl")
    records, problems = results_mod.load(files, skip_corrupt=skip_corrupt)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if session:
        records = [r for r in records if r.get("session") == session]
    if not records:
        raise results_mod.ResultsError(f"no results in {', '.join(map(str, files))}"
                                       + (f" for session {session}" if session else ""))
    report = report_mod.build_report(records)
    say(report.text())
    target = Path(out) if out else files[0].with_suffix(".md")
    report_mod.write_markdown(report, target, files)
    say(f"tables: {target}")
    if plots:
        for png in report_mod.plot(records, target.parent / "plots"):
            say(f"plot:   {png}")
    if report.anomalies and strict:
        print(f"{len(report.anomalies)} anomalies (--strict)", file=sys.stderr)
        return 3
    return 0


def bench_main(argv: list[str] | None = None) -> int:
    """`nox -s bench -- [options]`: run the benchmarks, store the results, print tables, draw plots."""
    import argparse
    import datetime as dt
    import uuid

    parser = argparse.ArgumentParser(prog="nox -s bench --", description=bench_mod.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="ci", help="matrix profile (default: ci)")
    parser.add_argument("--only", action="append", default=[],
                        help="cells (glob on family:tag); default: every cell of the profile's root family")
    parser.add_argument("--bench", default=",".join(bench_mod.BENCHMARKS),
                        help=f"comma-separated benchmarks (default: {','.join(bench_mod.BENCHMARKS)})")
    parser.add_argument("--sizes", action="append", default=[], metavar="BENCH=MIN:MAX",
                        help="message sizes of one benchmark, e.g. osu_bw=1048576:4194304")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats, median kept (default 3)")
    parser.add_argument("--no-swap", action="store_true", help="skip the bind-model (Intel MPI) variant")
    parser.add_argument("--no-c", action="store_true", help="skip the C reference variants")
    parser.add_argument("--no-bare-metal", action="store_true", help="skip the bare-metal variants")
    parser.add_argument("--results", default=None, help="results file (default: results/<profile>.jsonl)")
    parser.add_argument("--strict", action="store_true", help="exit 3 when a variant looks misconfigured")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--matrix", default=DEFAULT_MATRIX)
    args = parser.parse_args(argv)
    try:
        m = load(args.matrix)
        cells = m.cells(args.profile)
        if args.only:
            import fnmatch

            cells = [c for c in cells if any(fnmatch.fnmatchcase(c.ref, p) for p in args.only)]
        else:
            cells = [c for c in cells if c.family.parent is None]
        if not cells:
            raise bench_mod.BenchError(f"no cell of profile {args.profile!r} matches {args.only}")
        sizes = {}
        for item in args.sizes:
            name, _, rng = item.partition("=")
            if name not in bench_mod.BENCHMARKS or not re.match(r"^\d*:\d*$", rng):
                raise bench_mod.BenchError(f"--sizes {item!r}: use BENCH=MIN:MAX with BENCH one of "
                                           f"{', '.join(bench_mod.BENCHMARKS)}")
            sizes[name] = rng
        store = Path(args.results or m.root / "results" / f"{args.profile}.jsonl")
        session = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
        try:
            stored = bench_mod.run(connect(), m, args.profile, cells, [b for b in args.bench.split(",") if b],
                                   store, repeats=args.repeats, sizes=sizes, swap=not args.no_swap,
                                   c_reference=not args.no_c, bare_metal=not args.no_bare_metal, progress=say,
                                   session=session)
        except KeyboardInterrupt:
            print(f"\ninterrupted: the runs finished before it are in {store} (session {session})", file=sys.stderr)
            return 130
        say(f"{stored} runs stored in {store} (session {session})")
        return tabulate_results([str(store)], session=session, out=str(store.with_suffix(".md")),
                                plots=not args.no_plots, strict=args.strict)
    except HpcImagesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def convert(matrix: str = DEFAULT_MATRIX, profile: str = "published", only: Iterable[str] = (),
            runtime: str = "auto", force: bool = False, smoke: bool = True) -> int:
    """Docker images -> build/sif/*.sif, then the hello test in each (1 rank, and 2 ranks launched outside)."""
    m = load(matrix)
    cells = only_cells(m, profile, only)
    registry = m.profile(profile).registry
    client = connect()  # `docker save` needs the engine whichever runtime converts
    rt = apptainer_mod.choose_runtime(runtime, lambda: client, m.root, progress=say)
    out_dir = m.root / "build" / "sif"
    results = apptainer_mod.convert(client, rt, [c.image(registry) for c in cells], out_dir, progress=say,
                                    force=force)
    rows = []
    if smoke:
        for result in results:
            if result.status == "failed":
                rows.append([result.image, "skip", "skip"])
                continue
            one = apptainer_mod.exec_in_sif(rt, Path(result.sif), ["python3", "{bench}/hello_mpi4py.py"],
                                            m.root / "bench")
            two = apptainer_mod.exec_in_sif(rt, Path(result.sif), ["python3", "{bench}/hello_mpi4py.py"],
                                            m.root / "bench", ranks=2)
            ok1 = one[0] == 0 and "process 0 of 1" in one[1]
            ok2 = two[0] == 0 and "process 0 of 2" in two[1] and "process 1 of 2" in two[1]
            rows.append([result.image, "pass" if ok1 else "FAIL", "pass" if ok2 else "FAIL"])
            if not (ok1 and ok2):
                result.status, result.reason = "failed", "hello test failed: " + apptainer_mod.tail(
                    (one[1] if not ok1 else "") + (two[1] if not ok2 else ""))
    say("")
    say(apptainer_mod.table(results))
    if smoke:
        say("")
        say(tabulate(rows, headers=["image", "exec -e hello (1 rank)", "mpiexec -n 2 apptainer exec hello"]))
    failed = [r for r in results if r.status == "failed"]
    say(f"\n{len(results) - len(failed)}/{len(results)} converted or up to date; .sif files in {out_dir}")
    return 1 if failed else 0


def build_from_recipe(matrix: str = DEFAULT_MATRIX, profile: str = "offline", only: Iterable[str] = (),
                      runtime: str = "auto") -> int:
    """Build .sif files from the committed Singularity.def of each cell (bootstrapping from local images)."""
    from . import wheelhouse
    from .render import recipe_path
    from .templates import lock_path, mpi_lock_path

    m = load(matrix)
    cells = only_cells(m, profile, only)
    prof = m.profile(profile)
    client = connect()
    rt = apptainer_mod.choose_runtime(runtime, lambda: client, m.root, progress=say)
    out_dir = m.root / "build" / "sif" / "from-recipe"
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = wheelhouse.cache_root()
    failures = 0
    for cell in cells:
        for lock in filter(None, (mpi_lock_path(cell), lock_path(cell))):
            wheelhouse.download_wheels(m.root / lock, cell.python, cache)
        source = prof.sources.get(cell.mpi.key)
        if source is not None:
            wheelhouse.fetch_source(source, cache)
        with wheelhouse.serve(cache) as served:
            args = build_mod.build_args(m, prof, cell, served)
            from_image = args.pop("BASE_IMAGE", None) or args.pop("PARENT_IMAGE")
            for name in ("PIP_NO_INDEX", "PIP_FIND_LINKS", "MPI_SOURCE_ORIGIN"):
                args.pop(name, None)
            args["WHEELHOUSE"] = f"{served}/wheelhouse/"
            sif = out_dir / apptainer_mod.sif_name(cell.image(prof.registry))
            say(f"apptainer build {sif.name} from {recipe_path(m, cell).relative_to(m.root)} (FROM {from_image})")
            start = time.monotonic()
            code, output = apptainer_mod.build_recipe(client, rt, m.root, recipe_path(m, cell), from_image, sif, args)
        if code != 0:
            failures += 1
            say(f"  FAILED (exit {code}): {apptainer_mod.tail(output)}")
            continue
        check = apptainer_mod.exec_in_sif(rt, sif, ["python3", "-c", MPI_VERSION_SNIPPET], m.root / "bench")
        ok = check[0] == 0 and f"MPICH Version:      {cell.mpi.version}" in check[1]
        failures += 0 if ok else 1
        say(f"  built in {time.monotonic() - start:.0f}s, {sif.stat().st_size / 1e6:.0f} MB; smoke test: "
            f"{'pass' if ok else 'FAIL ' + apptainer_mod.tail(check[1])}")
    return 1 if failures else 0


def tools(force: bool = False) -> int:
    from . import tools as tools_mod

    say(f"ready: {tools_mod.ensure_tools_image(connect(), Path('.').resolve(), progress=say, force=force)}")
    return 0


MPI_VERSION_SNIPPET = "from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0])"


# ---------------------------------------------------------------------------------------------
# Slurm


def _sites(root: Path) -> dict[str, sites_mod.Site]:
    directory = root / "slurm" / "sites"
    return {name: sites_mod.load_site(directory, name) for name in sites_mod.site_names(directory)}


def submit(site: str, bench: str, image: str, model: str = "hybrid", sizes: str = "", source: str = "",
           dry_run: bool = False, matrix: str = DEFAULT_MATRIX) -> int:
    m = load(matrix)
    profile = sites_mod.load_site(m.root / "slurm" / "sites", site)
    spec = slurm_mod.JobSpec(profile, bench, image, model, sizes, source)
    record = slurm_mod.submit(m.root, m, spec, dry_run=dry_run)
    script = Path(record.script)
    if dry_run:
        say(script.read_text(encoding="utf-8"))
        say(f"rendered {script} (not submitted: --dry-run); submit it by hand with: sbatch {script}")
        return 0
    say(f"submitted {bench} ({model} model, {image}) to {site}: job {record.job_id}; script {script}")
    say("follow it with `invoke jobs`; store its results with `invoke collect`")
    return 0


def jobs(all_states: bool = False, matrix: str = DEFAULT_MATRIX) -> int:
    root = load(matrix).root
    records = slurm_mod.load_records(root)
    if not all_states:
        records = [r for r in records if r.state != "rendered"]
    if not records:
        say("no job records in build/slurm/runs (submit one with `invoke submit`)")
        return 0
    say(slurm_mod.jobs_table(records, slurm_mod.live_states(root, _sites(root), records)))
    return 0


def collect(timeout: int = 1800, site: Iterable[str] = (), store: str | None = None,
            matrix: str = DEFAULT_MATRIX) -> int:
    root = load(matrix).root

    def store_for(name: str) -> Path:
        return Path(store) if store else root / "results" / f"slurm-{name}.jsonl"

    done = slurm_mod.collect(root, _sites(root), store_for, timeout_s=timeout, only=site, progress=say)
    failed = [c.record for c in done if c.record.state == "failed"]
    stored = sorted({c.record.store for c in done if c.record.store})
    if stored:
        say("tables: invoke tabulate " + ",".join(str(Path(s).relative_to(root)) if Path(s).is_relative_to(root)
                                                  else s for s in stored))
    if failed:
        print(f"{len(failed)} job(s) failed: " + "; ".join(f"{r.job_id} ({r.bench}): {r.message[:300]}"
                                                          for r in failed), file=sys.stderr)
        return 1
    return 0


def testcluster(stop: bool = False) -> int:
    root = Path(".").resolve()
    if stop:
        say("stopped" if testcluster_mod.stop(connect()) else "no test cluster is running")
        return 0
    testcluster_mod.start(connect(), root, progress=say)
    say("submit to it with `invoke submit --site local ...`")
    return 0


if __name__ == "__main__":  # `python -m hpcimages.commands bench ...` (what `nox -s bench` runs)
    if sys.argv[1:2] != ["bench"]:
        sys.exit("usage: python -m hpcimages.commands bench [options]")
    sys.exit(bench_main(sys.argv[2:]))

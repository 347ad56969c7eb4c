"""What the Invoke tasks do, as plain functions that return an exit status (tasks.py stays thin)."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from pathlib import Path

from tabulate import tabulate

from . import bases as bases_mod
from . import bench as bench_mod
from . import build as build_mod
from . import check as check_mod
from . import lock as lock_mod
from . import render as render_mod
from . import report as report_mod
from . import results as results_mod
from .engine import connect
from .errors import HpcImagesError
from .matrix import Matrix, load_matrix

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


if __name__ == "__main__":  # `python -m hpcimages.commands bench ...` (what `nox -s bench` runs)
    if sys.argv[1:2] != ["bench"]:
        sys.exit("usage: python -m hpcimages.commands bench [options]")
    sys.exit(bench_main(sys.argv[2:]))

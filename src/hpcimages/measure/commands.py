"""The measure stage's tasks: `invoke bench` (what `nox -s bench` runs) and `invoke tabulate`."""

from __future__ import annotations

import datetime as dt
import sys
import uuid
from collections.abc import Iterable
from pathlib import Path

from .. import stats
from ..cli import say, whole_number
from ..define import load_matrix
from ..define.matrix import select_cells
from ..engine import connect
from ..files import expand_paths, output_problem
from ..validate import shown
from . import bench as bench_mod
from . import report as report_mod
from . import results as results_mod

#: the benchmarks `invoke bench` knows, in the order it runs them (its --help names them from here)
BENCHMARK_NAMES = tuple(bench_mod.BENCHMARKS)
#: how long `invoke bench --until-decided` may repeat by default (minutes), and its looks
DEFAULT_BUDGET_MIN = 30
SEQUENTIAL = stats.Sequential()


def tables_from_results(results: str, session: str | None = None, out: str | None = None, plots: bool = True,
                        strict: bool = False, skip_corrupt: bool = False) -> int:
    """Tables (and plots) from stored results, printed and written as Markdown."""
    files = [Path(p) for p in expand_paths(results)]
    if not files:
        raise results_mod.ResultsError("name at least one results file, e.g. results/ci.jsonl")
    target = Path(out) if out else files[0].with_suffix(".md")
    refused = output_problem("--out", target, files, ".md")
    if refused:
        raise results_mod.ResultsError(refused)
    records, problems = results_mod.load(files, skip_corrupt=skip_corrupt)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    if session:
        records = [r for r in records if r.session == session]
    if not records:
        raise results_mod.ResultsError(f"no results in {', '.join(map(str, files))}"
                                       + (f" for session {session}" if session else ""))
    report = report_mod.build_report(records)
    say(report.text())
    report_mod.write_markdown(report, target, files)
    say(f"tables: {target}")
    if plots:
        for png in report_mod.plot(records, target.parent / "plots"):
            say(f"plot:   {png}")
    if report.anomalies and strict:
        print(f"{len(report.anomalies)} anomalies (--strict)", file=sys.stderr)
        return 3
    return 0


def parse_sizes(items: Iterable[str]) -> dict[str, str]:
    """``BENCH=MIN:MAX`` options -> {bench: "MIN:MAX"}, each checked with the script's own rule."""
    sizes = {}
    for item in items:
        name, _, rng = item.partition("=")
        if name not in bench_mod.BENCHMARKS:
            raise bench_mod.BenchError(f"--sizes {shown(item)}: use BENCH=MIN:MAX with BENCH one of "
                                       f"{', '.join(bench_mod.BENCHMARKS)}")
        problem = bench_mod.BENCHMARKS[name].sizes_problem(rng)
        if problem:
            raise bench_mod.BenchError(f"--sizes {name}={problem}")
        sizes[name] = rng
    return sizes


def bench(matrix: str, profile: str = "ci", only: Iterable[str] = (), benchmarks: str = "",
          sizes: Iterable[str] = (), repeats: int | str = 6, swap: bool = True, c_reference: bool = True,
          bare_metal: bool = True, results: str | None = None, strict: bool = False, plots: bool = True,
          default_sandbox: bool = True, ceiling: bool = True, until_decided: bool = False,
          budget: int | str | None = None) -> int:
    """Run the benchmarks, store the results, print tables, draw plots."""
    repeats = whole_number("--repeats", repeats, 1, 1000)
    if budget is not None and not until_decided:
        raise bench_mod.BenchError("--budget limits --until-decided: add --until-decided, or leave --budget out")
    budget_s = 60 * whole_number("--budget", budget if budget is not None else DEFAULT_BUDGET_MIN, 1, 24 * 60)
    m = load_matrix(matrix)
    prof = m.profile(profile)
    only = list(only)
    # default: the root family (plain mpi4py) for the MPI benchmarks, and the families with a parallel HDF5 for h5py's
    cells = select_cells(m, prof, only, with_parents=False) if only else \
        [c for c in m.cells(prof) if c.family.parent is None or c.family.hdf5]
    chosen = [b for b in (benchmarks or ",".join(bench_mod.BENCHMARKS)).split(",") if b]
    ranges = parse_sizes(sizes)
    store = Path(results) if results else m.root / "results" / f"{prof.name}.jsonl"
    refused = output_problem("--results", store, (), ".jsonl")
    if refused:
        raise results_mod.ResultsError(refused)
    session = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]
    try:
        stored = bench_mod.run(connect(), m, prof, cells, chosen, store, repeats=repeats, sizes=ranges, swap=swap,
                               c_reference=c_reference, bare_metal=bare_metal, default_sandbox=default_sandbox,
                               ceiling=ceiling, until_decided=SEQUENTIAL if until_decided else None,
                               budget_s=budget_s if until_decided else None, progress=say, session=session)
    except KeyboardInterrupt:
        print(f"\ninterrupted: the runs finished before it are in {store} (session {session})", file=sys.stderr)
        raise
    say(f"{stored} runs stored in {store} (session {session})")
    return tables_from_results(str(store), session=session, out=str(store.with_suffix(".md")), plots=plots,
                               strict=strict)

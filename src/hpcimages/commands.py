"""What the Invoke tasks do, as plain functions that return an exit status (tasks.py stays thin)."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from tabulate import tabulate

from . import bases as bases_mod
from . import build as build_mod
from . import check as check_mod
from . import lock as lock_mod
from . import render as render_mod
from .engine import connect
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
        say(f"{len(m.all_cells)} Dockerfiles and {len(lock_mod.lock_jobs(m))} locks are up to date")
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

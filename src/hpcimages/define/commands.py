"""The define stage's tasks: `invoke render` and `invoke lock`."""

from __future__ import annotations

import sys
from collections.abc import Iterable

from ..cli import say
from ..errors import SelectionError
from . import load_matrix
from . import lock as lock_mod
from . import render as render_mod


def render(matrix: str, check: bool = False) -> int:
    m = load_matrix(matrix)
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


def lock(matrix: str, upgrade: bool = False, only: Iterable[str] = (), profile: str | None = None) -> int:
    m = load_matrix(matrix)
    only = list(only)
    if any(not p.strip() for p in only):
        raise SelectionError("--only '' is empty: give part of a lock's path, or leave --only out for every lock")
    jobs = lock_mod.lock_jobs(m, m.profile(profile) if profile else None)
    chosen = [j for j in jobs if not only or any(p in j.output for p in only)]
    if not chosen:
        raise SelectionError(f"--only {' '.join(only)} names no lock; locks: {', '.join(j.output for j in jobs)}")
    for i, job in enumerate(chosen, 1):
        say(f"[{i}/{len(chosen)}] {job.output} (Python {job.python})")
        lock_mod.compile_lock(job, m.root, upgrade=upgrade)
    return 0

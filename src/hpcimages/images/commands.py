"""The images stage's tasks: `invoke bases`, `invoke build`, `invoke check`."""

from __future__ import annotations

from collections.abc import Iterable

from .. import tables
from ..cli import UsageError, say, whole_number
from ..define import load_matrix
from ..define.matrix import select_cells
from ..engine import connect
from ..errors import EngineError
from ..paths import build_dir, relative
from . import bases as bases_mod
from . import build as build_mod
from . import check as check_mod
from .reports import BUILD_REPORT, CHECK_REPORT


def bases(matrix: str, profile: str = "offline", force: bool = False) -> int:
    m = load_matrix(matrix)
    results = bases_mod.ensure_bases(connect(), m.profile(profile), progress=say, force=force)
    say(tables.terminal([[r.python, r.image, r.status, r.detail] for r in results], ["python", "image", "status", ""]))
    return 0


def build(matrix: str, profile: str, only: Iterable[str] = (), jobs: int | str = 2, dry_run: bool = False,
          force: bool = False, every_cell: bool = False) -> int:
    """``every_cell`` (--all) says what no --only says too: every cell of the profile; beside --only it is a
    contradiction, refused before anything runs."""
    only = list(only)
    if every_cell and only:
        raise UsageError(f"--all builds every cell of the profile, --only {' '.join(only)} chooses some: give one "
                         "of them")
    jobs = whole_number("--jobs", jobs, 1, 64)
    m = load_matrix(matrix)
    prof = m.profile(profile)
    cells = build_mod.plan(m, prof, only)
    if dry_run:
        say(f"profile {prof.name!r}: {prof.description}")
        try:  # the plan needs no engine; with one, it also says which cells are up to date
            stale: set[str] | None = build_mod.stale_for_plan(connect(ping_timeout=5), m, prof, cells)
        except EngineError:
            stale = None
        say(build_mod.describe_plan(m, prof, cells, stale))
        return 0
    report = build_mod.build_cells(connect(), m, prof, cells, jobs=jobs, progress=say, force=force)
    say("")
    say(report.table())
    say(f"\n{len(report.results)} cells, {len(report.failed)} failed or skipped, {report.seconds:.0f}s; "
        f"report: {relative(build_dir(m.root) / BUILD_REPORT, m.root)}")
    return 0 if report.ok else 1


def check(matrix: str, profile: str, only: Iterable[str] = (), jobs: int | str = 2) -> int:
    jobs = whole_number("--jobs", jobs, 1, 64)
    m = load_matrix(matrix)
    prof = m.profile(profile)
    cells = select_cells(m, prof, only, with_parents=False)
    results = check_mod.check_cells(connect(), m, prof, cells, progress=say, jobs=jobs)
    built = [r for r in results if r.image_id is not None]
    unbuilt = [r for r in results if r.image_id is None]
    if built:
        say("")
        say(check_mod.table(built))
    passed = sum(r.passed for r in built)
    out = build_dir(m.root)
    say(f"\n{passed}/{len(built)} built cells passed; report: {relative(out / CHECK_REPORT, m.root)} "
        f"(publishable cells marked in {relative(out / BUILD_REPORT, m.root)})")
    if unbuilt:  # as `invoke convert` does: a cell never built is skipped, not failed
        say(f"{len(unbuilt)} not built, skipped (`invoke build --profile {prof.name}` builds them): "
            + ", ".join(r.ref for r in unbuilt))
    # a cell that was never built is no failure of its checks, but checking nothing at all is
    return 0 if built and passed == len(built) else 1

"""The sif stage's tasks: `invoke convert` (and `--from-recipe`), `invoke tools`."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .. import tables
from ..cli import say, whole_number
from ..define import load_matrix
from ..define.matrix import Cell, select_cells
from ..engine import connect
from ..paths import repository_root
from . import apptainer
from . import convert as convert_mod
from . import tools as tools_mod


def convert(matrix: str, profile: str, only: Iterable[str] = (), runtime: str = "auto", force: bool = False,
            from_recipe: bool = False, jobs: int | str = 2) -> int:
    """Docker images -> .sif files, then the hello test in each (1 rank, and 2 ranks launched outside) and, in an
    image with a parallel HDF5, a 2-rank driver='mpio' write verified element by element. ``jobs`` conversions at
    once where each runs in a container of its own (measured: 3 cells in 0.86 x the time of one at a time)."""
    jobs = whole_number("--jobs", jobs, 1, 8)
    m = load_matrix(matrix)
    prof = m.profile(profile)
    cells = select_cells(m, prof, only, with_parents=False)
    client = connect()  # `docker save` needs the engine whichever runtime converts
    rt = apptainer.choose_runtime(runtime, lambda: client, m.root, progress=say)
    if from_recipe:
        passed = [convert_mod.from_recipe(client, rt, m, prof, cell, progress=say) for cell in cells]
        return 0 if all(passed) else 1
    out_dir = convert_mod.sif_dir(m.root)
    if convert_mod.conversions_at_once(rt, jobs) < jobs and len(cells) > 1:
        say(f"one conversion at a time: the {rt.name} builds share its image cache (--jobs {jobs} is for the "
            "containerised one)")
    rows: list[list[str]] = [[] for _ in cells]

    def smoke(i: int, result: convert_mod.Conversion) -> None:
        rows[i] = smoke_row(rt, cells[i], result, m.root / "bench")

    results = convert_mod.convert(client, rt, [c.image(prof.registry) for c in cells], out_dir, progress=say,
                                  force=force, jobs=jobs, then=smoke)
    say("")
    say(convert_mod.table(results))
    say("")
    say(tables.terminal(rows, ["image", "exec -e hello (1 rank)", "2-rank hello (mpiexec outside; Open MPI: mpirun in)",
                               "h5py mpio (2 ranks)"]))
    failed = [r for r in results if r.status == "failed"]
    unbuilt = [r for r in results if r.status == "not built"]
    done = len(results) - len(failed) - len(unbuilt)
    say(f"\n{done}/{len(results)} converted or up to date; .sif files in {out_dir}")
    if unbuilt:
        say(f"{len(unbuilt)} not built, skipped (`invoke build --profile {prof.name}` builds them): "
            + ", ".join(r.name for r in unbuilt))
    # a cell that was never built is no failure of the conversion, but converting nothing at all is
    return 1 if failed or not done else 0


def smoke_row(rt: apptainer.Runtime, cell: Cell, result: convert_mod.Conversion, bench: Path) -> list[str]:
    """The hello test of a converted .sif (1 rank, and 2 ranks launched outside) and, in an image with a parallel
    HDF5, the 2-rank mpio write: its row of the smoke table; a failure fails the conversion."""
    if result.status in ("failed", "not built"):
        return [result.image, "skip", "skip", "skip" if cell.family.hdf5 else "-"]
    one, two = convert_mod.hello_test(rt, result, bench, cell.mpi)
    mpio = "-"
    if cell.family.hdf5:
        ok, reason = convert_mod.mpio_test(rt, Path(result.sif), bench, cell.mpi)
        mpio = "pass" if ok else "FAIL"
        if not ok:
            result.status, result.reason = "failed", reason
    return [result.image, "pass" if one else "FAIL", "pass" if two else "FAIL", mpio]


def tools(matrix: str, force: bool = False) -> int:
    root = repository_root(matrix)
    say(f"ready: {tools_mod.ensure_tools_image(connect(), root, progress=say, force=force)}")
    return 0

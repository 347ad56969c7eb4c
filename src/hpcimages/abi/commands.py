"""The abi stage's task: `invoke abi` (the ABI compatibility table)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from ..cli import say, whole_number
from ..define import load_matrix
from ..define.matrix import select_cells
from ..engine import connect
from ..paths import relative
from ..sif.apptainer import ConvertError, choose_runtime
from . import table as table_mod


def abi(matrix: str, profile: str, only: Iterable[str] = (), host: Iterable[str] = (), suite: bool = True,
        suite_timeout: int | str = 600, repeats: int | str = 3, apptainer: bool = True,
        suite_include: Iterable[str] = (), test_timeout: int | str = 60, progress: Callable[[str], None] = say) -> int:
    suite_timeout = whole_number("--suite-timeout", suite_timeout, 30, 7200)
    test_timeout = whole_number("--test-timeout", test_timeout, 5, 3600)
    repeats = whole_number("--repeats", repeats, 0, 50)
    m = load_matrix(matrix)
    prof = m.profile(profile)
    cells = select_cells(m, prof, only, with_parents=False)
    hosts = table_mod.choose_hosts(m, host)
    include = table_mod.suite_patterns(suite_include)
    client = connect()
    runtime = None
    if apptainer:
        try:
            runtime = choose_runtime("auto", lambda: client, m.root, progress=progress)
        except ConvertError as exc:
            progress(f"warning: no Apptainer column ({exc})")
    start = time.monotonic()
    pairs = table_mod.run_table(client, m, prof, cells, hosts, suite=suite, suite_timeout=suite_timeout,
                                repeats=repeats, runtime=runtime, suite_include=include,
                                test_timeout=test_timeout, progress=progress)
    if not pairs:
        progress(f"no image of profile {prof.name!r} is built: run `invoke build --profile {prof.name}` first")
        return 1
    md, js = (table_mod.table_dir(m.root) / name for name in ("abi-table.md", "abi-table.json"))  # run_table wrote them
    progress("")
    progress(table_mod.terminal_table(pairs))
    progress(f"\n{len(pairs)} rows in {time.monotonic() - start:.0f}s; {relative(md, m.root)}, {relative(js, m.root)}")
    return 0

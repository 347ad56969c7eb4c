"""``invoke abi``: the ABI compatibility table, every built image × every host-MPI stand-in.

For each image the first row is the image's own MPI, MPICH or Open MPI (the baseline of every ratio and of the test
suite: a test that fails there fails for the container, not for the stand-in). Then one row per stand-in
(``pairs.py``) and a verdict:

works               loads by path, 2 ranks run, the suite fails nothing that passes with the image's own MPI
works with caveat   it runs, but something a site must read: tests that fail or crash only with this library,
                    MPI-4 functions it lacks, mpi4py switched to another ABI's extension, or half the bandwidth
fails               it does not load (with the loader's reason), loads the wrong file, or 2 ranks do not run

Written to ``build/abi/abi-table.{md,json}``; the catalogue shows each image's rows.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import docker

from .. import state, stats, tables
from ..define.matrix import Cell, Matrix, Profile
from ..define.standins import HostMpi
from ..engine import find_image
from ..errors import HpcImagesError
from ..files import write_json, write_text
from ..images import hostmpi
from ..mpirun import Binding, image_mpi
from ..paths import build_dir
from ..sif.apptainer import Runtime
from ..sif.convert import is_fresh, sif_dir, sif_name
from ..validate import shown
from . import cprobe, mpi4py_tests
from .pairs import INCONTAINER, OWN, Pair, PairRunner, SuiteScore

Progress = Callable[[str], None]
SLOW_BANDWIDTH = 0.5  # below half the image's own bandwidth a site must know


class AbiError(HpcImagesError):
    """The ABI table cannot be made."""


def table_dir(root: Path) -> Path:
    return build_dir(root) / "abi"


def suite_patterns(patterns: Iterable[str]) -> tuple[str, ...]:
    """``--suite-include`` values: regular expressions on the suite's module names, each checked here."""
    checked = []
    for pattern in patterns:
        if not pattern or len(pattern) > 200 or "\n" in pattern:
            raise AbiError(f"--suite-include {shown(pattern)}: one regular expression of at most 200 characters")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise AbiError(f"--suite-include {shown(pattern)}: not a regular expression ({exc})") from None
        checked.append(pattern)
    return tuple(checked)


def choose_hosts(matrix: Matrix, names: Iterable[str]) -> list[HostMpi]:
    """The stand-ins named, in matrix order; with none named, every stand-in but the bind-model swap (``swap =
    true`` is the library the checks bind, not a host MPI of the table: ``--host`` names it to add its row). An
    unknown name is one clear error."""
    names = list(names)
    unknown = [n for n in names if n not in matrix.host_mpis]
    if unknown:
        raise AbiError(f"unknown stand-in {shown(unknown[0])}; the matrix declares: {', '.join(matrix.host_mpis)}")
    if not names:
        return [h for h in matrix.host_mpis.values() if not h.swap]
    return [h for h in matrix.host_mpis.values() if h.name in names]


def pairing_problem(matrix: Matrix, profile: Profile, cell: Cell, host: HostMpi) -> str | None:
    """Why a stand-in is not paired with this image: Debian's MPICH is only interesting from another suite."""
    if host.source != "debian":
        return None
    base = profile.bases.get(cell.python)
    if base is not None and base.debian == host.suite:
        return f"the image is built on Debian {host.suite} itself (its MPICH would be the distribution's own)"
    return None


def run_table(client: docker.DockerClient, matrix: Matrix, profile: Profile, cells: list[Cell],
              hosts: list[HostMpi], *, suite: bool, suite_timeout: int, repeats: int,
              runtime: Runtime | None, suite_include: tuple[str, ...] = (), test_timeout: int = 60,
              progress: Progress = print) -> list[Pair]:
    """Every cell × (own, stand-ins...), measured; written under build/abi/ after each image."""
    folders: dict[str, Path] = {}
    for host in hosts:
        folders[host.name] = hostmpi.prepare(client, matrix, host, progress)
    bench = matrix.root / "bench"
    pairs: list[Pair] = []
    for i, cell in enumerate(cells, 1):
        image_ref = cell.image(profile.registry)
        image = find_image(client, image_ref)
        if image is None:
            progress(f"[{i}/{len(cells)}] {cell.ref}: not built, skipped (invoke build --profile {profile.name})")
            continue
        sif = sif_dir(matrix.root) / sif_name(image_ref)
        sif_ok = sif if is_fresh(sif, image) else None
        c_runner, c_problem = _c_runner(client, cell, image_ref, bench, progress)
        runner = PairRunner(client, image.id, bench, None, suite_timeout, repeats, progress, suite_include,
                            test_timeout)
        runner.c_runner, runner.c_problem, runner.soname = c_runner, c_problem, cell.mpi.soname
        runner.own = own_inj = image_mpi(cell.mpi.abi, cell.mpi.version)
        if c_runner is not None:
            c_runner.own = own_inj
        rows = [_own_row(runner, matrix, cell, image_ref, suite)]
        rows[0].apptainer = runner.apptainer(runtime, sif_ok, own_inj)
        rows[0].c_probe = cprobe.run_c_probe(c_runner, own_inj) if c_runner else c_problem
        judge(rows[0], None)
        for j, host in enumerate(hosts, 1):
            pair = Pair(cell.ref, image_ref, image.id, host.name, hostmpi.version_of(folders[host.name]), host.abi)
            why_not = pairing_problem(matrix, profile, cell, host)
            if why_not:
                pair.status, pair.skip_reason, pair.verdict = "skipped", why_not, "not paired"
            else:
                progress(f"[{i}/{len(cells)}] {cell.ref} × {host.name} ({j}/{len(hosts)}) ...")
                measure_pair(runner, pair, hostmpi.binding(host, folders[host.name]), own_inj, suite, runtime, sif_ok)
                judge(pair, rows[0])
                progress(f"    {pair.verdict}{': ' + pair.verdict_reason if pair.verdict_reason else ''}")
            rows.append(pair)
            write_reports(matrix.root, profile.name, pairs + rows)  # after every pair: an interruption keeps them
        pairs.extend(rows)
        write_reports(matrix.root, profile.name, pairs)
    return pairs


def _c_runner(client: docker.DockerClient, cell: Cell, image_ref: str, bench: Path,
              progress: Progress) -> tuple[PairRunner | None, str]:
    progress(f"{cell.ref}: compiling the C probe with the image's mpicc (cached after the first run) ...")
    wrapper = "mpicc_abi" if cell.mpi.abi == "mpi" else "mpicc"
    try:
        name = cprobe.c_probe_image(client, cell.family.name, cell.tag, image_ref,
                                    (INCONTAINER / cprobe.SOURCE).read_bytes(), wrapper)
    except cprobe.CProbeError as exc:
        return None, f"not tried: {exc}"
    found = find_image(client, name)
    if found is None:
        return None, f"not tried: {name} was not built"
    c_runner = PairRunner(client, found.id, bench, None, 60, 0, progress)
    c_runner.soname = cell.mpi.soname
    return c_runner, ""


def _own_row(runner: PairRunner, matrix: Matrix, cell: Cell, image_ref: str, suite: bool) -> Pair:
    """The image's own MPI (MPICH or Open MPI), measured first; its probe names the mpi4py version whose suite the
    runner then uses for every row of this image."""
    row = Pair(cell.ref, image_ref, runner.image_id, OWN, cell.mpi.version, cell.mpi.abi)
    own = runner.own
    runner.probe(own, row)
    if suite and row.mpi4py_version:
        try:
            runner.tests = mpi4py_tests.test_dir(matrix.root, row.mpi4py_version)
        except mpi4py_tests.SuiteSourceError as exc:
            runner.progress(f"warning: {exc}; the test-suite columns stay empty")
    runner.progress(f"{cell.ref}: the image's own {own_name(cell.mpi.abi)} {cell.mpi.version} (the baseline) ...")
    measure_pair(runner, row, own, own, suite, None, None, probe=False)
    return row


def own_name(abi: str) -> str:
    """How the table names an image's own MPI: its ABI's implementation."""
    return "Open MPI" if abi == "openmpi" else "MPICH"


def measure_pair(runner: PairRunner, pair: Pair, inj: Binding, own: Binding, suite: bool,
                 runtime: Runtime | None, sif: Path | None, probe: bool = True) -> None:
    start = time.monotonic()
    if probe:
        runner.probe(inj, pair)
    if not pair.loads:
        pair.seconds = time.monotonic() - start
        return
    pair.hello = runner.hello(inj)
    if pair.hello == "pass" and inj.bound:
        pair.c_probe = cprobe.run_c_probe(runner.c_runner, inj) if runner.c_runner else runner.c_problem
    if pair.hello == "pass":
        if inj.bound:
            bw_own, bw_inj, lat_own, lat_inj, pair.bench_note, bw_paired = runner.bench(own, inj)
            pair.bw_mbs, pair.lat_us = bw_inj, lat_inj
            pair.bw_ratio = bw_inj / bw_own if bw_inj and bw_own else None
            found = stats.interval(bw_paired)  # the spread of the repeats decides, not one median
            if found is not None:
                pair.bw_interval = [round(found.low, 3), round(found.high, 3)]
            pair.lat_ratio = lat_inj / lat_own if lat_inj and lat_own else None
            pair.apptainer = runner.apptainer(runtime, sif, inj)
        if suite:
            pair.suite = [runner.suite(inj, ranks) for ranks in (1, 2)]
    pair.seconds = time.monotonic() - start


# ---------------------------------------------------------------------------------------------
# verdicts (pure)


def new_failures(score: SuiteScore, baseline: SuiteScore | None) -> list[str]:
    """Tests that fail (or crash) with this library and not with the image's own MPI."""
    known = set(baseline.failed) | {c.split(" (")[0] for c in baseline.crashed} if baseline else set()
    return [t for t in score.failed if t not in known] + [c for c in score.crashed if c.split(" (")[0] not in known]


def judge(pair: Pair, own: Pair | None) -> None:
    """Set the pair's verdict from what was measured."""
    if not pair.loads:
        pair.verdict, pair.verdict_reason = "fails", f"does not load: {pair.load_reason}"
        return
    if pair.hello != "pass":
        pair.verdict, pair.verdict_reason = "fails", pair.hello
        return
    caveats = []
    mine = f"the image's own {own_name(own.abi if own is not None else pair.abi)}"
    # the extension the image's own MPI makes mpi4py choose (its probe's answer; else what its ABI implies)
    fallback = "openmpi" if own is not None and own.abi == "openmpi" else "mpich"
    expected = own.mpiabi if own is not None and own.mpiabi else fallback if own is not None else pair.mpiabi
    if pair.mpiabi and pair.mpiabi != expected:
        caveats.append(f"mpi4py switched to its {pair.mpiabi} extension: the Python layer binds, compiled code "
                       "does not")
    lacking = sorted(name for name, outcome in pair.mpi4.items() if outcome != "ok")
    if lacking:
        caveats.append(f"an MPI {pair.mpi_version} library: it lacks {', '.join(lacking)} (mpi4py raises "
                       "NotImplementedError)")
    if pair.c_probe and not pair.c_probe.startswith(("pass", "not tried")):
        caveats.append(f"C compiled by the image's mpicc: {pair.c_probe}")
    baselines = {s.ranks: s for s in own.suite} if own else {}
    for score in pair.suite:
        if score.note:  # the suite never finished: its crashes are all there is to say
            caveats.append(f"the suite at {score.ranks} rank(s) did not finish ({score.note}); it crashed in "
                           f"{', '.join(score.crashed[:4]) or 'its start-up'}")
            continue
        fresh = new_failures(score, baselines.get(score.ranks))
        if fresh:
            shown_names = ", ".join(fresh[:4]) + (f" and {len(fresh) - 4} more" if len(fresh) > 4 else "")
            where = f"that pass with {mine}" if own else f"with {mine} (the baseline: not held against a stand-in)"
            caveats.append(f"{len(fresh)} test(s) fail at {score.ranks} rank(s) {where}: {shown_names}")
        elif score.status not in ("ran", "not run") and (score.note or not score.crashed):
            # tests that crashed here as they do under the image's own MPI are no caveat of this library
            caveats.append(f"the suite {score.status} at {score.ranks} rank(s)"
                           + (f": {score.note}" if score.note else ""))
    if pair.bench_note:
        caveats.append(f"benchmark runs without a result: {pair.bench_note}")
    if pair.bw_interval is not None:
        if pair.bw_interval[1] < SLOW_BANDWIDTH:  # slow in every plausible reading of the repeats
            caveats.append(f"1 MiB bandwidth is {pair.bw_ratio:.2f} [{pair.bw_interval[0]:.2f}, "
                           f"{pair.bw_interval[1]:.2f}] of {mine}")
    elif pair.bw_ratio is not None and pair.bw_ratio < SLOW_BANDWIDTH:
        caveats.append(f"1 MiB bandwidth is {pair.bw_ratio:.2f} of {mine} (one repeat: no interval)")
    if own is not None and pair.apptainer and not pair.apptainer.startswith(("pass", "not tried")):
        caveats.append(f"through Apptainer: {pair.apptainer}")
    pair.verdict = "works with caveat" if caveats else "works"
    pair.verdict_reason = "; ".join(caveats)


# ---------------------------------------------------------------------------------------------
# reports


def _suite_cell(pair: Pair, ranks: int) -> str:
    score = next((s for s in pair.suite if s.ranks == ranks), None)
    if score is None or score.status == "not run":
        return "-"
    if score.note:
        return f"did not finish ({len(score.crashed)} crashed)"
    text = f"{score.run - len(score.failed) - score.skipped}/{len(score.failed)}/{score.skipped}"
    return text + (f" +{len(score.crashed)} crashed" if score.crashed else "")


def _ratio(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _bw_cell(pair: Pair) -> str:
    if pair.bw_ratio is None or pair.bw_interval is None:
        return _ratio(pair.bw_ratio)
    return f"{pair.bw_ratio:.2f} [{pair.bw_interval[0]:.2f}, {pair.bw_interval[1]:.2f}]"


def _loads(pair: Pair) -> str:
    if pair.status == "skipped":
        return "-"
    return "yes" if pair.loads else "no"


def rows(pairs: list[Pair]) -> list[list[str]]:
    return [[p.cell, p.host if p.host != OWN else f"own {own_name(p.abi)} {p.host_version}",
             p.host_version if p.host != OWN else "",
             _loads(p), p.mpiabi or "-", (p.library_version or "-")[:40],
             "-" if not p.hello else ("pass" if p.hello == "pass" else "FAIL"),
             "-" if not p.apptainer else ("pass" if p.apptainer == "pass" else
                                          ("-" if p.apptainer.startswith("not tried") else "FAIL")),
             "-" if not p.c_probe else ("pass" if p.c_probe == "pass" else
                                        ("-" if p.c_probe.startswith("not tried") else "FAIL")),
             _bw_cell(p), _ratio(p.lat_ratio), _suite_cell(p, 1), _suite_cell(p, 2), p.verdict]
            for p in pairs]


HEADERS = ["image", "host MPI", "version", "loads", "mpi4py ABI", "library", "hello (Docker)", "hello (Apptainer)",
           "C (image's mpicc)",
           "bw 1 MiB ×own", "lat 8 B ×own", "suite 1 rank pass/fail/skip", "suite 2 ranks pass/fail/skip",
           "verdict"]


def terminal_table(pairs: list[Pair]) -> str:
    text = tables.terminal(rows(pairs), HEADERS)
    return text + "\n\n" + reasons(pairs)


def reasons(pairs: list[Pair]) -> str:
    lines = [f"- {p.cell} × {p.host}: {p.verdict}: {p.verdict_reason or p.skip_reason}" for p in pairs
             if p.verdict_reason or p.skip_reason]
    return "why:\n" + "\n".join(lines) if lines else ""


def markdown(pairs: list[Pair], profile: str) -> str:
    cell = tables.markdown_cell
    notes = "".join(f"- **{cell(p.cell)} × {cell(p.host)}**: {p.verdict}: {cell(p.verdict_reason or p.skip_reason)}\n"
                    for p in pairs if p.verdict_reason or p.skip_reason)
    failed = "".join(f"- {cell(p.cell)} × {cell(p.host)}, {s.ranks} rank(s): {cell(', '.join(s.failed + s.crashed))}\n"
                     for p in pairs for s in p.suite if s.failed or s.crashed)
    return (f"# ABI compatibility (profile {profile})\n\n"
            "Each host MPI is injected the way a site does it: its folder bind-mounted at /opt/host-mpi, its lib/ "
            "first on LD_LIBRARY_PATH, ranks under its own mpiexec. *loads* is proven by the file mpi4py mapped. "
            "Ratios are the stand-in's median over the image's own MPI's, interleaved in one run (bandwidth: "
            "higher is faster; latency: higher is slower). Suite: mpi4py's own tests from the sdist of the image's "
            "mpi4py (pass/fail/skip); a failure that also happens with the image's own MPI is not held against a "
            "stand-in.\n\n" + tables.markdown(rows(pairs), HEADERS) + "\n" + ("\n## Why\n\n" + notes if notes else "")
            + ("\n## Failing tests\n\n" + failed if failed else ""))


def rows_of_image(root: Path, image_id: str) -> list[dict]:
    """The last table's rows measured on exactly this image id (the catalogue's section), own MPICH first."""
    return [p.to_json() for p in _stored_pairs(table_dir(root) / "abi-table.json") if p.image_id == image_id]


def write_reports(root: Path, profile: str, pairs: list[Pair]) -> tuple[Path, Path]:
    """build/abi/abi-table.{md,json}: this run's rows, and the rows of earlier runs for other pairs (a run with
    --only or --host replaces only the image × stand-in rows it measured)."""
    folder = table_dir(root)
    measured = {(p.image_id, p.host) for p in pairs}
    kept = [p for p in _stored_pairs(folder / "abi-table.json") if (p.image_id, p.host) not in measured]
    rows = kept + pairs
    md = write_text(folder / "abi-table.md", markdown(rows, profile))
    data = {"profile": profile, "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "pairs": [p.to_json() for p in rows]}
    js = write_json(folder / "abi-table.json", data)
    return md, js


def _stored_pairs(path: Path) -> list[Pair]:
    """The stored table's rows, each checked (state.typed); none when there is no table yet. A broken row is an
    AbiError and the file is left as it is (a later run would otherwise drop the other images' rows)."""
    if not path.exists():
        return []
    try:
        data = state.load_json(path, "ABI table")
        found = data.get("pairs", []) if isinstance(data, dict) else None
        if not isinstance(found, list):
            raise state.StateError(f"{path}: pairs: must be a list")
        return [state.typed(Pair, p, path, f"pairs[{i}]") for i, p in enumerate(found)]
    except state.StateError as exc:
        raise AbiError(f"{exc}; it is left as it is: move it away to start the table afresh") from None

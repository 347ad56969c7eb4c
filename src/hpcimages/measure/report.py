"""Tables, ratios, targets, anomalies and plots, computed from stored results (never typed).

Results are grouped by image (cell); a cell's group also holds the bare-metal runs with the same MPI.
Every figure is the median over repeats.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .. import stats, tables
from ..files import write_text
from . import decide
from .results import (
    CEILING_VARIANTS,
    CMA_BLOCKED,
    CMA_WORKS,
    DEFAULT_SANDBOX_VARIANT,
    H5PY_SERIES,
    SITE_BIND,
    SWAP_VARIANTS,
    ResultRow,
    medians,
)

#: what to do where the probe found cross-memory attach blocked (both anomaly lines that name that cause say it)
CMA_ADVICE = ("run containers with --cap-add SYS_PTRACE (or a seccomp profile that allows "
              "process_vm_readv/process_vm_writev)")
#: the copy ceiling's variants (bench/copy_ceiling.c): host-wide, shown in every group that ran osu_bw
CEILING, CEILING_CMA = CEILING_VARIANTS["memcpy"], CEILING_VARIANTS["cma"]
VARIANT_ORDER = ("container", DEFAULT_SANDBOX_VARIANT, "container (MPICH ABI)", *SWAP_VARIANTS.values(),
                 "container (persistent)", "container (C)", "container (C, MPICH ABI)", "bare-metal",
                 *decide.BARE_SWAP_VARIANTS.values(), "bare-metal (persistent)", "bare-metal (C)", CEILING, CEILING_CMA)
LARGE = 1024 * 1024
ANOMALY_RATIO = 0.5
TITLES = {"osu_bw": "Bandwidth (MB/s)", "osu_latency": "Point-to-point latency (µs)",
          "osu_allreduce": "Allreduce latency, average over ranks (µs)", "hello": "MPI hello: ranks that answered"}
TITLES.update({"h5py_write_independent": "h5py parallel write, independent I/O (MB/s, all ranks)",
               "h5py_write_collective": "h5py parallel write, collective I/O (MB/s, all ranks)",
               "h5py_read_independent": "h5py parallel read, independent I/O (MB/s, all ranks)",
               "h5py_read_collective": "h5py parallel read, collective I/O (MB/s, all ranks)"})
H5PY_BENCHMARKS = tuple(H5PY_SERIES)
TABLE_BENCHMARKS = ("hello", "osu_bw", "osu_latency", "osu_allreduce", *H5PY_BENCHMARKS)
BANDWIDTHS = ("osu_bw", *H5PY_BENCHMARKS)  # higher is better


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[object]]

    def text(self) -> str:
        return f"{self.title}\n\n" + tables.terminal(self.rows, self.headers)

    def markdown(self) -> str:
        return f"### {self.title}\n\n" + tables.markdown(self.rows, self.headers)


@dataclass
class Target:
    """A target judged by its intervals (decide.py): met, NOT met, undecided or not measured, with the sizes that
    say so."""

    group: str
    statement: str
    outcome: str
    answers: list[decide.Answer]

    def line(self) -> str:
        head = f"[{self.outcome}] {self.group}: {self.statement}"
        if self.outcome == decide.NOT_MEASURED:
            return head
        shown = [a for a in self.answers if a.outcome == self.outcome] if self.outcome != decide.MET else []
        repeats = sorted({a.repeats for a in self.answers})
        span = f"{repeats[0]}" if len(repeats) == 1 else f"{repeats[0]}-{repeats[-1]}"
        where = "; ".join(f"{a.size} B {a.figure}" for a in shown[:3]) + ("; ..." if len(shown) > 3 else "")
        return f"{head}: {where + ', ' if where else ''}{len(self.answers)} sizes, {span} repeats"


def groups(records: list[ResultRow]) -> dict[str, list[ResultRow]]:
    """cell ref (or site/host label) -> its records plus the bare-metal records of the same MPI."""
    out: dict[str, list[ResultRow]] = {}
    cells = sorted({r.cell for r in records if r.cell})
    for cell in cells:
        mpis = {r.mpi for r in records if r.cell == cell}
        benches = {r.benchmark for r in records if r.cell == cell}  # bare metal of what the cell ran, not more
        out[cell] = [r for r in records if r.cell == cell or (not r.cell and r.benchmark in benches and (
            r.mpi in mpis or r.variant in (CEILING, CEILING_CMA)))]
    orphans = [r for r in records if not r.cell and not any(r in g for g in out.values())]
    for r in orphans:
        out.setdefault(f"bare metal {r.mpi}", []).append(r)
    return out


def _variants(med: dict, benchmark: str) -> list[str]:
    present = {v for (_, b, v, _) in med if b == benchmark}
    return [v for v in VARIANT_ORDER if v in present] + sorted(present - set(VARIANT_ORDER))


def _sizes(med: dict, benchmark: str) -> list[int]:
    return sorted({s for (_, b, _, s) in med if b == benchmark})


def value_table(group: str, med: dict, benchmark: str, flagged: set[tuple[str, int]]) -> Table | None:
    variants = _variants(med, benchmark)
    if not variants:
        return None
    rows = []
    for size in _sizes(med, benchmark):
        row: list[object] = [size]
        for v in variants:
            value = med.get((group, benchmark, v, size))
            row.append(None if value is None else (f"{value:.2f} !" if (v, size) in flagged else value))
        rows.append(row)
    return Table(f"{group}: {TITLES.get(benchmark, benchmark)}", ["size (B)", *variants], rows)


def _ratio(med: dict, group: str, bench: str, a: str, b: str, size: int) -> float | None:
    x, y = med.get((group, bench, a, size)), med.get((group, bench, b, size))
    return None if x is None or y is None or y == 0 else x / y


RATIOS = (
    ("osu_bw", "container", "bare-metal", "bw container / bare metal"),
    ("osu_bw", DEFAULT_SANDBOX_VARIANT, "bare-metal", "bw default sandbox / bare metal"),
    ("osu_bw", DEFAULT_SANDBOX_VARIANT, "container", "bw default sandbox / container"),
    # the bind-model swap: the stand-in host MPI against the same wheel on bare metal, and against itself there
    *(("osu_bw", v, "bare-metal", f"bw {v} / bare metal") for v in SWAP_VARIANTS.values()),
    *(("osu_bw", v, decide.BARE_SWAP_VARIANTS[abi], f"bw {v} / {decide.BARE_SWAP_VARIANTS[abi]}")
      for abi, v in SWAP_VARIANTS.items()),
    ("osu_bw", "container", "container (C)", "bw Python / C (container)"),
    ("osu_bw", "bare-metal", "bare-metal (C)", "bw Python / C (bare metal)"),
    ("osu_bw", "container (persistent)", "container (C)", "bw Python persistent / C (container)"),
    ("osu_bw", "bare-metal (persistent)", "bare-metal (C)", "bw Python persistent / C (bare metal)"),
    ("osu_latency", "container", "bare-metal", "latency container / bare metal"),
    ("osu_latency", DEFAULT_SANDBOX_VARIANT, "container", "latency default sandbox / container"),
    ("osu_latency", "container", "container (C)", "latency Python / C (container)"),
    ("osu_latency", "container (persistent)", "container (C)", "latency Python persistent / C (container)"),
    *(("osu_latency", v, "bare-metal", f"latency {v} / bare metal") for v in SWAP_VARIANTS.values()),
    *(("osu_latency", v, decide.BARE_SWAP_VARIANTS[abi], f"latency {v} / {decide.BARE_SWAP_VARIANTS[abi]}")
      for abi, v in SWAP_VARIANTS.items()),
    *((b, v, "container", f"{b[5:].replace('_', ' ')} {v} / container") for b in H5PY_BENCHMARKS
      for v in SWAP_VARIANTS.values()),
    *((b, "container", "bare-metal", f"{b[5:].replace('_', ' ')} container / bare metal") for b in H5PY_BENCHMARKS),
)


def _site_ratios(med: dict) -> list[tuple[str, str, str, str]]:
    """Runs from elsewhere (a Slurm site's variants) against the same image in Docker."""
    others = sorted({k[2] for k in med if k[1] in ("osu_bw", "osu_latency")} - set(VARIANT_ORDER))
    return [(b, v, "container", f"{short(b)} {v} / container")
            for b in ("osu_bw", "osu_latency") for v in others]


def site_pairs(rows: Iterable[ResultRow]) -> list[tuple[str, str, str, str]]:
    """A Slurm site's bind model against its hybrid model, paired by repeat (the jobs of `invoke submit --model
    both --repeats N`), for the table of ratios with their spread."""
    return [(rule.bench, rule.a, rule.b, f"{short(rule.bench)} {rule.a} / {rule.b}")
            for rule in decide.site_rules({r.variant for r in rows})]


def short(bench: str) -> str:
    """A point-to-point benchmark as a ratio's title names it."""
    return "bw" if bench == "osu_bw" else "latency"


def ratio_table(group: str, med: dict) -> Table | None:
    columns = [(b, x, y, title) for b, x, y, title in (*RATIOS, *_site_ratios(med))
               if any(k[1] == b and k[2] == x for k in med) and any(k[1] == b and k[2] == y for k in med)]
    if not columns:
        return None
    benches = {b for b, *_ in columns}
    sizes = sorted({s for (_, b, _, s) in med if b in benches})
    rows = [[size, *(_ratio(med, group, b, x, y, size) for b, x, y, _ in columns)] for size in sizes]
    return Table(f"{group}: ratios (median / median)", ["size (B)", *(c[3] for c in columns)], rows)


#: Python's cost per message: (size / Python bandwidth) - (size / C bandwidth), in µs (MB/s = bytes per µs)
OVERHEADS = (
    ("container", "container (C)", "container"),
    ("container (persistent)", "container (C)", "container, persistent requests"),
    ("bare-metal", "bare-metal (C)", "bare metal"),
    ("bare-metal (persistent)", "bare-metal (C)", "bare metal, persistent requests"),
)


def overhead_table(group: str, med: dict) -> Table | None:
    """Per message, how much longer the Python script takes than the C reference (medians): the interpreter's share,
    which a Python / C ratio hides behind the message size."""
    measured = {k[2] for k in med if k[1] == "osu_bw"}
    columns = [(py, c, title) for py, c, title in OVERHEADS if py in measured and c in measured]
    if not columns:
        return None
    rows = []
    for size in _sizes(med, "osu_bw"):
        row: list[object] = [size]
        for py, c, _ in columns:
            a, b = med.get((group, "osu_bw", py, size)), med.get((group, "osu_bw", c, size))
            row.append(None if not a or not b else size / a - size / b)
        rows.append(row)
    return Table(f"{group}: Python overhead per message, osu_bw (µs; size / Python bw - size / C bw, medians)",
                 ["size (B)", *(title for _, _, title in columns)], rows)


def ceiling_table(group: str, rows: list[ResultRow]) -> Table | None:
    """osu_bw of every variant as a fraction of the copy ceiling measured in the same repeat (the median of the
    repeats' paired fractions): how close to one plain copy between the two CPUs each variant gets."""
    variants = [v for v in _variants({(group, r.benchmark, r.variant, r.size): 0 for r in rows}, "osu_bw")
                if v != CEILING]
    sizes = sorted({r.size for r in rows if r.benchmark == "osu_bw" and r.variant == CEILING})
    if not sizes or not variants:
        return None
    body = []
    for size in sizes:
        cells: list[object] = [size]
        for v in variants:
            fractions = paired_ratios(rows, "osu_bw", v, CEILING, size)
            cells.append(f"{statistics.median(fractions):.3f}" if fractions else None)
        ceiling = statistics.median(r.value for r in rows if r.benchmark == "osu_bw" and r.variant == CEILING
                                    and r.size == size)
        body.append([*cells, f"{ceiling:.0f}"])
    return Table(f"{group}: osu_bw as a fraction of the copy ceiling (one memcpy between the ranks' two CPUs, measured "
                 "in each repeat; median of the paired fractions)", ["size (B)", *variants, "ceiling (MB/s)"], body)


#: The cost of the MPI-5 standard ABI: a standard-ABI image against the MPICH ABI of the same image and MPICH.
ABI_COST = (
    ("osu_bw", "container", "container (MPICH ABI)", "bw Python"),
    ("osu_bw", "container (C)", "container (C, MPICH ABI)", "bw C"),
    ("osu_latency", "container", "container (MPICH ABI)", "latency Python"),
    ("osu_latency", "container (C)", "container (C, MPICH ABI)", "latency C"),
)
def paired_ratios(rows: Iterable[ResultRow], bench: str, a: str, b: str, size: int) -> list[float]:
    """a / b for each repeat in which both ran (same session, same repeat: the runs were interleaved)."""
    return stats.paired_ratios(decide.by_repeat(rows, bench, a, b, size), a, b)


def interval_table(group: str, rows: list[ResultRow], ratios: Iterable[tuple[str, str, str, str]],
                   title: str, plan: stats.Sequential | None = None) -> Table | None:
    """Ratios a / b per size with their spread: the median of the repeats' paired ratios, a 95 % bootstrap
    interval and a verdict; a column only where both variants ran in the same repeats. A session repeated until
    decided gets its looks' level over all its repeats (its decisions table has each question's own look)."""
    level = plan.level if plan else 1 - stats.ALPHA
    columns: dict[str, dict[int, str]] = {}
    for bench, a, b, name in ratios:
        sizes = sorted({r.size for r in rows if r.benchmark == bench})
        cells = {size: _interval_cell(paired, bench in BANDWIDTHS, level) for size in sizes
                 if (paired := paired_ratios(rows, bench, a, b, size))}
        if cells:
            columns[name] = cells
    if not columns:
        return None
    sizes = sorted({size for cells in columns.values() for size in cells})
    body = [[size, *(cells.get(size) for cells in columns.values())] for size in sizes]
    return Table(f"{group}: {title} (median of the repeats' paired ratios, [{100 * level:.1f} % bootstrap interval], "
                 f"equivalent = inside 1 ± {stats.EQUIVALENT:.2f})", ["size (B)", *columns], body)


def _interval_cell(paired: list[float], higher_is_better: bool, level: float = 1 - stats.ALPHA) -> str:
    found = stats.interval(paired, level)
    if found is None:  # one repeat has no spread: a verdict would claim what was not measured
        return f"{paired[0]:.3f} (1 repeat: no interval)"
    return found.cell(higher_is_better)


def abi_cost_table(group: str, rows: list[ResultRow]) -> Table | None:
    return interval_table(group, rows, ABI_COST, "MPI-5 standard ABI / MPICH ABI, same image and MPICH")


def anomalies(group: str, med: dict, sandboxes: dict[str, str] | None = None) -> tuple[list[str], set[tuple[str, int]]]:
    """Variants far below bare metal at large messages: a broken setup, not noise. Where the variant's runs say their
    container blocked cross-memory attach (``sandboxes``: variant -> its rows' sandbox label), that is the cause
    named; otherwise the usual suspects."""
    found, flagged = [], set()
    for (g, bench, variant, size), value in sorted(med.items()):
        if g != group or bench != "osu_bw" or size < LARGE or variant.startswith("bare-metal") \
                or variant in (CEILING, CEILING_CMA):
            continue
        reference = "bare-metal (C)" if variant.endswith("(C)") else "bare-metal"
        base = med.get((group, bench, reference, size))
        if base and value < ANOMALY_RATIO * base:
            flagged.add((variant, size))
            label = (sandboxes or {}).get(variant, "")
            cause = (f"its container blocks cross-memory attach ({label}): {CMA_ADVICE}"
                     if CMA_BLOCKED in label else
                     "probable misconfiguration (e.g. a TCP fallback or no shared memory)")
            found.append(f"{group} {variant}: {value:.0f} MB/s at {size} B is {value / base:.3f} x {reference} "
                         f"({base:.0f} MB/s): {cause}")
    return found, flagged


def sandbox_gaps(group: str, rows: list[ResultRow], plan: stats.Sequential | None = None) -> list[str]:
    """Sizes where the default-sandbox container is slower than the informed one (their paired interval lies below
    1 - EQUIVALENT), with the cause the cross-memory-attach probe names (each run's sandbox label carries its
    answer), or the statement that the probe does not explain it."""
    every_size = dataclasses.replace(SANDBOX_RULE, min_size=0)
    slower = [a for a in decide.answers(rows, plan, [every_size]) if a.outcome == "slower" and a.interval]
    if not slower:
        return []
    labels = {r.variant: r.sandbox or "" for r in rows if r.variant in (DEFAULT_SANDBOX_VARIANT, "container")}
    plain, informed = labels.get(DEFAULT_SANDBOX_VARIANT, ""), labels.get("container", "")
    where = ", ".join(f"{a.size} B {a.figure}" for a in slower[:4])
    if CMA_BLOCKED in plain and CMA_WORKS in informed:
        probe = plain.split(CMA_BLOCKED, 1)[1].strip(" ()")
        cause = (f"cause: cross-memory attach is blocked under the engine's default sandbox ({probe}) and works in "
                 f"the informed one ({informed.split(';', 1)[0]}): the MPI copies large messages through shared "
                 f"memory twice instead of once; {CMA_ADVICE}")
    else:
        cause = f"not explained by cross-memory attach (default: {plain or '?'}; informed: {informed or '?'})"
    return [f"{group} {DEFAULT_SANDBOX_VARIANT}: bandwidth below the informed container at {where}; {cause}"]


def transports(rows: Iterable[ResultRow]) -> dict[str, str]:
    """variant -> what its osu_bw runs reported as transport (the last run's, where several)."""
    return {r.variant: r.transport for r in rows if r.benchmark == "osu_bw" and r.transport}


def tcp_fallbacks(group: str, rows: list[ResultRow], med: dict) -> tuple[list[str], set[tuple[str, int]]]:
    """Inter-node runs of the image's own MPI (hybrid) that went over TCP while the site's MPI (bind model, same
    site and layout) did not, or ran at under ANOMALY_RATIO of it at >= 1 MiB: the image's MPI has no provider for the
    site's network and fell back to TCP sockets. Both on TCP (a TCP-only network, like the test cluster's) is not
    a fallback."""
    seen = transports(rows)
    found, flagged = [], set()
    for hybrid in sorted(v for v in seen if v.endswith(" inter-node") and SITE_BIND not in v):
        bind = hybrid.replace(" inter-node", f"{SITE_BIND} inter-node")
        hybrid_tcp, bind_tcp = seen[hybrid].startswith("tcp"), seen.get(bind, "").startswith("tcp")
        slow = [(size, value, base) for (g, b, v, size), value in sorted(med.items())
                if g == group and b == "osu_bw" and v == hybrid and size >= LARGE
                and (base := med.get((group, b, bind, size))) and value < ANOMALY_RATIO * base]
        if hybrid_tcp and bind in seen and (not bind_tcp or slow):
            flagged.update((hybrid, size) for size, _, _ in slow)
            figures = "; ".join(f"{value:.0f} MB/s at {size} B is {value / base:.3f} x {bind}" for size, value, base
                                in slow[:2]) or f"{bind} reported {seen[bind]}"
            found.append(f"{group} {hybrid}: TCP fallback: the image's MPI sent inter-node messages over TCP "
                         f"({seen[hybrid]}), the site's MPI did not ({figures}): the image's MPI (its libfabric) has "
                         "no provider for this network; use the bind model, or build the image against the site's "
                         "fabric libraries")
    return found, flagged


SANDBOX_RULE = next(r for r in decide.RULES if r.a == DEFAULT_SANDBOX_VARIANT)


def targets(group: str, rows: list[ResultRow], plan: stats.Sequential | None) -> list[Target]:
    """Each target rule judged by its intervals at every size it covers (decide.py)."""
    out = []
    ran = {r.variant for r in rows}
    if not ran & set(VARIANT_ORDER):  # only runs elsewhere (a Slurm site's): no target asks anything of them
        return []
    for rule in (r for r in decide.RULES if r.target):
        if rule.a in SWAP_VARIANTS.values() and rule.a not in ran:  # the other ABI's swap, or --no-swap
            continue
        found = decide.answers(rows, plan, [rule])
        out.append(Target(group, rule.statement, decide.target_outcome(found), found))
    return out


def decisions_table(group: str, rows: list[ResultRow], plan: stats.Sequential | None) -> Table | None:
    """Every question a target or an anomaly reads: its interval, the repeats it took and what it decided."""
    found = decide.answers(rows, plan, decide.rules_for(rows))
    if not found:
        return None
    how = plan.describe() if plan else \
        f"a fixed number of repeats, distribution-free {100 * (1 - stats.ALPHA):.0f} % intervals"
    body = [[a.rule.shown, a.size, a.figure, f"{a.repeats} of {a.available}" if plan else a.repeats, a.outcome,
             a.rule.statement if a.rule.target else f"{a.rule.reader}: {a.rule.statement}"]
            for a in found]
    return Table(f"{group}: decisions ({how})", ["question", "size (B)", "median [interval]", "repeats", "outcome",
                                                 "read by"], body)


@dataclass
class Report:
    tables: list[Table]
    targets: list[Target]
    anomalies: list[str]

    def text(self) -> str:
        parts = [t.text() for t in self.tables]
        if self.targets:  # the MPI benchmarks' (a parallel-I/O run alone has none)
            parts.append("Targets\n\n" + "\n".join(t.line() for t in self.targets))
        parts.append("Anomalies\n\n" + ("\n".join(self.anomalies) or "none"))
        return "\n\n".join(parts) + "\n"


def build_report(records: list[ResultRow]) -> Report:
    tables, all_targets, all_anomalies = [], [], []
    for group, rows in groups(records).items():
        med = _group_medians(group, rows)
        found, flagged = anomalies(group, med, {r.variant: r.sandbox for r in rows if r.sandbox})
        fallbacks, fell_back = tcp_fallbacks(group, rows, med)
        plan = decide.plan_of(rows, group)
        found, flagged = found + fallbacks + sandbox_gaps(group, rows, plan), flagged | fell_back
        for bench in TABLE_BENCHMARKS:
            table = value_table(group, med, bench, flagged)
            if table:
                tables.append(table)
        ratios = ratio_table(group, med)
        if ratios:
            tables.append(ratios)
        overhead = overhead_table(group, med)
        if overhead:
            tables.append(overhead)
        fraction = ceiling_table(group, rows)
        if fraction:
            tables.append(fraction)
        spread = interval_table(group, rows, (*RATIOS, *site_pairs(rows)), "ratios with their spread", plan)
        if spread:
            tables.append(spread)
        cost = abi_cost_table(group, rows)
        if cost:
            tables.append(cost)
        decisions = decisions_table(group, rows, plan)
        if decisions:
            tables.append(decisions)
        if any(r.benchmark.startswith("osu_") for r in rows):  # the targets are the MPI benchmarks'
            all_targets += targets(group, rows, plan)
        all_anomalies += found
    return Report(tables, all_targets, all_anomalies)


def _group_medians(group: str, rows: Iterable[ResultRow]) -> dict[tuple[str, str, str, int], float]:
    regrouped = (dataclasses.replace(r, cell=group) for r in rows)
    return {(group, b, v, s): value for (_, b, v, s), value in medians(regrouped).items()}


def write_markdown(report: Report, path: Path, sources: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "<!-- GENERATED by `invoke tabulate` / `nox -s bench` from: " + \
        ", ".join(str(p) for p in sources) + " -->\n\n"
    body = "\n\n".join(t.markdown() for t in report.tables)
    tail = "\n\n### Targets\n\n" + "\n".join(f"- {t.line()}" for t in report.targets) + \
        "\n\n### Anomalies\n\n" + ("\n".join(f"- {a}" for a in report.anomalies) or "none") + "\n"
    write_text(path, header + body + tail)


def size_label(nbytes: float) -> str:
    """Message sizes the way people say them: 512 B, 64 KiB, 4 MiB."""
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= scale:
            return f"{nbytes / scale:g} {unit}"
    return f"{nbytes:g} B"


def size_ticks(sizes: Iterable[int]) -> list[int]:
    """The powers of four among the sizes measured, and the largest size itself (4 MiB in the default sweep)."""
    sizes = sorted(set(sizes))
    if not sizes:
        return []
    ticks = [s for s in sizes if (s.bit_length() - 1) % 2 == 0 and s & (s - 1) == 0]
    return [*ticks, sizes[-1]] if sizes[-1] not in ticks else ticks


def spread(rows: Iterable[ResultRow], bench: str, variant: str) -> list[tuple[int, float, float, float]]:
    """(size, median, lowest, highest) over the repeats of one variant: the line and its band in a plot."""
    values: dict[int, list[float]] = {}
    for r in rows:
        if r.benchmark == bench and r.variant == variant and r.size > 0:
            values.setdefault(r.size, []).append(r.value)
    return [(size, statistics.median(v), min(v), max(v)) for size, v in sorted(values.items())]


def plain(text: str) -> str:
    """A stored name as plot text: matplotlib reads ``$...$`` as mathtext (and fails on an unbalanced one)."""
    return text.replace("$", r"\$")


def plot(records: list[ResultRow], outdir: Path) -> list[Path]:
    """PNG plots per group: bandwidth, point-to-point latency and allreduce latency vs message size. Each variant
    is its median line with a band from the lowest to the highest repeat; sizes are labelled 1 B ... 4 MiB,
    bandwidth on a linear axis, latencies (which span three decades) on a logarithmic one with plain numbers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter

    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for group, rows in groups(records).items():
        for bench in ("osu_bw", "osu_latency", "osu_allreduce", "h5py_write_collective", "h5py_read_collective"):
            variants = _variants(_group_medians(group, rows), bench)
            if not variants:
                continue
            fig, ax = plt.subplots(figsize=(8, 4.8))
            drawn: list[int] = []
            for v in variants:
                points = spread(rows, bench, v)
                if not points:
                    continue
                sizes = [p[0] for p in points]
                drawn += sizes
                style = {"linestyle": ":", "color": "black" if v == CEILING else "grey", "marker": None} \
                    if v in (CEILING, CEILING_CMA) else {"linestyle": "--" if "bare-metal" in v else "-", "marker": "o"}
                line, = ax.plot(sizes, [p[1] for p in points], markersize=3, label=plain(v), **style)
                ax.fill_between(sizes, [p[2] for p in points], [p[3] for p in points], color=line.get_color(),
                                alpha=0.15, linewidth=0)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(size_ticks(drawn)))  # down to the largest size measured
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: size_label(x)))
            ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
            ax.tick_params(axis="x", labelsize=8)
            if bench in BANDWIDTHS:
                ax.set_ylim(bottom=0)
            else:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))  # 0.1, 1, 10, not 1.0 or 10^1
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
            ax.set_xlabel("bytes per rank" if bench in H5PY_BENCHMARKS else "message size")
            ax.set_ylabel(TITLES[bench])
            ax.set_title(f"{bench}: {plain(group)}\n(median of the repeats; band: lowest to highest)", fontsize=10)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = outdir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', group)}-{bench}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        questions = plot_questions(group, rows, outdir)
        if questions:
            written.append(questions)
    return written


#: one panel per question a reader asks of an image's osu_bw: its title and the rules that answer it (the first
#: whose variants ran is drawn)
PANELS = (
    ("container vs bare metal", ("container",)),
    ("Python (persistent requests) vs C", ("container (persistent)",)),
    ("engine's default vs informed sandbox", (DEFAULT_SANDBOX_VARIANT,)),
    ("bind model vs the same host MPI on bare metal", tuple(SWAP_VARIANTS.values())),
)


def panel_rule(rows: list[ResultRow], firsts: tuple[str, ...]) -> decide.Rule | None:
    ran = {r.variant for r in rows if r.benchmark == "osu_bw"}
    return next((rule for rule in decide.RULES if rule.bench == "osu_bw" and rule.a in firsts and rule.a in ran
                 and rule.b in ran), None)


def panels_of(rows: list[ResultRow]) -> list[tuple[str, decide.Rule]]:
    """The questions a group's plot answers: PANELS where both variants ran, then each site's bind / hybrid."""
    fixed = [(title, rule) for title, firsts in PANELS if (rule := panel_rule(rows, firsts)) is not None]
    sites = [(f"{rule.a.replace(SITE_BIND, '', 1)}: the site's MPI (bind model) vs the image's own", rule)
             for rule in decide.site_rules({r.variant for r in rows if r.benchmark == "osu_bw"})
             if rule.bench == "osu_bw"]
    return fixed + sites


def panel_verdict(rule: decide.Rule, found: list[decide.Answer]) -> str:
    """A target's outcome over its range, or (the anomaly's question) the verdicts by size where decided."""
    in_range = [a for a in found if a.size >= rule.min_size]
    if rule.target:
        return f"{decide.target_outcome(in_range)} (>= {size_label(rule.min_size)})"
    decided = [f"{a.outcome} at {size_label(a.size)}" for a in in_range if a.outcome != decide.UNDECIDED]
    return "; ".join(decided[:3]) or f"undecided at >= {size_label(rule.min_size)}"


def plot_questions(group: str, rows: list[ResultRow], outdir: Path) -> Path | None:
    """One figure, one panel per question (PANELS): the osu_bw ratio's median by size with its interval as a band
    (the look that decided it, for a session repeated until decided), 1 ± 0.05 shaded, the target's range marked,
    and the verdict in the panel's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FuncFormatter

    plan = decide.plan_of(rows, group)
    panels = panels_of(rows)
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.6 * len(panels)), squeeze=False)
    for ax, (title, rule) in zip(axes[:, 0], panels, strict=True):
        found = [a for a in decide.answers(rows, plan, [dataclasses.replace(rule, min_size=1)]) if a.interval]
        if not found:
            ax.set_title(f"{title}: too few repeats for an interval", fontsize=9)
            continue
        sizes = [a.size for a in found]
        ax.axhspan(1 - stats.EQUIVALENT, 1 + stats.EQUIVALENT, color="green", alpha=0.08, linewidth=0)
        ax.axhline(1.0, color="grey", linewidth=0.8)
        ax.fill_between(sizes, [a.interval.low for a in found], [a.interval.high for a in found], alpha=0.25,
                        linewidth=0)
        ax.plot(sizes, [a.interval.median for a in found], marker="o", markersize=3)
        ax.axvline(rule.min_size, color="black", linestyle=":", linewidth=0.8)
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(size_ticks(sizes)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: size_label(x)))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda *_: ""))
        ax.tick_params(labelsize=8)
        ax.set_ylabel(plain(rule.shown).replace(" / ", " /\n"), fontsize=7)
        ax.set_title(f"{title}: {panel_verdict(rule, found)}", fontsize=9)
        ax.grid(True, which="major", alpha=0.3)
    level = f"the {100 * plan.level:.1f} % interval at the look that decided it" if plan else \
        f"the {100 * (1 - stats.ALPHA):.0f} % interval"
    fig.suptitle(f"osu_bw, {plain(group)}: ratio by message size\n(band: {level}; shaded: 1 ± "
                 f"{stats.EQUIVALENT:g}; dotted: where the target's range starts)", fontsize=9)
    fig.tight_layout()
    path = outdir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', group)}-questions.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

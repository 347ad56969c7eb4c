"""What the benchmarks must show, as questions an interval decides: the targets, and the anomaly worth repeating for.

A rule compares two variants of one benchmark at each message size in its range: a ratio ``a / b`` (or, for
small-message latency, a difference ``a - b`` in µs, which a ratio hides). At one size it is decided when its
interval (the repeats' paired values, stats.median_interval: distribution-free, 95 % from six repeats) lies
entirely on one side of the rule's bound:

``equivalent``          inside 1 ± stats.EQUIVALENT: met; entirely outside: not met
``at-least``            low >= bound: met; high < bound: not met
``difference-at-most``  high <= bound: met; low > bound: not met
``decided``             (an anomaly's question) any verdict but ``undecided``

A target is met when every size is met, not met when one size is decided against it, and undecided otherwise:
a median alone never meets a target. ``invoke bench --until-decided`` repeats until every rule that ran is decided
at every size (bench.py), and the report judges the stored rows the same way, at the look the bench stopped at
(stats.Sequential).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .. import stats
from .results import DEFAULT_SANDBOX_VARIANT, SITE_BIND, SWAP_VARIANTS, ResultRow, ResultsError

KiB, MiB = 1024, 1024 * 1024
EQUIVALENT, AT_LEAST, DIFFERENCE_AT_MOST, DECIDED = "equivalent", "at-least", "difference-at-most", "decided"
MET, NOT_MET, UNDECIDED, NOT_MEASURED = "met", "NOT met", "undecided", "not measured"
#: the same stand-in host MPI as the bind swap, run on bare metal from the bare-metal venv (bench.py): by the stand-in's
#: ABI, and by the swap variant it is the bare-metal twin of
BARE_SWAP_VARIANTS = {abi: f"bare-metal+{name.split('+', 1)[1]}" for abi, name in SWAP_VARIANTS.items()}
BARE_SWAP_OF = {SWAP_VARIANTS[abi]: bare for abi, bare in BARE_SWAP_VARIANTS.items()}


@dataclass(frozen=True)
class Rule:
    statement: str
    bench: str
    a: str
    b: str
    kind: str
    bound: float = 1.0
    min_size: int = 0
    max_size: int | None = None
    target: bool = True  # False: a question repeated for (or a job's repeats answer) but not a target
    reader: str = "anomaly"  # who reads a question that is no target: an anomaly, or a site's table (site_rules)

    def sizes(self, rows: Iterable[ResultRow]) -> list[int]:
        """The sizes in range at which both variants ran."""
        seen: dict[str, set[int]] = {self.a: set(), self.b: set()}
        for r in rows:
            if r.benchmark == self.bench and r.variant in seen and r.size >= self.min_size \
                    and (self.max_size is None or r.size <= self.max_size):
                seen[r.variant].add(r.size)
        return sorted(seen[self.a] & seen[self.b])

    @property
    def shown(self) -> str:
        return f"{self.a} - {self.b}" if self.kind == DIFFERENCE_AT_MOST else f"{self.a} / {self.b}"

    def outcome(self, found: stats.Interval | None) -> str:
        if found is None:
            return UNDECIDED
        if self.kind == EQUIVALENT:
            verdict = found.verdict(higher_is_better=True)
            return MET if verdict == "equivalent" else UNDECIDED if verdict == "undecided" else NOT_MET
        if self.kind == AT_LEAST:
            return MET if found.low >= self.bound else NOT_MET if found.high < self.bound else UNDECIDED
        if self.kind == DIFFERENCE_AT_MOST:
            return MET if found.high <= self.bound else NOT_MET if found.low > self.bound else UNDECIDED
        verdict = found.verdict(higher_is_better=self.bench != "osu_latency")
        return UNDECIDED if verdict == "undecided" else verdict


RULES = (
    Rule("osu_bw container / bare metal equivalent (within ±5 %) at every size >= 256 KiB", "osu_bw", "container",
         "bare-metal", EQUIVALENT, min_size=256 * KiB),
    Rule("osu_bw.py --persistent >= 0.95 x the C reference at every size >= 64 KiB", "osu_bw",
         "container (persistent)", "container (C)", AT_LEAST, 0.95, min_size=64 * KiB),
    *(Rule(f"bind model / the same host MPI on bare metal ({swap} / {BARE_SWAP_VARIANTS[abi]}) equivalent "
           "(within ±5 %) at every size >= 256 KiB", "osu_bw", swap, BARE_SWAP_VARIANTS[abi], EQUIVALENT,
           min_size=256 * KiB) for abi, swap in SWAP_VARIANTS.items()),
    Rule("osu_latency.py --persistent within +0.4 µs of the C reference at 1-64 B (Python - C)", "osu_latency",
         "container (persistent)", "container (C)", DIFFERENCE_AT_MOST, 0.4, min_size=1, max_size=64),
    # the default-sandbox anomaly (report.sandbox_gaps) reads this interval
    Rule("default sandbox / informed container bandwidth at >= 1 MiB", "osu_bw", DEFAULT_SANDBOX_VARIANT,
         "container", DECIDED, min_size=MiB, target=False),
)


def site_rules(variants: Iterable[str]) -> list[Rule]:
    """A Slurm site's bind model against its hybrid model where both ran (`invoke submit --model both --repeats N`
    runs them in one job, repeat by repeat): which is faster, as far as the interval decides. No target says which
    must win: the site's MPI knows the network, the image's own may be the newer library."""
    present = set(variants)
    rules = []
    for bind in sorted(v for v in present if SITE_BIND in v):
        hybrid = bind.replace(SITE_BIND, "", 1)
        if hybrid not in present:
            continue
        question = "the site's MPI (bind model) against the image's own (hybrid), "
        rules += [Rule(question + "osu_bw at >= 256 KiB", "osu_bw", bind, hybrid, DECIDED, min_size=256 * KiB,
                       target=False, reader="site"),
                  Rule(question + "osu_latency at 1-64 B", "osu_latency", bind, hybrid, DECIDED, min_size=1,
                       max_size=64, target=False, reader="site")]
    return rules


def rules_for(rows: Iterable[ResultRow]) -> tuple[Rule, ...]:
    """The questions a group's rows can be asked: the fixed ones, and its sites' (site_rules)."""
    return (*RULES, *site_rules({r.variant for r in rows}))


@dataclass(frozen=True)
class Answer:
    rule: Rule
    size: int
    interval: stats.Interval | None
    repeats: int  # the paired repeats the interval used
    available: int  # the paired repeats stored
    outcome: str
    minimum: int = 6  # the fewest repeats with an interval (under a plan: its first look)

    @property
    def figure(self) -> str:
        if self.interval is None:
            if not self.available:
                return "not measured"
            return (f"{self.available} repeat{'s' if self.available > 1 else ''}: too few for an interval "
                    f"({self.minimum} at least)")
        return self.interval.figure


def plan_of(rows: Iterable[ResultRow], cell: str | None = None) -> stats.Sequential | None:
    """The sequential plan a cell's rows (all rows when ``cell`` is None) were measured under: one session's stored
    looks, or None (a fixed number of repeats, or sessions pooled by `invoke tabulate`, judged at the plain 95 %).
    The host's rows of other sessions beside a cell (bare metal, the ceiling) pair with none of its runs and do not
    count. Every stored plan is checked, used or not: one that is none is an error."""
    rows = list(rows)
    plans = {}
    for looks in {r.looks for r in rows if r.looks is not None}:
        try:
            plans[looks] = stats.Sequential.parse(looks)
        except stats.PlanError as exc:
            raise ResultsError(f"stored results: {exc}") from None
    mine = [r for r in rows if r.cell == cell] if cell is not None else rows
    found = {(r.session, r.looks) for r in mine or rows}
    if len(found) != 1:
        return None
    (_, looks), = found
    return plans[looks] if looks is not None else None


def by_repeat(rows: Iterable[ResultRow], bench: str, a: str, b: str, size: int) -> dict[tuple[str, tuple], float]:
    """(variant, (session, repeat)) -> value of two variants at one size: what stats pairs repeat by repeat (the
    variants of one repeat ran back to back)."""
    return {(r.variant, (r.session or "", r.repeat)): r.value for r in rows
            if r.benchmark == bench and r.size == size and r.variant in (a, b)}


def paired(rows: Iterable[ResultRow], rule: Rule, size: int) -> list[float]:
    values = by_repeat(rows, rule.bench, rule.a, rule.b, size)
    if rule.kind == DIFFERENCE_AT_MOST:
        return stats.paired_differences(values, rule.a, rule.b)
    return stats.paired_ratios(values, rule.a, rule.b)


def answer(rows: list[ResultRow], rule: Rule, size: int, plan: stats.Sequential | None) -> Answer:
    values = paired(rows, rule, size)
    if plan is None:
        found = stats.median_interval(values)
        return Answer(rule, size, found, len(values), len(values), rule.outcome(found),
                      stats.repeats_for(1 - stats.ALPHA))
    found, used, _ = plan.look(values, lambda iv: rule.outcome(iv) != UNDECIDED)
    return Answer(rule, size, found, used or len(values), len(values), rule.outcome(found), plan.looks[0])


def answers(rows: list[ResultRow], plan: stats.Sequential | None, rules: Iterable[Rule] = RULES) -> list[Answer]:
    return [answer(rows, rule, size, plan) for rule in rules for size in rule.sizes(rows)]


def target_outcome(found: list[Answer]) -> str:
    outcomes = {a.outcome for a in found}
    if not found:
        return NOT_MEASURED
    if NOT_MET in outcomes:
        return NOT_MET
    return MET if outcomes == {MET} else UNDECIDED

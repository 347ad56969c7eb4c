"""Statistics in one place: interleaved repeats → paired ratios → a 95 % bootstrap interval → a verdict.

The benchmark tables (``measure/report.py``, the parallel-I/O ones included, which the catalogue shows) and the ABI
table (``abi/``) all decide through here, so "equivalent", "slower" and "undecided" mean the same everywhere::

    ratios = paired_ratios({("a", 1): 10.0, ("b", 1): 5.0, ("a", 2): 9.0, ("b", 2): 4.5}, "a", "b")   # [2.0, 2.0]
    found = interval(ratios)            # Interval(median=2.0, low=2.0, high=2.0); None for fewer than 2 repeats
    found.verdict(higher_is_better=True)                                                               # 'faster'

Targets are decided by a distribution-free interval instead (``median_interval``): two order statistics of the
paired ratios that hold the true median with at least the stated probability for any continuous distribution of
independent repeats, where the bootstrap's percentiles hold it less often than they say at a few repeats (at five
repeats no interval reaches 95 %: the widest, smallest to largest, holds the median 1 - 2/2**5 = 93.75 % of the
time; the bootstrap's "99 %" is narrower still).

Repeats until decided (``invoke bench --until-decided``) look at the ratios after a planned number of repeats
(``Sequential.looks``) and stop at the first look where every question is decided. Stopping on a verdict biases a
95 % interval (look often enough and one will lie outside 1 ± 0.05 by chance), so each look's interval is computed
at ``1 - alpha / K`` for K planned looks (Bonferroni): all K intervals hold together with at least 1 - alpha, so
whichever look the run stopped at, its interval holds with at least 1 - alpha ("repeated confidence intervals").
"""

from __future__ import annotations

import itertools
import math
import random
import re
import statistics
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass

#: a ratio whose interval lies inside 1 ± this is "equivalent"
EQUIVALENT = 0.05
BOOTSTRAP_DRAWS = 2000
#: an interval is wrong at most this often (a question repeated until decided: its looks together)
ALPHA = 0.05


def paired_ratios(values: Mapping[tuple[str, Hashable], float], a: str, b: str) -> list[float]:
    """a / b for each repeat in which both ran: ``values`` maps (variant, repeat) to one measurement. The variants of
    a repeat ran back to back, so a ratio within one repeat cancels the machine's drift between repeats."""
    repeats = sorted({k for v, k in values if v == a} & {k for v, k in values if v == b})
    return [values[(a, k)] / values[(b, k)] for k in repeats if values[(b, k)]]


def paired_differences(values: Mapping[tuple[str, Hashable], float], a: str, b: str) -> list[float]:
    """a - b for each repeat in which both ran (a latency overhead in µs, where a ratio hides it)."""
    repeats = sorted({k for v, k in values if v == a} & {k for v, k in values if v == b})
    return [values[(a, k)] - values[(b, k)] for k in repeats]


def bootstrap_interval(ratios: list[float], draws: int = BOOTSTRAP_DRAWS,
                       level: float = 1 - ALPHA) -> tuple[float, float, float]:
    """(median, the (1 - level) / 2 and (1 + level) / 2 quantiles of the median over resampled repeats: 2.5th and
    97.5th percentile at 95 %); seeded: a table is stable."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    tail = (1 - level) / 2
    low, high = int(round(tail * draws, 9)), int(round((1 - tail) * draws, 9)) - 1
    return statistics.median(ratios), medians[low], medians[max(low, high)]


def interval_verdict(low: float, high: float, higher_is_better: bool) -> str:
    """equivalent | faster | slower | undecided, from where the interval lies against 1 ± EQUIVALENT."""
    if low >= 1 - EQUIVALENT and high <= 1 + EQUIVALENT:
        return "equivalent"
    if high < 1 - EQUIVALENT:
        return "slower" if higher_is_better else "faster"
    if low > 1 + EQUIVALENT:
        return "faster" if higher_is_better else "slower"
    return "undecided"


@dataclass(frozen=True)
class Interval:
    median: float
    low: float
    high: float

    def verdict(self, higher_is_better: bool) -> str:
        return interval_verdict(self.low, self.high, higher_is_better)

    @property
    def figure(self) -> str:
        """``0.981 [0.950, 1.010]``: the median and its interval."""
        return f"{self.median:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def cell(self, higher_is_better: bool) -> str:
        """How every table shows it: ``0.981 [0.950, 1.010] equivalent``."""
        return f"{self.figure} {self.verdict(higher_is_better)}"


def interval(ratios: list[float], level: float = 1 - ALPHA) -> Interval | None:
    """The bootstrap interval of paired ratios; None for fewer than two repeats (one repeat has no spread)."""
    if len(ratios) < 2:
        return None
    return Interval(*bootstrap_interval(ratios, level=level))


def median_interval(values: list[float], level: float = 1 - ALPHA) -> Interval | None:
    """The distribution-free interval of the median: the k-th smallest and k-th largest value, k as large as keeps
    P(the true median lies between them) = 1 - 2 P(Binomial(n, 1/2) < k) >= level. None when even the smallest
    and largest do not reach ``level`` (fewer than ``repeats_for(level)`` values)."""
    n = len(values)
    ordered = sorted(values)
    k, below = 0, 0.0  # below: P(Binomial(n, 1/2) <= k - 1), the chance the median lies under the k-th value
    while k < n // 2 and 1 - 2 * (below + math.comb(n, k) / 2**n) >= level:
        below += math.comb(n, k) / 2**n
        k += 1
    if k == 0:
        return None
    return Interval(statistics.median(ordered), ordered[k - 1], ordered[n - k])


def repeats_for(level: float) -> int:
    """The fewest repeats with a distribution-free interval at ``level`` (the smallest and largest value)."""
    return next(n for n in range(2, 200) if 1 - 2 / 2**n >= level)


class PlanError(ValueError):
    """A stored sequential plan that is not one."""


@dataclass(frozen=True)
class Sequential:
    """Repeats until decided: the repeat counts at which the ratios are looked at, each look's interval at
    ``1 - alpha / len(looks)`` (see the module's doc)."""

    #: the first look is the fewest repeats with a distribution-free interval at 1 - 0.05 / 5 (8)
    looks: tuple[int, ...] = (8, 12, 18, 27, 40)
    alpha: float = ALPHA

    @property
    def level(self) -> float:
        return 1 - self.alpha / len(self.looks)

    def text(self) -> str:
        """How a result row stores the plan, e.g. ``8,12,18,27,40@0.05``."""
        return f"{','.join(map(str, self.looks))}@{self.alpha:.6f}".rstrip("0")

    @classmethod
    def parse(cls, text: str) -> Sequential:
        """The plan a row stored; PlanError, saying why, for anything else (a results file is input)."""
        found = re.fullmatch(r"(\d{1,4}(?:,\d{1,4}){0,19})@(0?\.\d{1,6})", text or "", re.ASCII)
        looks = tuple(int(n) for n in found.group(1).split(",")) if found else ()
        alpha = float(found.group(2)) if found else 0.0
        if not found or looks[0] < 2 or any(b <= a for a, b in itertools.pairwise(looks)) or not 0 < alpha <= 0.5:
            raise PlanError(f"{text[:60]!r} is not a plan of looks (increasing repeat counts from 2, then "
                            "@alpha above 0 and at most 0.5, e.g. 8,12,18,27,40@0.05)")
        return cls(looks, alpha)

    def describe(self) -> str:
        return (f"looks after {', '.join(map(str, self.looks))} repeats; each distribution-free interval at "
                f"{100 * self.level:.1f} % (Bonferroni over {len(self.looks)} looks), so together at least "
                f"{100 * (1 - self.alpha):.0f} %")

    def look(self, values: list[float], decided: Callable[[Interval], bool]) -> tuple[Interval | None, int, bool]:
        """(interval, repeats it used, decided) at the first look whose interval decides, over the first n paired
        values in repeat order; or the last look the values reached, undecided. The same answer the bench gets
        when it stops there."""
        found, used = None, 0
        for n in self.looks:
            if len(values) < n:
                break
            found, used = median_interval(values[:n], self.level), n
            if found is not None and decided(found):
                return found, n, True
        return found, used, False

    def next_look(self, done: int) -> int | None:
        """The repeat count of the next look after ``done`` repeats (None past the last)."""
        return next((n for n in self.looks if n > done), None)


def median_or_none(values: Iterable[float]) -> float | None:
    found = list(values)
    return statistics.median(found) if found else None

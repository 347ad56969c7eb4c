"""Statistics in one place: interleaved repeats → paired ratios → a 95 % bootstrap interval → a verdict.

The benchmark tables (``measure/report.py``, the parallel-I/O ones included, which the catalogue shows) and the ABI
table (``abi/``) all decide through here, so "equivalent", "slower" and "undecided" mean the same everywhere::

    ratios = paired_ratios({("a", 1): 10.0, ("b", 1): 5.0, ("a", 2): 9.0, ("b", 2): 4.5}, "a", "b")   # [2.0, 2.0]
    found = interval(ratios)            # Interval(median=2.0, low=2.0, high=2.0); None for fewer than 2 repeats
    found.verdict(higher_is_better=True)                                                               # 'faster'
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

#: a ratio whose interval lies inside 1 ± this is "equivalent"
EQUIVALENT = 0.05
BOOTSTRAP_DRAWS = 2000


def paired_ratios(values: Mapping[tuple[str, Hashable], float], a: str, b: str) -> list[float]:
    """a / b for each repeat in which both ran: ``values`` maps (variant, repeat) to one measurement. The variants of
    a repeat ran back to back, so a ratio within one repeat cancels the machine's drift between repeats."""
    repeats = sorted({k for v, k in values if v == a} & {k for v, k in values if v == b})
    return [values[(a, k)] / values[(b, k)] for k in repeats if values[(b, k)]]


def bootstrap_interval(ratios: list[float], draws: int = BOOTSTRAP_DRAWS) -> tuple[float, float, float]:
    """(median, 2.5th and 97.5th percentile of the median over resampled repeats); seeded: a table is stable."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(draws))
    return statistics.median(ratios), medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


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

    def cell(self, higher_is_better: bool) -> str:
        """How every table shows it: ``0.981 [0.950, 1.010] equivalent``."""
        return f"{self.median:.3f} [{self.low:.3f}, {self.high:.3f}] {self.verdict(higher_is_better)}"


def interval(ratios: list[float]) -> Interval | None:
    """The bootstrap interval of paired ratios; None for fewer than two repeats (one repeat has no spread)."""
    if len(ratios) < 2:
        return None
    return Interval(*bootstrap_interval(ratios))


def median_or_none(values: Iterable[float]) -> float | None:
    found = list(values)
    return statistics.median(found) if found else None

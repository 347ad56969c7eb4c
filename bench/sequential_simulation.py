#!/usr/bin/env python3
"""Is `invoke bench --until-decided` honest? A simulation of its stopping rule against the naive one.

    .venv/bin/python bench/sequential_simulation.py [--runs 2000]

Paired ratios are drawn from a known distribution (true median known), looked at after the plan's looks (8, 12,
18, 27 and 40 repeats), and a run stops at the first look whose interval decides (inside 1 ± 0.05, or entirely
outside it).
Two rules are compared:

- naive: a 95 % interval at every look (stopping the first time it looks decided);
- until-decided (stats.Sequential): each look at 1 - 0.05 / 5 = 99 %, Bonferroni over the planned looks.

Both use the distribution-free interval of the median (stats.median_interval).

For each true distribution it prints how often the interval the run stopped with misses the true median, how
often the verdict is wrong (decided "outside" for a truth inside the band, or the reverse), and the mean number of
repeats. Deterministic (seeded); it takes seconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys

from hpcimages import stats

#: (true median, spread) of the paired ratios: inside the band, near its edge on either side, outside it
CASES = ((1.00, 0.04), (0.97, 0.03), (0.955, 0.03), (0.945, 0.03), (0.93, 0.04))


def decided(found: stats.Interval) -> bool:
    return found.verdict(higher_is_better=True) != "undecided"


def one_run(rng: random.Random, median: float, spread: float, plan: stats.Sequential) -> tuple[stats.Interval, int]:
    values = [rng.gauss(median, spread) for _ in range(plan.looks[-1])]
    found, used, _ = plan.look(values, decided)
    assert found is not None
    return found, used


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2000, help="simulated runs per case and rule (default 2000)")
    args = parser.parse_args(argv)
    sequential = stats.Sequential()
    # the same looks, each at 95 %: alpha * K makes 1 - alpha * K / K = 95 %
    naive = stats.Sequential(sequential.looks, stats.ALPHA * len(sequential.looks))
    print(f"{'true median':>11} {'spread':>6}  {'rule':<14} {'misses':>7} {'wrong verdict':>13} {'repeats':>7}")
    for median, spread in CASES:
        truth = "equivalent" if abs(median - 1) <= stats.EQUIVALENT else "slower"
        for name, plan in (("naive 95 %", naive), ("until-decided", sequential)):
            rng = random.Random(1)
            misses = wrong = 0
            used = []
            for _ in range(args.runs):
                found, n = one_run(rng, median, spread, plan)
                used.append(n)
                misses += not found.low <= median <= found.high
                verdict = found.verdict(higher_is_better=True)
                wrong += verdict not in ("undecided", truth)
            print(f"{median:>11.3f} {spread:>6.2f}  {name:<14} {misses / args.runs:>7.3f} {wrong / args.runs:>13.3f} "
                  f"{statistics.mean(used):>7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

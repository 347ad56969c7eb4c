#!/usr/bin/env python3
"""Does converting two images at once beat one after the other? `python bench/convert_jobs.py [--rounds N] IMAGE...`

Converts the given (built) images to .sif files in a scratch folder, forced, once with one conversion at a time and
once with two at once, alternating which goes first in each round, and prints each round's wall times and the
median ratio two-at-once / one-at-a-time (below 1: faster), with the containerised Apptainer (the tools image's,
the runtime `invoke convert` runs two at once). Run it on an idle machine: it measures the machine as much as the
code.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from hpcimages.engine import connect
from hpcimages.paths import repository_root
from hpcimages.sif import apptainer
from hpcimages.sif import convert as convert_mod


def timed(client, runtime, images: list[str], jobs: int) -> float:
    with tempfile.TemporaryDirectory(prefix="convert-jobs-") as out:
        start = time.monotonic()
        results = convert_mod.convert(client, runtime, images, Path(out), progress=lambda _: None, force=True,
                                      jobs=jobs)
        seconds = time.monotonic() - start
    failed = [r.image for r in results if r.status != "converted"]
    if failed:
        raise SystemExit(f"not converted: {', '.join(failed)}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="built images, e.g. hpcimages/mpi4py:py3.11-mpich4.3.2")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both variants (default 2)")
    args = parser.parse_args()
    client = connect()
    root = repository_root(Path(__file__).resolve().parent.parent / "matrix.toml")
    runtime = apptainer.choose_runtime("container", lambda: client, root)  # the one that converts two at once
    ratios = []
    for r in range(1, args.rounds + 1):
        order = (1, 2) if r % 2 else (2, 1)
        seconds = {jobs: timed(client, runtime, args.images, jobs) for jobs in order}
        ratios.append(seconds[2] / seconds[1])
        print(f"round {r}: one at a time {seconds[1]:.1f} s, two at once {seconds[2]:.1f} s, ratio {ratios[-1]:.3f}",
              flush=True)
    print(f"median ratio two at once / one at a time: {statistics.median(ratios):.3f} over {len(ratios)} round(s), "
          f"{len(args.images)} image(s), {runtime.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

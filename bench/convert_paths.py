#!/usr/bin/env python3
"""Where a conversion's time goes: `python bench/convert_paths.py [--rounds N] IMAGE...`

Converts each given (built) image to a .sif in a scratch folder, forced, by three paths of the containerised
Apptainer, interleaved (all three in each round, the order rotated from round to round):

* ``archive, disk``: Apptainer builds from the engine's saved archive and unpacks on the container's disk (the path
  before skopeo's layout and the memory file system);
* ``archive, memory``: the same archive, unpacked in a memory file system (apptainer.scratch_room);
* ``layout, memory``: what `invoke convert` does: skopeo lays the archive out as OCI with zstd layers, which
  Apptainer copies instead of compressing them itself, unpacked in memory.

Prints each conversion's seconds, then per image the median of each path's ratio to ``archive, disk`` within a
round (below 1: faster). Run it on an idle machine: it measures the machine as much as the code.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from hpcimages.engine import connect
from hpcimages.paths import repository_root
from hpcimages.sif import apptainer
from hpcimages.sif import convert as convert_mod

PATHS = ("archive, disk", "archive, memory", "layout, memory")
REAL_LAY_OUT, REAL_SCRATCH_ROOM = convert_mod.lay_out, convert_mod.scratch_room


def choose(path: str) -> None:
    """Point the conversion at ``path`` (its two switches: skopeo's layout, and the memory file system)."""
    convert_mod.lay_out = REAL_LAY_OUT if path.startswith("layout") else (lambda *_: False)
    convert_mod.scratch_room = REAL_SCRATCH_ROOM if path.endswith("memory") else (lambda *_: 0)


def timed(client, runtime, image: str, path: str) -> float:
    choose(path)
    with tempfile.TemporaryDirectory(prefix="convert-paths-") as out:
        result = convert_mod.convert_one(client, runtime, image, Path(out), force=True)
    if result.status != "converted":
        raise SystemExit(f"{image} by {path}: {result.status}: {result.reason}")
    if path.endswith("memory") and not result.scratch_bytes:
        raise SystemExit(f"{image}: no room in memory on this machine, so the memory paths cannot be measured")
    return result.seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", help="built images, e.g. hpcimages/mpi4py:py3.11-mpich4.3.2")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the three paths (default 2)")
    args = parser.parse_args()
    client = connect()
    root = repository_root(Path(__file__).resolve().parent.parent / "matrix.toml")
    runtime = apptainer.choose_runtime("container", lambda: client, root)
    for image in args.images:
        ratios: dict[str, list[float]] = {path: [] for path in PATHS[1:]}
        for r in range(args.rounds):
            order = PATHS[r % 3:] + PATHS[:r % 3]
            seconds = {path: timed(client, runtime, image, path) for path in order}
            for path in PATHS[1:]:
                ratios[path].append(seconds[path] / seconds[PATHS[0]])
            print(f"{image} round {r + 1}: " + ", ".join(f"{p} {seconds[p]:.1f} s" for p in order), flush=True)
        print(f"{image}: median ratio to '{PATHS[0]}' over {args.rounds} round(s): "
              + ", ".join(f"{p} {statistics.median(v):.3f}" for p, v in ratios.items()), flush=True)
    choose(PATHS[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

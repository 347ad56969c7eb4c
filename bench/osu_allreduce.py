#!/usr/bin/env python3
"""OSU-style MPI_Allreduce latency with mpi4py: `mpiexec -n N python3 osu_allreduce.py [-m min:max] ...`.

Methodology of the OSU Micro-Benchmarks' osu_allreduce: float32 sum over all ranks; every call is timed on
its own between barriers; the per-rank average is reduced to min / avg / max across ranks (microseconds).
Sizes up to 8192 B run 1000 timed iterations after 100 warm-ups, larger ones 100 after 10.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from mpi4py import MPI
from osu_bw import print_provenance, print_transport, size_range  # same folder

LARGE_MESSAGE = 8192


parse_sizes = size_range(4, 1024 * 1024)


def sizes(lo: int, hi: int) -> list[int]:
    out, size = [], 4
    while size <= hi:
        if size >= lo:
            out.append(size)
        size *= 2
    return out


def timed_allreduce(comm, send, recv, iters: int, skip: int) -> float:
    total = 0.0
    for i in range(iters + skip):
        comm.Barrier()
        start = MPI.Wtime()
        comm.Allreduce(send, recv, op=MPI.SUM)
        if i >= skip:
            total += MPI.Wtime() - start
    return total * 1e6 / iters


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--message-size", type=parse_sizes, default=(4, 1024 * 1024), metavar="MIN:MAX")
    parser.add_argument("-i", "--iterations", type=int, default=None)
    parser.add_argument("-x", "--warmup", type=int, default=None)
    parser.add_argument("-c", "--validate", action="store_true", help="check the sums")
    args = parser.parse_args(argv)

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    lo, hi = args.message_size
    print_provenance(comm, "OSU MPI-Python Allreduce Latency Test", ranks=size, datatype="float32")
    if rank == 0:
        print(f"# {'Size':<10}{'Avg Latency(us)':>18}{'Min Latency(us)':>18}{'Max Latency(us)':>18}{'Iterations':>12}",
              flush=True)
    failures = 0
    for nbytes in sizes(lo, hi):
        count = nbytes // 4
        send = np.full(count, rank + 1, dtype=np.float32)
        recv = np.zeros(count, dtype=np.float32)
        small = nbytes <= LARGE_MESSAGE
        iters = args.iterations if args.iterations is not None else (1000 if small else 100)
        skip = args.warmup if args.warmup is not None else (100 if small else 10)
        usec = timed_allreduce(comm, send, recv, iters, skip)
        lo_us = comm.reduce(usec, op=MPI.MIN, root=0)
        hi_us = comm.reduce(usec, op=MPI.MAX, root=0)
        avg_us = comm.reduce(usec, op=MPI.SUM, root=0)
        if args.validate:
            ok = comm.allreduce(bool((recv == size * (size + 1) / 2).all()), op=MPI.LAND)
            failures += 0 if ok else 1
            if not ok and rank == 0:
                print(f"# validation FAILED at {nbytes} bytes", file=sys.stderr, flush=True)
        if rank == 0:
            print(f"{nbytes:<10d}{avg_us / size:18.2f}{lo_us:18.2f}{hi_us:18.2f}{iters:12d}", flush=True)
    print_transport(comm)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Parallel HDF5 bandwidth with h5py: `mpiexec -n N python3 h5py_write.py [-m MIN:MAX] [-i ITERS] [--dir D]`.

For every size (the bytes each rank writes; powers of two from MIN to MAX), the N ranks write one shared 1-D
dataset of ``N x size`` bytes through h5py's ``driver='mpio'``, each rank its own contiguous block: first with
independent I/O, then with collective I/O (``dset.collective``); then they read their blocks back both ways and
check every byte. A write is timed with the ``flush`` that ends it (``H5Fflush``: MPI_File_sync), a read alone.

Each figure is the aggregate bandwidth of all ranks, MB/s (10^6 bytes per second): ``N x size x ITERS`` over the
sum of the slowest rank's time per iteration (``-i`` 5 timed after ``-x`` 1 warm-up). Reads of a file just
written come from the page cache of the node, as they would on a cluster node: they show HDF5's and MPI-IO's
overhead, not the file system's speed. One ``%-10d`` + 4 x ``%26.2f`` row per size, as the OSU scripts print.
"""

from __future__ import annotations

import argparse
import os
import sys

import h5py
import numpy as np
from h5py_mpio import NO_MPI, say_error, shared_path  # same folder
from mpi4py import MPI
from osu_bw import library_file, mpi_abi, placement, size_range, sizes

MODES = (("write", False), ("write", True), ("read", False), ("read", True))
HEADERS = ("Write independent (MB/s)", "Write collective (MB/s)", "Read independent (MB/s)", "Read collective (MB/s)")


def pattern(rank: int, nbytes: int) -> np.ndarray:
    """A rank's block: bytes that differ between ranks and sizes, so a misplaced block fails the check."""
    return ((np.arange(nbytes, dtype=np.int64) + 7 * rank + nbytes) % 251).astype(np.uint8)


def timed(comm: MPI.Intracomm, f: h5py.File, dset: h5py.Dataset, op: str, collective: bool, block: slice,
          buf: np.ndarray) -> float:
    """One write (with its flush) or read of this rank's block; the slowest rank's seconds."""
    comm.Barrier()
    start = MPI.Wtime()
    if collective:
        with dset.collective:
            if op == "write":
                dset[block] = buf
            else:
                dset.read_direct(buf, source_sel=block)
    elif op == "write":
        dset[block] = buf
    else:
        dset.read_direct(buf, source_sel=block)
    if op == "write":
        f.flush()
    return comm.allreduce(MPI.Wtime() - start, op=MPI.MAX)


def measure(comm: MPI.Intracomm, path: str, nbytes: int, iters: int, warmup: int) -> tuple[list[float], bool]:
    """MB/s of the four modes at one size, and whether every rank read back exactly what it wrote."""
    rank, size = comm.Get_rank(), comm.Get_size()
    block = slice(rank * nbytes, (rank + 1) * nbytes)
    mine = pattern(rank, nbytes)
    back = np.empty(nbytes, dtype=np.uint8)
    rates, ok = [], True
    with h5py.File(path, "w", driver="mpio", comm=comm) as f:
        dsets = {collective: f.create_dataset("collective" if collective else "independent", (size * nbytes,),
                                              dtype="u1") for collective in (False, True)}
        for op, collective in MODES:
            buf = mine if op == "write" else back
            seconds = 0.0
            for i in range(warmup + iters):
                took = timed(comm, f, dsets[collective], op, collective, block, buf)
                seconds += took if i >= warmup else 0.0
                if op == "read":
                    ok = ok and bool(np.array_equal(back, mine))
                    back[:] = 0
            rates.append(size * nbytes * iters / seconds / 1e6 if seconds > 0 else float("inf"))
    return rates, comm.allreduce(int(ok), op=MPI.SUM) == size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-m", "--message-size", type=size_range(1, 16 * 1024 * 1024), default=(65536, 16 * 1024 * 1024),
                        metavar="MIN:MAX", help="bytes each rank writes (default 65536:16777216)")
    parser.add_argument("-i", "--iterations", type=int, default=5, help="timed iterations per mode (default 5)")
    parser.add_argument("-x", "--warmup", type=int, default=1, help="warm-up iterations per mode (default 1)")
    parser.add_argument("--dir", default=None, help="a folder every rank sees (default: the temporary folder)")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    if args.iterations < 1 or args.warmup < 0:
        say_error(comm, "h5py_write.py: -i must be at least 1 and -x at least 0")
        return 2
    if not h5py.get_config().mpi:
        say_error(comm, f"h5py_write.py: {NO_MPI}")
        return 1
    path = shared_path(comm, args.dir, "h5py_write")
    where = placement(comm)  # collective: every rank says where it runs
    if rank == 0:
        print("# h5py parallel I/O bandwidth (MB/s, all ranks together)")
        print(f"# {MPI.Get_library_version().splitlines()[0].strip()}")
        print(f"# Library file: {library_file()}")
        print(f"# MPI ABI: {mpi_abi()}")
        print(f"# Placement: {where}")
        print(f"# HDF5 {h5py.version.hdf5_version}, h5py {h5py.__version__}, driver mpio, {comm.Get_size()} ranks")
        print(f"# {'Size':<10}" + "".join(f"{h:>26}" for h in HEADERS), flush=True)
    failures = 0
    lo, hi = args.message_size
    try:
        for nbytes in sizes(lo, hi):
            rates, ok = measure(comm, path, nbytes, args.iterations, args.warmup)
            failures += not ok
            if rank == 0:
                if not ok:
                    print(f"# validation FAILED at {nbytes} bytes", file=sys.stderr, flush=True)
                print(f"{nbytes:<10d}" + "".join(f"{r:26.2f}" for r in rates), flush=True)
    finally:
        comm.Barrier()
        if rank == 0 and path and os.path.exists(path):
            os.remove(path)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

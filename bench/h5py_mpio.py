#!/usr/bin/env python3
"""Parallel HDF5 proof: `mpiexec -n N python3 h5py_mpio.py [--rows R] [--cols C] [--dir D]`.

N ranks open one file with h5py's ``driver='mpio'`` and write a ``R x C`` float64 dataset collectively, each
rank its own block of rows (a hyperslab; a rank with no rows, when N > R, takes part with an empty selection, as
a collective write requires); the file is closed, reopened by every rank and every element is checked. Rank 0
prints which MPI library and HDF5 ran. Exit 0 only when every rank verified every element.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import h5py
import numpy as np
from mpi4py import MPI
from osu_bw import library_file  # same folder


def expected(first: int, count: int, cols: int) -> np.ndarray:
    """The values of rows ``first .. first+count-1``: each element names its own position."""
    rows = np.arange(first, first + count, dtype=np.float64)[:, None]
    return rows * cols + np.arange(cols, dtype=np.float64)[None, :] + 0.5


def my_rows(rows: int, size: int, rank: int) -> tuple[int, int]:
    """(first row, row count) of a rank: contiguous blocks as even as possible; ranks past the rows get none."""
    base, extra = divmod(rows, size)
    count = base + (1 if rank < extra else 0)
    return rank * base + min(rank, extra), count


def write_collectively(dset: h5py.Dataset, first: int, count: int, cols: int) -> None:
    """One collective H5Dwrite per rank (h5py's high-level API skips empty selections, which would hang the
    collective call on a rank without rows)."""
    dxpl = h5py.h5p.create(h5py.h5p.DATASET_XFER)
    dxpl.set_dxpl_mpio(h5py.h5fd.MPIO_COLLECTIVE)
    fspace = dset.id.get_space()
    mspace = h5py.h5s.create_simple((max(count, 1), cols))
    if count:
        fspace.select_hyperslab((first, 0), (count, cols))
        data = expected(first, count, cols)
    else:
        fspace.select_none()
        mspace.select_none()
        data = np.zeros((1, cols))
    dset.id.write(mspace, fspace, data, dxpl=dxpl)


NO_MPI = "this h5py was built without MPI (h5py.get_config().mpi is False)"


def say_error(comm: MPI.Intracomm, text: str) -> None:
    """One line on stderr, from rank 0 only."""
    if comm.Get_rank() == 0:
        print(text, file=sys.stderr)


def shared_path(comm: MPI.Intracomm, folder: str | None, stem: str) -> str:
    """One file name for all ranks (rank 0's choice), in a folder every rank sees."""
    path = os.path.join(folder or tempfile.gettempdir(), f"{stem}_{os.getpid()}.h5") if comm.Get_rank() == 0 else None
    return comm.bcast(path, root=0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1024, help="dataset rows (default 1024)")
    parser.add_argument("--cols", type=int, default=256, help="dataset columns (default 256)")
    parser.add_argument("--dir", default=None, help="folder every rank sees (default: the temporary folder)")
    args = parser.parse_args(argv)
    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if args.rows < 1 or args.cols < 1:
        say_error(comm, "h5py_mpio.py: --rows and --cols must be at least 1")
        return 2
    if not h5py.get_config().mpi:
        say_error(comm, f"h5py_mpio.py: {NO_MPI}")
        return 1
    path = shared_path(comm, args.dir, "h5py_mpio")
    first, count = my_rows(args.rows, size, rank)
    try:
        with h5py.File(path, "w", driver="mpio", comm=comm) as f:
            dset = f.create_dataset("data", (args.rows, args.cols), dtype="f8")
            write_collectively(dset, first, count, args.cols)
        with h5py.File(path, "r", driver="mpio", comm=comm) as f:
            ok = bool(np.array_equal(f["data"][...], expected(0, args.rows, args.cols)))
    finally:
        comm.Barrier()
        if rank == 0 and os.path.exists(path):
            os.remove(path)
    verified = comm.allreduce(int(ok), op=MPI.SUM)
    counts = comm.gather(count, root=0)
    if rank == 0:
        print(f"# {MPI.Get_library_version().splitlines()[0].strip()}")
        print(f"# Library file: {library_file()}")
        print(f"# HDF5 {h5py.version.hdf5_version}, h5py {h5py.__version__}, driver mpio")
        verdict = "verified every element" if verified == size else f"FAILED: {size - verified} rank(s) read wrong data"
        print(f"h5py mpio: {size} rank(s) wrote {args.rows} x {args.cols} float64 collectively (rows per rank: "
              f"{', '.join(map(str, counts))}), reopened and {verdict}", flush=True)
    return 0 if verified == size else 1


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""MPI hello world: each rank prints one line. Run as `mpiexec -n 2 python3 hello_mpi4py.py`."""

from mpi4py import MPI


def main() -> None:
    comm = MPI.COMM_WORLD
    print(f"Hello World! I am process {comm.Get_rank()} of {comm.Get_size()} on {MPI.Get_processor_name()}.",
          flush=True)


if __name__ == "__main__":
    main()

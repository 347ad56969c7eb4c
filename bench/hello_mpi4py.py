#!/usr/bin/env python3
"""MPI hello world: each rank prints one line. Run as `mpiexec -n 2 python3 hello_mpi4py.py`.

With --library, rank 0 also prints `# library: <first line of MPI.Get_library_version()>`: which MPI the
ranks really use (the image's MPICH, or a host MPI injected by the bind model).
"""

import sys

from mpi4py import MPI


def main() -> None:
    comm = MPI.COMM_WORLD
    print(f"Hello World! I am process {comm.Get_rank()} of {comm.Get_size()} on {MPI.Get_processor_name()}.",
          flush=True)
    if "--library" in sys.argv[1:] and comm.Get_rank() == 0:
        print(f"# library: {MPI.Get_library_version().splitlines()[0].strip()}", flush=True)
        from osu_bw import library_file  # same folder

        print(f"# library file: {library_file()}", flush=True)


if __name__ == "__main__":
    main()

/* C code compiled in the image by its own mpicc, run with a host MPI injected (invoke abi).
 *
 * It stands for everything a site's users compile against the image's MPI (their own C/Fortran codes, an
 * MPI-built HDF5): 2 ranks exchange one message, rank 0 prints the library's version line, and then every
 * rank calls MPI_Isendrecv, an MPI-4.0 function. Bound lazily, a library without it stops the program at that
 * call with "undefined symbol", which is what such codes meet on an older host MPI. Open MPI 5 has it (its mpi.h
 * still says MPI 3.1); Open MPI 4's header has not, and code compiled there cannot call it: the probe says so. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv) {
    int rank, size, len, token = 0, got = -1;
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Get_library_version(version, &len);
    if (rank == 0) {
        version[strcspn(version, "\n")] = '\0';
        printf("# c library: %s\n", version);
    }
    MPI_Allreduce(&rank, &token, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    printf("c rank %d of %d: allreduce %d\n", rank, size, token);
    fflush(stdout);
#if MPI_VERSION >= 4 || (defined(OMPI_MAJOR_VERSION) && OMPI_MAJOR_VERSION >= 5)
    MPI_Request request;
    MPI_Isendrecv(&rank, 1, MPI_INT, 0, 0, &got, 1, MPI_INT, 0, 0, MPI_COMM_SELF, &request);
    MPI_Wait(&request, MPI_STATUS_IGNORE);
    printf("c rank %d: MPI_Isendrecv %s\n", rank, got == rank ? "ok" : "WRONG");
#else
    (void)got;
    printf("c rank %d: MPI_Isendrecv not in this mpi.h\n", rank);
#endif
    MPI_Finalize();
    return 0;
}

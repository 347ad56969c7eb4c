/* C reference for osu_latency.py: blocking ping-pong, one-way latency = elapsed * 1e6 / (2 * iterations).
 *
 *   mpicc -O2 -o osu_latency osu_latency.c && mpiexec -n 2 ./osu_latency [-m MIN:MAX] [-i ITERS] [-x WARMUP]
 *
 * Sizes from 0 B; up to 8192 B: 10000 timed iterations after 100 warm-ups; larger: 1000 after 10. */
#define _GNU_SOURCE
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "osu_common.h"

#define LARGE_MESSAGE 8192

static void parse_range(const char *text, long *lo, long *hi) {
    char *colon = strchr(text, ':');
    *lo = colon == text ? 0 : atol(text);
    if (colon && colon[1]) *hi = atol(colon + 1);
}

static double pingpong(char *sbuf, char *rbuf, long n, int iters, int skip, int rank) {
    double start = 0.0;
    for (int i = 0; i < iters + skip; i++) {
        if (i == skip) {
            MPI_Barrier(MPI_COMM_WORLD);
            start = MPI_Wtime();
        }
        if (rank == 0) {
            MPI_Send(sbuf, (int)n, MPI_CHAR, 1, 1, MPI_COMM_WORLD);
            MPI_Recv(rbuf, (int)n, MPI_CHAR, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else {
            MPI_Recv(rbuf, (int)n, MPI_CHAR, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(sbuf, (int)n, MPI_CHAR, 0, 1, MPI_COMM_WORLD);
        }
    }
    return (MPI_Wtime() - start) * 1e6 / (2.0 * iters);
}

int main(int argc, char **argv) {
    long lo = 0, hi = 4L * 1024 * 1024;
    int iters_opt = -1, skip_opt = -1, plain = 0, rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-m")) parse_range(argv[i + 1], &lo, &hi);
        else if (!strcmp(argv[i], "-i")) iters_opt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-x")) skip_opt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-b")) plain = !strcmp(argv[i + 1], "malloc");
    }
    if (size != 2 || lo < 0 || hi < lo) {
        if (rank == 0) fprintf(stderr, "usage: mpiexec -n 2 osu_latency [-m MIN:MAX] [-i N] [-x N] [-b malloc]\n");
        MPI_Finalize();
        return 2;
    }
    char *sbuf = numpy_like_buffer(hi, plain), *rbuf = numpy_like_buffer(hi, plain);
    print_placement(rank, size);
    if (rank == 0) {
        char version[MPI_MAX_LIBRARY_VERSION_STRING];
        int len;
        MPI_Get_library_version(version, &len);
        char *newline = strchr(version, '\n');
        if (newline) *newline = '\0';
        printf("# OSU MPI-C Latency Test (hpcimages reference)\n# %s\n# buffer: %s\n", version,
               buffer_label(plain));
        printf("# %-10s%20s\n", "Size", "Latency (us)");
        fflush(stdout);
    }
    for (long n = 0; n <= hi; n = n ? n * 2 : 1) {
        if (n < lo) continue;
        int iters = iters_opt >= 0 ? iters_opt : (n <= LARGE_MESSAGE ? 10000 : 1000);
        int skip = skip_opt >= 0 ? skip_opt : (n <= LARGE_MESSAGE ? 100 : 10);
        double usec = pingpong(sbuf, rbuf, n, iters, skip, rank);
        if (rank == 0) {
            printf("%-10ld%20.2f\n", n, usec);
            fflush(stdout);
        }
    }
    free(sbuf);
    free(rbuf);
    MPI_Finalize();
    return 0;
}

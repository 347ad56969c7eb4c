/* C reference for osu_bw.py: the same OSU methodology, so the Python overhead is measured, not guessed.
 *
 *   mpicc -O2 -o osu_bw osu_bw.c && mpiexec -n 2 ./osu_bw [-m MIN:MAX] [-i ITERS] [-x WARMUP] [-W WINDOW] [-b malloc]
 *
 * Rank 0 posts a window of non-blocking sends, waits for them, and receives a 4-byte ack from rank 1, which
 * mirrors with receives. Messages up to 8192 B: 100 timed iterations after 10 warm-ups; larger: 20 after 2.
 * MB/s = 10^6 bytes per second, one "%-10d%20.2f" row per size. */
#define _GNU_SOURCE
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "osu_common.h"

#define LARGE_MESSAGE 8192
#define ACK_BYTES 4

static void parse_range(const char *text, long *lo, long *hi) {
    char *colon = strchr(text, ':');
    *lo = colon == text ? 1 : atol(text);
    if (colon && colon[1]) *hi = atol(colon + 1);
}

int main(int argc, char **argv) {
    long lo = 1, hi = 4L * 1024 * 1024;
    int iters_opt = -1, skip_opt = -1, window = 64, plain = 0, rank, size;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "-m")) parse_range(argv[i + 1], &lo, &hi);
        else if (!strcmp(argv[i], "-i")) iters_opt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-x")) skip_opt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-b")) plain = !strcmp(argv[i + 1], "malloc");
        else if (!strcmp(argv[i], "-W")) window = atoi(argv[i + 1]);
    }
    if (size != 2 || lo < 1 || hi < lo || window < 1) {
        if (rank == 0) fprintf(stderr, "usage: mpiexec -n 2 osu_bw [-m MIN:MAX] [-i N] [-x N] [-W N] [-b malloc]\n");
        MPI_Finalize();
        return 2;
    }
    char *buf = numpy_like_buffer(hi, plain), ack[ACK_BYTES];
    MPI_Request *req = malloc(sizeof(MPI_Request) * window);
    print_placement(rank, size);
    if (rank == 0) {
        char version[MPI_MAX_LIBRARY_VERSION_STRING];
        int len;
        MPI_Get_library_version(version, &len);
        char *newline = strchr(version, '\n');
        if (newline) *newline = '\0';
        printf("# OSU MPI-C Bandwidth Test (hpcimages reference)\n# %s\n# buffer: %s, window: %d\n", version,
               buffer_label(plain), window);
        printf("# %-10s%20s\n", "Size", "Bandwidth (MB/s)");
        fflush(stdout);
    }
    for (long n = 1; n <= hi; n *= 2) {
        if (n < lo) continue;
        int iters = iters_opt >= 0 ? iters_opt : (n <= LARGE_MESSAGE ? 100 : 20);
        int skip = skip_opt >= 0 ? skip_opt : (n <= LARGE_MESSAGE ? 10 : 2);
        double start = 0.0;
        for (int i = 0; i < iters + skip; i++) {
            if (i == skip) {
                MPI_Barrier(MPI_COMM_WORLD);
                start = MPI_Wtime();
            }
            if (rank == 0) {
                for (int w = 0; w < window; w++) MPI_Isend(buf, (int)n, MPI_CHAR, 1, 100, MPI_COMM_WORLD, &req[w]);
                MPI_Waitall(window, req, MPI_STATUSES_IGNORE);
                MPI_Recv(ack, ACK_BYTES, MPI_CHAR, 1, 101, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            } else {
                for (int w = 0; w < window; w++) MPI_Irecv(buf, (int)n, MPI_CHAR, 0, 100, MPI_COMM_WORLD, &req[w]);
                MPI_Waitall(window, req, MPI_STATUSES_IGNORE);
                MPI_Send(ack, ACK_BYTES, MPI_CHAR, 0, 101, MPI_COMM_WORLD);
            }
        }
        double elapsed = MPI_Wtime() - start;
        if (rank == 0) {
            printf("%-10ld%20.2f\n", n, n / 1e6 * iters * window / elapsed);
            fflush(stdout);
        }
    }
    free(req);
    free(buf);
    MPI_Finalize();
    return 0;
}

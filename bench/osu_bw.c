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
#include <sched.h>
#include <sys/mman.h>

#define LARGE_MESSAGE 8192
#define ACK_BYTES 4

/* The message buffers, allocated the way numpy allocates the Python script's (np.zeros: calloc, and from 4 MiB up
 * madvise(MADV_HUGEPAGE) on the page-aligned part, so the kernel backs them with transparent huge pages): a plain
 * malloc buffer of 4 KiB pages alone makes the C reference ~1.4x slower at 1 MiB, a difference of allocation, not of
 * language. `-b malloc` keeps the plain malloc (memset, no advice) to show that difference. */
#define NUMPY_HUGEPAGE_BYTES (1L << 22)
static char *numpy_like_buffer(long n, int plain) {
    if (n < 1) n = 1;
    if (plain) {
        char *p = malloc(n);
        if (p) memset(p, 'a', n);
        return p;
    }
    char *p = calloc(n, 1);
    if (p && n >= NUMPY_HUGEPAGE_BYTES) {
        long offset = 4096 - (long)((unsigned long)p % 4096);
        madvise(p + offset, n - offset, MADV_HUGEPAGE);  /* advice: a kernel without THP ignores it */
    }
    return p;
}

static const char *buffer_label(int plain) {
    return plain ? "malloc" : "numpy-like (calloc, MADV_HUGEPAGE from 4 MiB)";
}

/* "# Placement: rank 0 NODE cpus 0; rank 1 NODE cpus 1": where each rank ran and the CPUs it may use, printed by
 * rank 0 like the Python scripts' line (the results record it: pinning is part of what was measured). */
static void print_placement(int rank, int size) {
    char mine[256], node[MPI_MAX_PROCESSOR_NAME], cpus[200] = "";
    int len, used = 0, first = -1;
    cpu_set_t set;
    MPI_Get_processor_name(node, &len);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        for (int cpu = 0; cpu <= CPU_SETSIZE; cpu++) {
            int in = cpu < CPU_SETSIZE && CPU_ISSET(cpu, &set);
            if (in && first < 0) first = cpu;
            if (!in && first >= 0 && used < (int)sizeof cpus - 24) {
                used += snprintf(cpus + used, sizeof cpus - used, first == cpu - 1 ? "%s%d" : "%s%d-%d",
                                 used ? "," : "", first, cpu - 1);
                first = -1;
            }
        }
    }
    snprintf(mine, sizeof mine, "rank %d %s cpus %s", rank, node, cpus);
    char *all = rank == 0 ? malloc(sizeof mine * size) : NULL;
    MPI_Gather(mine, sizeof mine, MPI_CHAR, all, sizeof mine, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("# Placement: ");
        for (int r = 0; r < size; r++) printf("%s%s", r ? "; " : "", all + r * sizeof mine);
        printf("\n");
        free(all);
    }
}

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

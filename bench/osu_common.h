/* What both C references share with the Python scripts: buffers allocated like numpy's, and the placement
 * line. Included by osu_bw.c and osu_latency.c (after <mpi.h>, with _GNU_SOURCE defined). */
#ifndef HPCIMAGES_OSU_COMMON_H
#define HPCIMAGES_OSU_COMMON_H

#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

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

#endif

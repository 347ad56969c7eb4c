/* The copy ceiling beside osu_bw: how fast can one core copy a message that another core's process holds?
 *
 *   cc -O2 -o copy_ceiling copy_ceiling.c && ./copy_ceiling [-k memcpy|cma] [-m MIN:MAX] [-i N] [-x N] [-W N] [-c A,B]
 *
 * A shared-memory MPI moves a large message with at least one copy. This program does one copy and nothing else,
 * with osu_bw's shape: a "sender" process pinned to CPU A holds a buffer (allocated like numpy's, as the C
 * references' are, and written), a "receiver" pinned to CPU B copies WINDOW messages of n bytes out of it into its
 * own buffer per iteration, 100 timed iterations after 10 warm-ups up to 8192 B, 20 after 2 above. MB/s = 10^6
 * bytes per second, printed like osu_bw's rows.
 *
 *   -k memcpy  the sender's buffer is shared memory and the receiver memcpy()s from it: the ceiling, since no
 *              transport on these cores copies a message faster than one plain copy (default)
 *   -k cma     the receiver reads the sender's buffer with process_vm_readv, as an MPI's cross-memory attach does
 *              (a system call that pins the sender's pages for each message); exit 3 where a sandbox refuses it */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LARGE_MESSAGE 8192
#define NUMPY_HUGEPAGE_BYTES (1L << 22)

/* as bench/osu_common.h allocates the C references' buffers (numpy's way), then written: an untouched page would be
 * read as the shared zero page, a copy no MPI ever gets */
static char *numpy_like_buffer(long n) {
    char *p = calloc(n < 1 ? 1 : n, 1);
    if (p && n >= NUMPY_HUGEPAGE_BYTES) {
        long offset = 4096 - (long)((unsigned long)p % 4096);
        madvise(p + offset, n - offset, MADV_HUGEPAGE);
    }
    if (p) memset(p, 'a', n < 1 ? 1 : n);
    return p;
}

static int pin(int cpu) {
    if (cpu < 0) return 0;  /* not asked to pin */
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set);
}

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int usage(const char *why) {
    fprintf(stderr, "copy_ceiling: %s\nusage: copy_ceiling [-k memcpy|cma] [-m MIN:MAX] [-i N] [-x N] [-W N] "
                    "[-c CPU_A,CPU_B]\n", why);
    return 2;
}

/* after the fork: the sender gone however the receiver ends (the sender also dies with it: PR_SET_PDEATHSIG) */
static pid_t sender = -1;
static int finish(int status, const char *why) {
    if (why) fprintf(stderr, "copy_ceiling: %s\n", why);
    if (sender > 0) {
        kill(sender, SIGKILL);
        waitpid(sender, NULL, 0);
    }
    return status;
}

int main(int argc, char **argv) {
    long lo = 1, hi = 4L * 1024 * 1024;
    int iters_opt = -1, skip_opt = -1, window = 64, cpu_a = -1, cpu_b = -1, use_memcpy = 1;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) return usage("an option without its value");
        if (!strcmp(argv[i], "-m")) {
            char *colon = strchr(argv[i + 1], ':');
            lo = colon == argv[i + 1] ? 1 : atol(argv[i + 1]);
            if (colon && colon[1]) hi = atol(colon + 1);
        } else if (!strcmp(argv[i], "-i")) iters_opt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-x")) skip_opt = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-W")) window = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "-c")) {
            if (sscanf(argv[i + 1], "%d,%d", &cpu_a, &cpu_b) != 2 || cpu_a < 0 || cpu_b < 0)
                return usage("-c takes two CPU numbers, e.g. -c 0,1");
        } else if (!strcmp(argv[i], "-k")) {
            if (strcmp(argv[i + 1], "memcpy") && strcmp(argv[i + 1], "cma")) return usage("-k is memcpy or cma");
            use_memcpy = !strcmp(argv[i + 1], "memcpy");
        } else return usage("unknown option");
    }
    if (lo < 1 || hi < lo || window < 1) return usage("needs 1 <= MIN <= MAX and a window of at least 1");
    /* memcpy mode: the sender's buffer is shared memory the receiver maps too, no system call per message */
    char *source = use_memcpy ? mmap(NULL, hi, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0)
                              : numpy_like_buffer(hi);
    char *dest = numpy_like_buffer(hi);
    int ready[2];
    if (source == MAP_FAILED || !source || !dest) return finish(1, "cannot allocate the buffers");
    if (pipe(ready) != 0) return finish(1, strerror(errno));
    pid_t parent = getpid();
    sender = fork();
    if (sender == 0) {  /* the sender: its buffer stays put on its core until the receiver is done */
        char byte = 1;
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(1);  /* the receiver ended before the line above */
        if (pin(cpu_a) != 0) _exit(1);
        memset(source, 'b', hi);
        if (write(ready[1], &byte, 1) != 1) _exit(1);
        for (;;) pause();
    }
    if (sender < 0) return finish(1, strerror(errno));
    char byte, host[256] = "localhost";
    if (read(ready[0], &byte, 1) != 1) return finish(1, "the sender could not start (pinning to its CPU?)");
    if (pin(cpu_b) != 0) return finish(1, "cannot pin the receiver to its CPU");
    gethostname(host, sizeof host - 1);
    /* both "ranks" on this host, each on its CPU: the layout the benchmark's placement line records */
    printf("# Placement: rank 0 %s cpus %d; rank 1 %s cpus %d\n", host, cpu_a, host, cpu_b);
    printf("# Copy ceiling: one copy by %s, no MPI\n", use_memcpy ? "memcpy from shared memory"
                                                          : "process_vm_readv (cross-memory attach)");
    printf("# buffer: %s, window: %d\n", use_memcpy ? "sender: shared mmap, receiver: numpy-like"
                                                    : "numpy-like (calloc, MADV_HUGEPAGE from 4 MiB)", window);
    printf("# %-10s%20s\n", "Size", "Bandwidth (MB/s)");
    fflush(stdout);
    int status = 0;
    for (long n = 1; n <= hi && status == 0; n *= 2) {
        if (n < lo) continue;
        int iters = iters_opt >= 0 ? iters_opt : (n <= LARGE_MESSAGE ? 100 : 20);
        int skip = skip_opt >= 0 ? skip_opt : (n <= LARGE_MESSAGE ? 10 : 2);
        struct iovec local = {dest, (size_t)n}, remote = {source, (size_t)n};
        double start = 0.0;
        for (int i = 0; i < iters + skip && status == 0; i++) {
            if (i == skip) start = now();
            for (int w = 0; w < window; w++) {
                if (use_memcpy) {
                    memcpy(dest, source, n);
                    __asm__ volatile("" ::: "memory");  /* every copy happens */
                    continue;
                }
                errno = 0;
                ssize_t got = process_vm_readv(sender, &local, 1, &remote, 1, 0);
                if (got != n) {
                    fprintf(stderr, "process_vm_readv: %s\n", got < 0 ? strerror(errno) : "a short read");
                    status = got < 0 && (errno == EPERM || errno == ENOSYS) ? 3 : 1;
                    break;
                }
            }
        }
        if (status == 0) printf("%-10ld%20.2f\n", n, n / 1e6 * iters * window / (now() - start));
        fflush(stdout);
    }
    return finish(status, NULL);
}

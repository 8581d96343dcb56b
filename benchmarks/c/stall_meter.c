/* relive benchmark target: a stall meter.
 *
 * A worker thread calls compute() in a tight loop and measures the longest gap
 * between two calls with clock_gettime(CLOCK_MONOTONIC).  When compute() starts
 * returning a different value (the new code runs), the worker prints
 * "NEW <value> <CLOCK_MONOTONIC ns>" at once.  A second thread sleeps in
 * nanosleep and the main thread blocks in read(): every reload has to stop
 * three threads in three different states.
 *
 * Commands on stdin, one per line:
 *   reset   start a new measuring window         -> "RESET"
 *   report  the window's longest gap and calls   -> "REPORT max_gap_ns=.. ..."
 *   park    call compute() only once a millisecond until the next reset -> "PARKED"
 *           (under SCHED_FIFO, a thread that spins for 950 ms of a second is
 *           throttled for the other 50: parking between windows avoids that)
 *   quit    exit
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

extern int compute(void);

/* The floor patcher's jump target: "the new code" when relive is not used. */
__attribute__((noinline, used)) int bench_floor_target(void) { return 2; }

static int reset_request;        /* main -> worker: start a new window */
static int parked;               /* main -> worker: idle until the next window */
static int64_t max_gap_ns;       /* worker -> main: longest gap in the window */
static int64_t max_gap_end_ns;   /* when that gap ended */
static int64_t gaps_over_100us;  /* how many gaps were longer than 100 us */
static uint64_t calls;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void *worker(void *arg) {
    (void)arg;
    int last = compute();
    int64_t prev = now_ns();
    for (;;) {
        if (__atomic_load_n(&parked, __ATOMIC_ACQUIRE)) {
            struct timespec ts = {0, 1000 * 1000};
            nanosleep(&ts, NULL);
            prev = now_ns() + 1000 * 1000 * 1000; /* no gap counts until the next reset */
        }
        int value = compute();
        int64_t now = now_ns();
        int64_t gap = now - prev;
        prev = now;
        uint64_t n = __atomic_load_n(&calls, __ATOMIC_RELAXED) + 1;
        __atomic_store_n(&calls, n, __ATOMIC_RELAXED);
        if (gap > 100000)
            __atomic_store_n(&gaps_over_100us, gaps_over_100us + 1, __ATOMIC_RELAXED);
        if (gap > max_gap_ns) {
            __atomic_store_n(&max_gap_end_ns, now, __ATOMIC_RELAXED);
            __atomic_store_n(&max_gap_ns, gap, __ATOMIC_RELEASE);
        }
        if (value != last) {
            char line[64];
            int len = snprintf(line, sizeof line, "NEW %d %lld\n", value, (long long)now);
            if (write(1, line, (size_t)len) < 0)
                return NULL;
            last = value;
            prev = now_ns(); /* the write is ours, not a stall */
        }
        if (__atomic_load_n(&reset_request, __ATOMIC_ACQUIRE)) {
            max_gap_ns = 0;
            max_gap_end_ns = 0;
            gaps_over_100us = 0;
            __atomic_store_n(&calls, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&reset_request, 0, __ATOMIC_RELEASE);
            prev = now_ns();
        }
    }
    return NULL;
}

static void *sleeper(void *arg) {
    (void)arg;
    for (;;) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(void) {
    /* Let any process of this user trace us (relevant under Yama ptrace_scope=1). */
    prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t1, t2;
    pthread_create(&t1, NULL, worker, NULL);
    pthread_create(&t2, NULL, sleeper, NULL);
    printf("READY %d compute=%p floor=%p\n", (int)getpid(), (void *)compute,
           (void *)bench_floor_target);
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "reset", 5) == 0) {
            __atomic_store_n(&parked, 0, __ATOMIC_RELEASE);
            __atomic_store_n(&reset_request, 1, __ATOMIC_RELEASE);
            while (__atomic_load_n(&reset_request, __ATOMIC_ACQUIRE)) {
                struct timespec ts = {0, 100 * 1000};
                nanosleep(&ts, NULL);
            }
            printf("RESET\n");
        } else if (strncmp(line, "report", 6) == 0) {
            int64_t gap = __atomic_load_n(&max_gap_ns, __ATOMIC_ACQUIRE);
            printf("REPORT max_gap_ns=%lld max_gap_end_ns=%lld gaps_over_100us=%lld calls=%llu "
                   "value=%d\n",
                   (long long)gap, (long long)__atomic_load_n(&max_gap_end_ns, __ATOMIC_RELAXED),
                   (long long)__atomic_load_n(&gaps_over_100us, __ATOMIC_RELAXED),
                   (unsigned long long)__atomic_load_n(&calls, __ATOMIC_RELAXED), compute());
        } else if (strncmp(line, "park", 4) == 0) {
            __atomic_store_n(&parked, 1, __ATOMIC_RELEASE);
            printf("PARKED\n");
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        }
    }
    return 0;
}

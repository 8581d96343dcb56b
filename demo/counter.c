/* The relive demo: a program that keeps state and prints what a function returns.
 * `make demo` runs it, edits greet() twice and hot-reloads it each time:
 * the output changes, the counters keep counting.  Then it edits mood(), which
 * gcc inlines into main's loop: main never returns, so relive moves its running
 * frame into the new code. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct stats { long ticks; long total; };

static struct stats stats;          /* file-static state: kept across reloads */
static char *history;               /* heap state: kept too */

const char *greet(long tick) {
    static char line[64];
    snprintf(line, sizeof line, "hello #%ld", tick);
    return line;
}

static const char *mood(void) {     /* called once: inlined into main's loop */
    return "(calm)";
}

int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    history = calloc(1, 1);
    for (;;) {
        stats.ticks++;
        stats.total += stats.ticks;
        printf("[pid %d] %-28s ticks=%ld total=%ld %s\n", (int)getpid(), greet(stats.ticks),
               stats.ticks, stats.total, mood());
        usleep(300000);
    }
}

"""Reloads under threads, signals, blocking syscalls, TLS and shared libraries."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import relive
from relive.patch.modules import get_main_module, load_running_modules
from support import SpawnFactory, Target, compile_c, edit, kinds, read_memory, reload

THREADS_PROG = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
volatile int stop, zero;
__attribute__((noinline)) int compute(int x) { return x + 1; }
static long rounds[4];
static void *worker(void *arg) {
    long id = (long)arg;
    int last = -1;
    while (!stop) {
        int v = compute(zero);
        if (v != last) { printf("thread %ld sees %d\n", id, v); last = v; }
        rounds[id]++;
    }
    return 0;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], 0, worker, (void *)i);
    for (;;) {
        sleep(1);
    }
}
"""


def start_four_threads(tmp_path: Path, spawn: SpawnFactory) -> Target:
    """THREADS_PROG running, every worker seen calling the original compute()."""
    exe = compile_c(tmp_path, THREADS_PROG, flags=("-g", "-O2"), link_flags=("-pthread",))
    target = spawn([exe])
    for i in range(4):
        target.wait_for(rf"thread {i} sees 1", after=0)
    return target


def test_four_threads_in_tight_loops_reloaded_again_and_again(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target = start_four_threads(tmp_path, spawn)
    source = tmp_path / "prog.c"
    previous = "return x + 1;"
    for value in range(2, 22):  # 20 reloads
        current = f"return x + {value};"
        edit(source, previous, current)
        events = reload(target.pid, source)
        assert kinds(events)["redirected"] == ["compute"]
        previous = current
        for i in range(4):
            target.wait_for(rf"thread {i} sees {value}", after=0)
    assert target.alive()


TLS_PROG = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
__thread int per_thread = 100;
extern __thread int other_tls;
__attribute__((noinline)) int bump(void) { per_thread += 1; return per_thread; }
static void *worker(void *arg) {
    for (;;) {
        int v = bump();
        printf("tls %ld %d other %d\n", (long)arg, v, other_tls);
        usleep(20000);
    }
    return 0;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t;
    pthread_create(&t, 0, worker, (void *)1);
    worker((void *)0);
}
"""


def test_thread_local_variables_bind_to_each_threads_storage(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(
        tmp_path,
        TLS_PROG,
        link_flags=("-pthread",),
        extra_sources={"other.c": "__thread int other_tls = 7;\n"},
    )
    target = spawn([exe])
    before = int(target.wait_for(r"tls 1 (\d+) other 7").group(1))
    edit(
        tmp_path / "prog.c",
        "per_thread += 1; return per_thread;",
        "per_thread += 1000; other_tls++; return per_thread;",
    )
    reload(target.pid, tmp_path / "prog.c")
    match = target.wait_for(r"tls 1 (\d+) other (\d+)")
    while int(match.group(1)) < 1000:
        match = target.wait_for(r"tls 1 (\d+) other (\d+)")
    # the thread's counter continued from where it was (not reset to 100)
    assert before < int(match.group(1)) < before + 3000
    assert int(match.group(2)) > 7


LIB_SOURCE = r"""
#include <stdio.h>
static int lib_calls;
int lib_value(void) { lib_calls++; return 1; }
int lib_calls_so_far(void) { return lib_calls; }
"""

LIB_MAIN = r"""
#include <stdio.h>
#include <unistd.h>
int lib_value(void);
int lib_calls_so_far(void);
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) {
        int v = lib_value();
        printf("lib %d calls %d\n", v, lib_calls_so_far());
        usleep(20000);
    }
}
"""


def test_function_in_a_shared_library(tmp_path: Path, spawn: SpawnFactory) -> None:
    lib = tmp_path / "libdemo.c"
    lib.write_text(LIB_SOURCE)
    subprocess.run(
        ["gcc", "-g", "-O1", "-fPIC", "-shared", "-o", "libdemo.so", "libdemo.c"],
        cwd=tmp_path,
        check=True,
    )
    exe = compile_c(
        tmp_path, LIB_MAIN, link_flags=(f"-L{tmp_path}", "-ldemo", f"-Wl,-rpath,{tmp_path}")
    )
    target = spawn([exe])
    target.wait_for(r"lib 1 calls \d+")
    edit(lib, "return 1;", "return 2 + lib_calls * 0;")
    events = reload(target.pid, lib)
    assert kinds(events)["redirected"] == ["lib_value"]
    match = target.wait_for(r"lib 2 calls (\d+)")
    assert int(match.group(1)) > 1


READ_PROG = r"""
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline)) const char *tag(void) { return "old"; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    char buf[16];
    printf("ready\n");
    for (;;) {
        ssize_t n = read(0, buf, 8);
        if (n < 0) { printf("read failed: %s\n", strerror(errno)); return 1; }
        if (n == 0) return 0;
        printf("%s got %zd: %.*s\n", tag(), n, (int)n, buf);
    }
}
"""


def test_target_blocked_in_read_continues_without_eintr(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, READ_PROG)
    target = spawn([exe], stdin_pipe=True)
    target.wait_for("ready")
    target.write(b"abcdefgh")
    target.wait_for("old got 8: abcdefgh")
    edit(tmp_path / "prog.c", 'return "old";', 'return "new";')
    reload(target.pid, tmp_path / "prog.c")  # the program sits in read() meanwhile
    target.write(b"12345678")
    target.wait_for("new got 8: 12345678")
    assert not any("read failed" in line for line in target.lines)


SIGNAL_PROG = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static volatile sig_atomic_t received;
static void on_rt(int sig) { (void)sig; received++; }
static void on_usr1(int sig) { (void)sig; printf("received %d\n", (int)received); }
__attribute__((noinline)) int work(int x) { return x * 2; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGRTMIN, on_rt);
    signal(SIGUSR1, on_usr1);
    printf("ready\n");
    volatile int sink = 0;
    for (;;) { sink += work(sink & 7); }
}
"""


def test_real_time_signal_storm_during_reloads_loses_nothing(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, SIGNAL_PROG)
    target = spawn([exe])
    target.wait_for("ready")
    sent = 400
    done = threading.Event()

    def storm() -> None:
        for _ in range(sent):
            os.kill(target.pid, signal.SIGRTMIN)
        done.set()

    thread = threading.Thread(target=storm)
    source = tmp_path / "prog.c"
    thread.start()
    previous = "return x * 2;"
    for value in range(3, 8):
        current = f"return x * {value};"
        edit(source, previous, current)
        reload(target.pid, source)
        previous = current
    thread.join()
    assert done.is_set()
    # RT signals queue: all 400 must have been delivered once the storm is over
    for _ in range(50):
        os.kill(target.pid, signal.SIGUSR1)
        match = target.wait_for(r"received (\d+)")
        if int(match.group(1)) == sent:
            break
    assert int(match.group(1)) == sent
    assert relive.attach(target.pid).status()[0].count == 5


def test_relive_killed_mid_reload_leaves_old_or_new_code(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """SIGTERM/SIGINT at any moment: the target runs, old or new code, never stopped,
    and a jump in memory is always one the journal (status, undo) knows about."""
    target = start_four_threads(tmp_path, spawn)
    main = get_main_module(load_running_modules(target.pid))
    compute = main.image.find_global("compute")
    assert compute is not None
    entry = main.runtime(compute.value)
    original = read_memory(target.pid, entry, 5)
    source = tmp_path / "prog.c"
    edit(source, "return x + 1;", "return x + 2;")
    for attempt in range(50):
        proc = subprocess.Popen(
            [sys.executable, "-m", "relive", "reload", "-p", str(target.pid), str(source)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.004 * attempt)  # a varying moment inside the reload (not a wait for output)
        proc.send_signal(signal.SIGINT if attempt % 2 else signal.SIGTERM)
        proc.wait(timeout=30)
        stat = Path(f"/proc/{target.pid}/stat").read_text()
        state = stat.rsplit(")", 1)[1].split()[0]
        assert state in "RS", f"target left in state {state}"
        rows = relive.attach(target.pid).status()
        assert all(row.active for row in rows)
        assert (read_memory(target.pid, entry, 5) != original) == bool(rows)
        if rows:
            relive.attach(target.pid).undo()
    mark = target.mark()
    relive.attach(target.pid).reload([source])
    target.wait_for(r"thread \d sees 2", after=mark)
    assert target.alive()


BLOCKED_PROG = r"""
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/select.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
__attribute__((noinline)) const char *tag(void) { return "old"; }
static int pipes[3][2];
static void fail(const char *what) { printf("%s failed: %s\n", what, strerror(errno)); }
static void *in_read(void *arg) {
    char c; (void)arg;
    for (;;) {
        ssize_t n = read(pipes[0][0], &c, 1);
        if (n != 1) { fail("read"); return 0; }
        printf("read woke %s\n", tag());
    }
}
static void *in_epoll(void *arg) {
    (void)arg;
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN}, out;
    epoll_ctl(ep, EPOLL_CTL_ADD, pipes[1][0], &ev);
    for (;;) {
        if (epoll_wait(ep, &out, 1, -1) != 1) { fail("epoll_wait"); return 0; }
        char c; read(pipes[1][0], &c, 1);
        printf("epoll woke %s\n", tag());
    }
}
static void *in_select(void *arg) {
    (void)arg;
    for (;;) {
        fd_set set; FD_ZERO(&set); FD_SET(pipes[2][0], &set);
        if (select(pipes[2][0] + 1, &set, 0, 0, 0) != 1) { fail("select"); return 0; }
        char c; read(pipes[2][0], &c, 1);
        printf("select woke %s\n", tag());
    }
}
static void *in_nanosleep(void *arg) {
    (void)arg;
    for (;;) {
        struct timespec t = {0, 300000000}, left;
        if (nanosleep(&t, &left) != 0) { fail("nanosleep"); return 0; }
    }
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 0; i < 3; i++) pipe(pipes[i]);
    pthread_t t[4];
    pthread_create(&t[0], 0, in_read, 0);
    pthread_create(&t[1], 0, in_epoll, 0);
    pthread_create(&t[2], 0, in_select, 0);
    pthread_create(&t[3], 0, in_nanosleep, 0);
    printf("ready\n");
    char line[16];
    while (fgets(line, sizeof line, stdin)) {   /* main thread blocked in read(0) too */
        int which = line[0] - '0';
        if (which >= 0 && which < 3) write(pipes[which][1], "x", 1);
    }
    return 0;
}
"""


def test_threads_blocked_in_syscalls_continue_without_eintr(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """read, epoll_wait, select, nanosleep and fgets during reloads: no EINTR."""
    exe = compile_c(tmp_path, BLOCKED_PROG, link_flags=("-pthread",))
    target = spawn([exe], stdin_pipe=True)
    target.wait_for("ready")
    source = tmp_path / "prog.c"
    previous = 'return "old";'
    for n in range(5):
        current = f'return "new{n}";'
        edit(source, previous, current)
        reload(target.pid, source)
        previous = current
        for which, name in enumerate(("read", "epoll", "select")):
            target.write(f"{which}\n".encode())
            target.wait_for(rf"{name} woke new{n}", after=0)
    assert not [line for line in target.lines if "failed" in line]

"""The process layer against real C programs compiled at test time (real ptrace)."""

from __future__ import annotations

import ctypes
import errno
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from relive.arch.x86_64.registers import MMAP, MUNMAP, get_syscall_nr, syscall_result
from relive.errors import PermissionDenied, ProcessGone, ReliveError
from relive.process import permissions, procfs, ptrace
from relive.process.memory import ProcessMemory
from relive.process.remote import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_READ,
    PROT_WRITE,
    RemoteSyscallError,
    remote_mmap,
    remote_munmap,
    remote_syscall,
    try_remote_mmap_at,
)
from relive.process.threads import StoppedProcess, stop_all
from support import SpawnFactory, Target, compile_c, wait_until

ERESTARTSYS = 512
SI_QUEUE = -1
ERESTART_RESTARTBLOCK = 516
NR_READ = 0
NR_EPOLL_WAIT = 232
NR_NANOSLEEP = (35, 230)  # glibc's nanosleep() uses clock_nanosleep

PRELUDE = """
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {}
}
"""

BUSY_THREADS = """
static volatile unsigned long counters[4];
static void *worker(void *arg) {
    long i = (long)arg;
    for (;;) counters[i]++;
    return NULL;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t[4];
    for (long i = 0; i < 4; i++) pthread_create(&t[i], NULL, worker, (void *)i);
    /* "started" once every worker spins in its loop (not still in libc's thread start). */
    while (!counters[0] || !counters[1] || !counters[2] || !counters[3]) sleep_ms(1);
    printf("started\\n");
    for (unsigned n = 0;; n++) { printf("tick %u\\n", n); sleep_ms(20); }
}
"""

READ_PIPE = """
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    char buf[6];
    printf("ready\\n");
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0) return 0;
        if (n != (ssize_t)sizeof buf) {
            printf("ERROR read returned %zd: %s\\n", n, n < 0 ? strerror(errno) : "short");
            continue;
        }
        printf("got: %.5s\\n", buf);
    }
}
"""

NANOSLEEP_COUNTER = """
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (unsigned long n = 0;; n++) {
        printf("count %lu\\n", n);
        struct timespec ts = {0, 50000000}, rem;
        if (nanosleep(&ts, &rem) != 0) printf("ERROR nanosleep: %s\\n", strerror(errno));
    }
}
"""

RT_SIGNALS = """
static atomic_long count;
static volatile sig_atomic_t report;
static void on_rt(int sig) { (void)sig; atomic_fetch_add(&count, 1); }
static void on_usr1(int sig) { (void)sig; report = 1; }
static void *sleeper(void *arg) { (void)arg; for (;;) sleep_ms(1); return NULL; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sa.sa_handler = on_rt;
    sigaction(SIGRTMIN, &sa, NULL);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);
    pthread_t t;
    pthread_create(&t, NULL, sleeper, NULL);
    printf("ready rtmin=%d\\n", SIGRTMIN);
    for (;;) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
        if (report) { report = 0; printf("count %ld\\n", atomic_load(&count)); }
    }
}
"""

TEXT_AND_DATA = """
__attribute__((noinline)) int value(void) { return 1; }
volatile int x = 7;
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("value=%p x=%p\\n", (void *)value, (void *)&x);
    for (;;) { printf("v %d x %d\\n", value(), x); sleep_ms(10); }
}
"""

PARENT_WAITS = """
static void on_usr1(int sig) { (void)sig; _exit(0); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pid_t child = fork();
    if (child == 0) {
        signal(SIGUSR1, on_usr1);
        for (unsigned n = 0;; n++) { printf("child tick %u\\n", n); sleep_ms(10); }
    }
    printf("child pid %d\\n", (int)child);
    for (;;) {
        int st;
        pid_t r = waitpid(child, &st, WUNTRACED | WCONTINUED);
        if (r < 0) {
            if (errno == EINTR) { printf("PARENT EINTR\\n"); continue; }
            printf("PARENT waitpid error: %s\\n", strerror(errno));
            return 1;
        }
        if (WIFSTOPPED(st)) printf("PARENT SAW STOP %d\\n", WSTOPSIG(st));
        else if (WIFCONTINUED(st)) printf("PARENT SAW CONTINUE\\n");
        else if (WIFEXITED(st)) { printf("child exited %d\\n", WEXITSTATUS(st)); return 0; }
        else if (WIFSIGNALED(st)) { printf("child killed %d\\n", WTERMSIG(st)); return 0; }
    }
}
"""

THREAD_CHURN = """
static void *short_lived(void *arg) { (void)arg; return NULL; }
static void *spawner(void *arg) {
    (void)arg;
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_lived, NULL) == 0) pthread_join(t, NULL);
    }
    return NULL;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t[2];
    for (int i = 0; i < 2; i++) pthread_create(&t[i], NULL, spawner, NULL);
    for (unsigned n = 0;; n++) { printf("tick %u\\n", n); sleep_ms(20); }
}
"""

TRACER_HELPER = """
import sys
from relive.process.threads import stop_all
held = stop_all(int(sys.argv[1]))
print("HELD", flush=True)
sys.stdin.read()
held.release()
print("RELEASED", flush=True)
"""


def build(tmp_path: Path, source: str, name: str = "prog") -> Path:
    """Compile a test program (PRELUDE + ``source``) with pthreads."""
    return compile_c(tmp_path, PRELUDE + source, name=name, link_flags=("-pthread",))


def current_syscall(pid: int) -> int | None:
    """The syscall the main thread is blocked in, from /proc/PID/syscall."""
    first = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    return None if first == "running" else int(first)


def error_lines(target: Target) -> list[str]:
    return [line for line in target.lines if "ERROR" in line]


def mmap_roundtrip(held: StoppedProcess, pid: int, tid: int | None = None) -> None:
    """Map a page in the target (on thread ``tid``), use it, check it is listed, unmap it."""
    prot, flags = PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
    addr = remote_syscall(held, MMAP, 0, 4096, prot, flags, -1, 0, tid=tid)
    assert procfs.find_mapping(procfs.read_maps(pid), addr) is not None
    with ProcessMemory(pid) as mem:
        mem.write(addr + 100, b"relive")
        assert mem.read(addr + 98, 10) == b"\0\0relive\0\0"
    remote_syscall(held, MUNMAP, addr, 4096, tid=tid)
    assert procfs.find_mapping(procfs.read_maps(pid), addr) is None


# -- (1) stop the world ----------------------------------------------------------


def test_stop_all_holds_every_thread_and_release_resumes(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target = spawn([build(tmp_path, BUSY_THREADS)])
    target.wait_for("started")
    target.wait_for("tick 1")
    exe = procfs.get_exe_path(target.pid)

    with stop_all(target.pid) as held:
        assert len(held.tids) == 5
        assert set(held.tids) == set(procfs.iter_thread_ids(target.pid))
        assert all(procfs.find_thread_state(target.pid, t) == "t" for t in held.tids)
        maps = procfs.read_maps(target.pid)
        pcs = dict(held.iter_pcs())
        assert set(pcs) == set(held.tids)
        for pc in pcs.values():
            mapping = procfs.find_mapping(maps, pc)
            assert mapping is not None and mapping.is_executable
        paths = [getattr(procfs.find_mapping(maps, pc), "path", None) for pc in pcs.values()]
        assert paths.count(exe) >= 4  # the busy workers spin in the program's own code
        mark = target.mark()

    assert not held.tids
    assert held.stopped_seconds > 0
    assert all(procfs.find_thread_state(target.pid, t) != "t" for t in pcs)
    target.wait_for(r"tick \d+", after=mark)
    held.release()  # idempotent


def test_single_step_and_resume_briefly(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([build(tmp_path, BUSY_THREADS)])
    target.wait_for("started")
    with stop_all(target.pid) as held:
        worker = held.tids[-1]
        before = held.get_regs(worker)
        held.single_step(worker)
        after = held.get_regs(worker)
        assert after.rip != before.rip
        assert procfs.find_thread_state(target.pid, worker) == "t"

        mark = target.mark()
        held.resume_briefly(0.05)
        assert len(held.tids) == 5
    target.wait_for(r"tick \d+", after=mark)


def test_a_held_threads_registers_are_read_once_and_handed_out_as_copies(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """get_regs reads a thread's registers once per stop: a caller's change to the
    block it got is its own until set_regs, which the next get_regs then shows."""
    target = spawn([build(tmp_path, BUSY_THREADS)])
    target.wait_for("started")
    with stop_all(target.pid) as held:
        worker = held.tids[-1]
        regs = held.get_regs(worker)
        original = int(regs.r15)
        regs.r15 = original ^ 1
        assert held.get_regs(worker).r15 == original == ptrace.get_regs(worker).r15
        held.set_regs(worker, regs)
        assert held.get_regs(worker).r15 == original ^ 1 == ptrace.get_regs(worker).r15
        regs.r15 = original
        held.set_regs(worker, regs)  # as it was, before the thread runs again
        assert ptrace.get_regs(worker).r15 == original
    target.wait_for(r"tick \d+", after=target.mark())


def test_stop_all_while_threads_come_and_go(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([build(tmp_path, THREAD_CHURN)])
    target.wait_for("tick 1")
    for _ in range(20):
        with stop_all(target.pid) as held:
            # Nothing runs: the task list is exactly what we hold (plus nothing new).
            assert set(procfs.iter_thread_ids(target.pid)) == set(held.tids)
            assert len(held.tids) >= 3
    mark = target.mark()
    target.wait_for(r"tick \d+", after=mark)


def test_release_leaves_a_job_control_stopped_process_stopped(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target = spawn([build(tmp_path, NANOSLEEP_COUNTER)])
    target.wait_for("count 1")
    os.kill(target.pid, signal.SIGSTOP)
    wait_until(lambda: procfs.find_thread_state(target.pid, target.pid) == "T", what="stopped")
    with stop_all(target.pid) as held:
        mmap_roundtrip(held, target.pid)
    wait_until(lambda: procfs.find_thread_state(target.pid, target.pid) == "T", what="T again")
    mark = target.mark()
    os.kill(target.pid, signal.SIGCONT)
    target.wait_for(r"count \d+", after=mark)
    assert error_lines(target) == []


# -- (2) and (3): remote syscalls on threads blocked in syscalls -----------------


def test_remote_mmap_on_thread_blocked_in_read(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([build(tmp_path, READ_PIPE)], stdin_pipe=True)
    target.wait_for("ready")
    for word in (b"hello", b"again", b"third"):
        wait_until(lambda: current_syscall(target.pid) == NR_READ, what="blocked in read()")
        with stop_all(target.pid) as held:
            regs = held.get_regs(target.pid)
            assert get_syscall_nr(regs) == NR_READ
            assert syscall_result(regs) == -ERESTARTSYS
            mmap_roundtrip(held, target.pid)
            assert held.get_regs(target.pid) == regs  # restored exactly
        target.write(word + b"\n")
        assert target.wait_for(r"got: |ERROR").group(0) == "got: "
        assert target.lines[-1] == f"got: {word.decode()}"
    assert error_lines(target) == []


def test_remote_mmap_on_thread_in_nanosleep(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([build(tmp_path, NANOSLEEP_COUNTER)])
    target.wait_for("count 1")
    for _ in range(3):
        wait_until(lambda: current_syscall(target.pid) in NR_NANOSLEEP, what="in nanosleep")
        with stop_all(target.pid) as held:
            regs = held.get_regs(target.pid)
            assert syscall_result(regs) == -ERESTART_RESTARTBLOCK
            mmap_roundtrip(held, target.pid)
            assert held.get_regs(target.pid) == regs
            mark = target.mark()
        first = int(target.wait_for(r"count (\d+)", after=mark).group(1))
        target.wait_for(rf"count {first + 1}$")
    assert error_lines(target) == []


EPOLL_READER = """
#include <sys/epoll.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    printf("ready\\n");
    for (;;) {
        struct epoll_event out;
        if (epoll_wait(ep, &out, 1, -1) < 0) {
            printf("epoll_wait: %s\\n", strerror(errno));
            continue;
        }
        char buf[64];
        ssize_t n = read(0, buf, sizeof buf);
        if (n <= 0) return 0;
        printf("got: %.*s\\n", (int)n - 1, buf);
    }
}
"""


def test_remote_mmap_on_thread_in_epoll_wait(tmp_path: Path, spawn: SpawnFactory) -> None:
    """The kernel fails epoll_wait with EINTR on any ptrace stop (as under gdb or
    strace); relive turns that into a transparent restart on release."""
    target = spawn([build(tmp_path, EPOLL_READER)], stdin_pipe=True)
    target.wait_for("ready")
    wait_until(lambda: current_syscall(target.pid) == NR_EPOLL_WAIT, what="in epoll_wait")
    with stop_all(target.pid) as held:
        regs = held.get_regs(target.pid)
        assert syscall_result(regs) == -errno.EINTR
        mmap_roundtrip(held, target.pid)
        assert held.get_regs(target.pid) == regs
    for _ in range(5):  # stopped again and again: still no EINTR
        with stop_all(target.pid):
            pass
    target.write(b"ping\n")
    target.wait_for("got: ping")
    assert [line for line in target.lines if "epoll_wait" in line] == []


def test_try_remote_mmap_at_reports_a_taken_range(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([build(tmp_path, NANOSLEEP_COUNTER)])
    target.wait_for("count 0")
    with stop_all(target.pid) as held:
        gaps = procfs.find_free_gaps(procfs.read_maps(target.pid))
        start = next(s for s, e in gaps if e - s >= 1 << 24 and s >= 1 << 32)
        hint = start + (1 << 20)
        assert try_remote_mmap_at(held, hint, 4096, PROT_READ) == hint
        assert try_remote_mmap_at(held, hint, 4096, PROT_READ) is None  # EEXIST
        remote_munmap(held, hint, 4096)
        with pytest.raises(RemoteSyscallError, match="mmap") as failure:
            remote_mmap(held, 4096, PROT_READ, MAP_ANONYMOUS)  # neither private nor shared
        assert failure.value.errno == errno.EINVAL
    target.wait_for(r"count \d+")


# -- (4) signals are never lost ---------------------------------------------------


def request_count(target: Target, expected: int, timeout: float = 10.0) -> int:
    """Ask the program for its count until it reaches ``expected`` (or overshoots)."""
    deadline = time.monotonic() + timeout
    while True:
        mark = target.mark()
        os.kill(target.pid, signal.SIGUSR1)
        count = int(target.wait_for(r"count (\d+)", after=mark).group(1))
        if count >= expected or time.monotonic() > deadline:
            return count


def test_no_signal_is_lost_while_stopping_repeatedly(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([build(tmp_path, RT_SIGNALS)])
    rtmin = int(target.wait_for(r"ready rtmin=(\d+)").group(1))
    sent = 0
    send_errors: list[BaseException] = []

    def send() -> None:
        nonlocal sent
        try:
            for _ in range(400):
                os.kill(target.pid, rtmin)
                sent += 1
                if sent % 8 == 0:
                    time.sleep(0.001)  # pacing the sender, not waiting for output
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which fails
            send_errors.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    cycles = 0
    while cycles < 20 or sender.is_alive():
        with stop_all(target.pid) as held:
            for tid in held.tids:  # step every thread: any may sit in a signal-stop
                mmap_roundtrip(held, target.pid, tid)
        cycles += 1
    sender.join()
    assert send_errors == [] and sent == 400

    # Signals sent while the threads are held, and a step right after them.
    with stop_all(target.pid) as held:
        for _ in range(5):
            os.kill(target.pid, rtmin)
        mmap_roundtrip(held, target.pid)

    assert request_count(target, 405) == 405


SIGINFO_REPORTER = """
static void on_rt(int sig, siginfo_t *si, void *uc) {
    (void)sig; (void)uc;
    char line[64];
    int n = snprintf(line, sizeof line, "rt value=%d code=%d\\n",
                     si->si_value.sival_int, si->si_code);
    write(1, line, n);
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sa.sa_sigaction = on_rt;
    sigaction(SIGRTMIN, &sa, NULL);
    printf("ready rtmin=%d\\n", SIGRTMIN);
    for (unsigned n = 0;; n++) { printf("tick %u\\n", n); sleep_ms(5); }
}
"""


class _SigVal(ctypes.Union):
    _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]


def sigqueue(pid: int, signo: int, value: int) -> None:
    """sigqueue(3): send a signal carrying ``value`` (si_code SI_QUEUE)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, _SigVal]
    if libc.sigqueue(pid, signo, _SigVal(sival_int=value)) != 0:
        raise OSError(ctypes.get_errno(), "sigqueue")


@pytest.mark.parametrize("step", [False, True], ids=["detach", "step-then-detach"])
def test_signal_stop_before_the_interrupt_keeps_its_siginfo(
    tmp_path: Path, spawn: SpawnFactory, monkeypatch: pytest.MonkeyPatch, step: bool
) -> None:
    """A thread that reports a signal-delivery-stop first gets that signal back, once."""
    target = spawn([build(tmp_path, SIGINFO_REPORTER)])
    rtmin = int(target.wait_for(r"ready rtmin=(\d+)").group(1))
    target.wait_for("tick 1")
    real_interrupt = ptrace.interrupt

    def signal_then_interrupt(tid: int) -> None:
        # Seized but not yet interrupted: the signal makes the thread report a
        # signal-delivery-stop; the interrupt's event-stop stays pending behind it.
        sigqueue(target.pid, rtmin, 1234)
        wait_until(lambda: procfs.find_thread_state(target.pid, tid) == "t", what="signal-stop")
        real_interrupt(tid)

    monkeypatch.setattr(ptrace, "interrupt", signal_then_interrupt)
    with stop_all(target.pid) as held:
        monkeypatch.undo()
        if step:
            mmap_roundtrip(held, target.pid)
        assert not any(line.startswith("rt ") for line in target.lines)
    target.wait_for(f"rt value=1234 code={SI_QUEUE}")
    mark = target.mark()
    target.wait_for(r"tick \d+", after=mark)
    target.wait_for(r"tick \d+", after=target.mark())
    assert sum(line.startswith("rt ") for line in target.lines) == 1


# -- (5) memory ---------------------------------------------------------------------


def parse_addresses(target: Target) -> tuple[int, int]:
    match = target.wait_for(r"value=(0x[0-9a-f]+) x=(0x[0-9a-f]+)")
    return int(match.group(1), 16), int(match.group(2), 16)


MOV_EAX_1 = b"\xb8\x01\x00\x00\x00"  # mov eax, 1 (what gcc -O0 emits for `return 1`)


def test_write_into_text_and_data(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([build(tmp_path, TEXT_AND_DATA)])
    value, x = parse_addresses(target)
    target.wait_for("v 1 x 7")
    with stop_all(target.pid), ProcessMemory(target.pid) as mem:
        mapping = procfs.find_mapping(procfs.read_maps(target.pid), value)
        assert mapping is not None and mapping.perms.startswith("r-x")
        code = mem.read(value, 32)
        imm = value + code.index(MOV_EAX_1) + 1
        mem.write(imm, (42).to_bytes(4, "little"))
        mem.write(x, (99).to_bytes(4, "little"))
        assert mem.read(imm, 4) == (42).to_bytes(4, "little")
    target.wait_for("v 42 x 99")


def test_write_falls_back_to_pokedata(
    tmp_path: Path, spawn: SpawnFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = spawn([build(tmp_path, TEXT_AND_DATA)])
    value, x = parse_addresses(target)
    real_pwrite = os.pwrite
    calls: list[int] = []

    def refuse_text(fd: int, data: bytes, offset: int) -> int:
        calls.append(offset)
        if offset == x:  # a short write: only the first byte lands
            return real_pwrite(fd, data[:1], offset)
        raise OSError(errno.EIO, "forced writes disabled (simulated)")

    with stop_all(target.pid), ProcessMemory(target.pid) as mem:
        imm = value + mem.read(value, 32).index(MOV_EAX_1) + 1  # unaligned: head and tail
        monkeypatch.setattr(os, "pwrite", refuse_text)
        mem.write(imm, (43).to_bytes(4, "little"))
        mem.write(x, (0x01020304).to_bytes(4, "little"))
        monkeypatch.undo()
        assert calls
        assert mem.read(imm - 1, 6) == MOV_EAX_1[:1] + (43).to_bytes(4, "little") + mem.read(
            imm + 4, 1
        )
    target.wait_for(f"v 43 x {0x01020304}")


def test_read_errors_name_the_address(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([build(tmp_path, TEXT_AND_DATA)])
    target.wait_for("v 1")
    with ProcessMemory(target.pid) as mem, pytest.raises(ReliveError, match="0x1000"):
        mem.read(0x1000, 16)
    target.stop()
    with pytest.raises(ProcessGone):
        ProcessMemory(target.pid)


def test_read_spans_reads_every_span_at_once_or_names_the_one_unmapped(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """The copy a reclaim check makes at its stop: several spans in one call
    (process_vm_readv), the same bytes as span by span; an unmapped span falls
    back to the span-by-span read, whose error names its address."""
    target = spawn([build(tmp_path, TEXT_AND_DATA)])
    value, x = parse_addresses(target)
    spans = [(value, value + 32), (x & ~7, (x & ~7) + 16), (value + 64, value + 72)]
    with stop_all(target.pid), ProcessMemory(target.pid) as mem:
        together = mem.read_spans(spans)
        assert together == b"".join(mem.read(lo, hi - lo) for lo, hi in spans)
        assert together[:32].find(MOV_EAX_1) >= 0
        with pytest.raises(ReliveError, match="0x1000"):
            mem.read_spans([*spans, (0x1000, 0x1010)])


# -- (6) permission diagnosis -------------------------------------------------------


def test_already_traced_names_the_tracer(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([build(tmp_path, NANOSLEEP_COUNTER)])
    target.wait_for("count 0")
    tracer = spawn([sys.executable, "-c", TRACER_HELPER, str(target.pid)], stdin_pipe=True)
    tracer.wait_for("HELD")

    with pytest.raises(PermissionDenied) as denied:
        stop_all(target.pid)
    assert f"pid {tracer.pid}" in denied.value.message
    assert procfs.get_process_name(tracer.pid) in denied.value.message
    assert "detach" in denied.value.hint
    assert denied.value.exit_code == 3

    assert tracer.proc.stdin is not None
    tracer.proc.stdin.close()
    tracer.wait_for("RELEASED")
    mark = target.mark()
    target.wait_for(r"count \d+", after=mark)
    with stop_all(target.pid) as held:  # free again
        assert held.tids == (target.pid,)


def test_nonexistent_pid_is_process_gone() -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()  # reaped: the pid names no process now
    pid = finished.pid
    with pytest.raises(ProcessGone, match=f"no such process: {pid}") as gone:
        stop_all(pid)
    assert gone.value.exit_code == 5


def test_process_killed_while_held(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([build(tmp_path, BUSY_THREADS)])
    target.wait_for("started")
    held = stop_all(target.pid)
    try:
        os.kill(target.pid, signal.SIGKILL)
        wait_until(lambda: not procfs.is_alive(target.pid), what="the target died")
        with pytest.raises(ProcessGone, match="exited during the reload"):
            remote_mmap(held, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS)
    finally:
        held.release()


def _eperm() -> OSError:
    return OSError(errno.EPERM, os.strerror(errno.EPERM))


def test_diagnosis_other_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(permissions, "has_cap_sys_ptrace", lambda pid="self": False)
    monkeypatch.setattr(procfs, "find_tracer_pid", lambda pid: None)
    monkeypatch.setattr(procfs, "get_uids", lambda pid: (0, 0, 0, 0))
    error = permissions.diagnose_trace_failure(os.getppid(), _eperm())
    assert isinstance(error, PermissionDenied)
    assert "uid 0" in error.message and "uid 1000" in error.message
    assert error.hint == "run relive as that user or as root"


@pytest.mark.parametrize("scope", [1, 2, 3])
def test_diagnosis_yama(monkeypatch: pytest.MonkeyPatch, scope: int) -> None:
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setattr(permissions, "has_cap_sys_ptrace", lambda pid="self": False)
    monkeypatch.setattr(permissions, "read_yama_scope", lambda path=None: scope)
    monkeypatch.setattr(procfs, "find_tracer_pid", lambda pid: None)
    monkeypatch.setattr(procfs, "get_uids", lambda pid: (1000, 1000, 1000, 1000))
    error = permissions.diagnose_trace_failure(os.getppid(), _eperm())
    assert isinstance(error, PermissionDenied)
    assert f"ptrace_scope is {scope}" in error.message
    assert "relive run" in error.hint
    if scope < 3:
        assert "echo 0 | sudo tee /proc/sys/kernel/yama/ptrace_scope" in error.hint


def test_diagnosis_missing_capability(monkeypatch: pytest.MonkeyPatch) -> None:
    # relive blames the capability only when it runs as root (a container's root).
    monkeypatch.setattr(os, "getuid", lambda: 0)
    monkeypatch.setattr(permissions, "has_cap_sys_ptrace", lambda pid="self": False)
    monkeypatch.setattr(permissions, "read_yama_scope", lambda path=None: None)
    monkeypatch.setattr(procfs, "find_tracer_pid", lambda pid: None)
    error = permissions.diagnose_trace_failure(os.getppid(), _eperm())
    assert isinstance(error, PermissionDenied)
    assert "CAP_SYS_PTRACE" in error.message
    assert "--cap-add=SYS_PTRACE" in error.hint


def test_yama_absent_is_not_a_cause(tmp_path: Path) -> None:
    assert permissions.read_yama_scope(tmp_path / "missing") is None
    assert permissions.find_yama_block(scope=0) is None


# -- (7) a waiting parent sees nothing ----------------------------------------------


def test_parent_waiting_with_wuntraced_sees_no_stop(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([build(tmp_path, PARENT_WAITS)])
    child = int(target.wait_for(r"child pid (\d+)").group(1))
    target.wait_for("child tick 1")
    for _ in range(10):
        with stop_all(child) as held:
            assert held.tids == (child,)
            mark = target.mark()
        target.wait_for(r"child tick \d+", after=mark)
    os.kill(child, signal.SIGUSR1)
    target.wait_for("child exited 0")
    assert [line for line in target.lines if line.startswith("PARENT")] == []


# -- procfs helpers -------------------------------------------------------------------


def test_procfs_identity(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = build(tmp_path, NANOSLEEP_COUNTER, name="relive_probe")
    target = spawn([exe])
    target.wait_for("count 0")
    assert procfs.get_exe_path(target.pid) == str(exe)
    assert procfs.get_process_name(target.pid) == "relive_probe"
    assert target.pid in procfs.iter_pids_by_name("relive_probe")
    assert procfs.find_tracer_pid(target.pid) is None
    assert procfs.get_start_time(target.pid) >= procfs.get_start_time(os.getpid())
    procfs.check_alive(target.pid)
    target.stop()
    with pytest.raises(ProcessGone, match=re.escape(f"no such process: {target.pid}")):
        procfs.check_alive(target.pid)


def test_find_free_gaps() -> None:
    maps = [
        procfs.Mapping(0x400000, 0x401000, "r-xp", 0, "08:01", 1, "/bin/x"),
        procfs.Mapping(0x401000, 0x402000, "rw-p", 0, "08:01", 1, "/bin/x"),
        procfs.Mapping(0x7F0000000000, 0x7F0000001000, "r--p", 0, "00:00", 0, ""),
    ]
    assert procfs.find_free_gaps(maps) == [
        (0x10000, 0x400000),
        (0x402000, 0x7F0000000000),
        (0x7F0000001000, procfs.USER_SPACE_END),
    ]
    line = "7f00-8f00 r-xp 00001000 08:01 42   /path/with space (deleted)\n"
    parsed = procfs.parse_maps_line(line)
    assert parsed.path == "/path/with space (deleted)" and parsed.offset == 0x1000


CALLABLE = r"""
#include <stdio.h>
#include <unistd.h>
static volatile long calls;
__attribute__((noinline)) long triple_plus(long a, long b) { calls++; return 3 * a + b; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (long n = 0;; n++) { printf("tick %ld calls %ld\n", n, calls); usleep(20000); }
}
"""


def test_remote_call_runs_a_function_and_restores_the_thread(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    from relive.patch.modules import get_main_module, load_running_modules
    from relive.process.remote import remote_call

    target = spawn([build(tmp_path, CALLABLE)])
    target.wait_for(r"tick \d+ calls 0")
    main = get_main_module(load_running_modules(target.pid))
    symbol = main.image.find_global("triple_plus")
    assert symbol is not None
    with stop_all(target.pid) as held:
        before = held.get_regs(target.pid)
        assert remote_call(held, main.runtime(symbol.value), 5, 7) == 22
        assert held.get_regs(target.pid) == before
    target.wait_for(r"tick \d+ calls 1")
    target.wait_for(r"tick \d+ calls 1")  # and it keeps running normally

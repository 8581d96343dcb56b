"""Reclaim never frees code the program can still return or jump into (issue 13 §3).

Each program keeps a way back into a version of ``value()`` that later reloads
supersede: a frame under a signal handler running on an alternate stack, a
suspended coroutine, a function pointer it loaded from a table.  The version is
superseded several times (a freed range is reused by the reload after the
next), then the program goes back into it: it must finish correctly.
"""

from __future__ import annotations

import time
from pathlib import Path

from relive.patch.journal import load_journal
from support import SpawnFactory, Target, compile_c, reload, wait_until

HELD_SIGNAL = r"""
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
volatile int armed, released;
pthread_t thread;
__attribute__((noinline)) void spin(void) { armed = 1; while (!released) ; }
__attribute__((noinline)) int value(int x) {
    if (x) spin();  /* the signal lands in spin(): value()'s return address is on the stack */
    return x + 1;
}
static void on_signal(int sig) {  /* runs on the alternate stack, waits for the test */
    char c;
    (void)sig;
    while (read(0, &c, 1) != 1) ;  /* (a stop by ptrace may interrupt it) */
    released = 1;
}
static void *worker(void *arg) {
    stack_t alt = {.ss_sp = malloc(1 << 16), .ss_size = 1 << 16};
    sigaltstack(&alt, NULL);
    char c;
    if (read(0, &c, 1) != 1) return arg;
    printf("worker %d\n", value(1));
    for (;;) pause();
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    struct sigaction action = {.sa_handler = on_signal, .sa_flags = SA_ONSTACK};
    sigaction(SIGUSR1, &action, NULL);
    pthread_create(&thread, NULL, worker, NULL);
    for (;;) {
        printf("value %d\n", value(0));
        if (armed == 1) { armed = 2; pthread_kill(thread, SIGUSR1); printf("signalled\n"); }
        usleep(2000);
    }
}
"""


def set_value(source: Path, n: int) -> None:
    text = source.read_text()
    start = text.index(" x + ", text.index("int value(")) + len(" x + ")
    source.write_text(text[:start] + str(n) + text[text.index(";", start) :])


def reload_value(target: Target, source: Path, n: int) -> None:
    set_value(source, n)
    reload(target.pid, source, move_frames=False)
    target.wait_for(rf"^value {n}$", after=target.mark())


def wait_in_read(target: Target, tid: int | None = None) -> None:
    """Until a thread of ``target`` (``tid``, or any) is blocked in read(0, ...)."""
    tids = [tid] if tid else [int(t.name) for t in Path(f"/proc/{target.pid}/task").iterdir()]

    def reading() -> bool:
        for t in tids:
            fields = Path(f"/proc/{target.pid}/task/{t}/syscall").read_text().split()
            if fields[:2] == ["0", "0x0"]:
                return True
        return False

    wait_until(reading, what=f"pid {target.pid} reads its stdin")


def newest_code(target: Target) -> tuple[int, bytes]:
    """Where the last reload's code is, and its bytes."""
    address, size = load_journal(target.pid).blocks[-1].code
    return address, read(target.pid, address, size)


def read(pid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        return mem.read(size)


def intact(target: Target, code: tuple[int, bytes]) -> bool:
    """Whether that code is still there, neither reused by a later reload nor freed."""
    address, data = code
    blocks = load_journal(target.pid).blocks
    free = not any(b.code[0] == address and not b.reclaimed for b in blocks)
    return not free and read(target.pid, address, len(data)) == data


def supersede(target: Target, source: Path, first: int, last: int) -> None:
    for n in range(first, last + 1):
        reload_value(target, source, n)


def test_a_frame_under_a_handler_on_an_alternate_stack_keeps_its_code(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, HELD_SIGNAL, link_flags=("-pthread",))
    target = spawn([exe], stdin_pipe=True)
    target.wait_for(r"^value 1$")
    source = tmp_path / "prog.c"
    wait_in_read(target)
    reload_value(target, source, 2)
    held = newest_code(target)
    target.write(b"g")  # the worker enters value() v2, spins in spin(), gets the signal
    target.wait_for(r"^signalled$")
    time.sleep(0.05)  # (the handler reaches its read)
    wait_in_read(target)
    supersede(target, source, 3, 6)  # v2 would be reused by v4 and v6
    assert intact(target, held)
    target.write(b"r")  # the handler returns; spin() returns into v2
    target.wait_for(r"^worker 3$")
    target.wait_for(r"^value 6$", after=target.mark())
    assert target.alive()


COROUTINE = r"""
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
static ucontext_t main_ctx, co_ctx;
__attribute__((noinline)) void yield(void) { swapcontext(&co_ctx, &main_ctx); }
__attribute__((noinline)) int value(int x) {
    if (x) yield();  /* suspended here: value()'s return address is on the coroutine stack */
    return x + 1;
}
static void coroutine(void) {
    printf("coroutine %d\n", value(1));
    yield();
}
static int has_input(void) {
    struct pollfd in = {.fd = 0, .events = POLLIN};
    char c;
    return poll(&in, 1, 0) == 1 && read(0, &c, 1) == 1;
}
int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    size_t size = 1 << 16;
    getcontext(&co_ctx);
    co_ctx.uc_stack.ss_sp = argc > 1 ? mmap(NULL, size, PROT_READ | PROT_WRITE,
                                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
                                     : malloc(size);
    co_ctx.uc_stack.ss_size = size;
    makecontext(&co_ctx, coroutine, 0);
    (void)argv;
    for (;;) {
        printf("value %d\n", value(0));
        if (has_input()) { swapcontext(&main_ctx, &co_ctx); printf("back\n"); }
        usleep(2000);
    }
}
"""


def run_suspended_coroutine(tmp_path: Path, spawn: SpawnFactory, *argv: str) -> None:
    exe = compile_c(tmp_path, COROUTINE)
    target = spawn([exe, *argv], stdin_pipe=True)
    target.wait_for(r"^value 1$")
    source = tmp_path / "prog.c"
    reload_value(target, source, 2)
    held = newest_code(target)
    target.write(b"s")  # the coroutine enters value() v2 and yields from inside it
    target.wait_for(r"^back$")
    supersede(target, source, 3, 6)
    assert intact(target, held)
    mark = target.mark()
    target.write(b"r")  # resumed: yield() returns into v2
    target.wait_for(r"^coroutine 3$", after=mark)
    target.wait_for(r"^back$", after=mark)
    target.wait_for(r"^value 6$", after=target.mark())
    assert target.alive()


def test_a_coroutine_suspended_on_a_heap_stack_keeps_its_code(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    run_suspended_coroutine(tmp_path, spawn)


def test_a_coroutine_suspended_on_a_mapped_stack_keeps_its_code(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    run_suspended_coroutine(tmp_path, spawn, "mmap")

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

import pytest

import support
from relive.patch.journal import load_journal
from support import (
    HAS_INPUT,
    SWITCHING,
    VALUE_WORKER_MAIN,
    SpawnFactory,
    Target,
    fork_child,
    read_memory,
    reload,
    set_value,
    start_value_program,
    wait_reading_stdin,
)

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


def reload_value(target: Target, source: Path, n: int) -> None:
    """The frames stay where they are: the program keeps its way back into old code."""
    support.reload_value(target, source, n, move_frames=False)


def wait_in_read(target: Target) -> None:
    """Until a thread of ``target`` is blocked in read(0, ...)."""
    wait_reading_stdin(target, any_thread=True)


def newest_code(target: Target) -> tuple[int, bytes]:
    """Where the last reload's code is, and its bytes."""
    address, size = load_journal(target.pid).blocks[-1].code
    return address, read_memory(target.pid, address, size)


def intact(target: Target, code: tuple[int, bytes]) -> bool:
    """Whether that code is still there, neither reused by a later reload nor freed."""
    address, data = code
    blocks = load_journal(target.pid).blocks
    free = not any(b.code[0] == address and not b.reclaimed for b in blocks)
    return not free and read_memory(target.pid, address, len(data)) == data


def supersede(target: Target, source: Path, first: int, last: int) -> None:
    for n in range(first, last + 1):
        reload_value(target, source, n)


@pytest.mark.parametrize("where", ["callee", "itself"])
def test_a_frame_under_a_handler_on_an_alternate_stack_keeps_its_code(
    tmp_path: Path, spawn: SpawnFactory, where: str
) -> None:
    """Interrupted in a function value() called (its return address on the
    thread's own stack) or in value() itself (the PC the kernel saved in the
    signal frame on the alternate stack)."""
    program = HELD_SIGNAL
    if where == "itself":
        program = program.replace("if (x) spin();", "if (x) { armed = 1; while (!released) ; }")
    target, source = start_value_program(
        tmp_path, spawn, program, stdin_pipe=True, link_flags=("-pthread",)
    )
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


COROUTINE = (
    r"""
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
"""
    + HAS_INPUT
    + r"""
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
)


def run_suspended_coroutine(tmp_path: Path, spawn: SpawnFactory, *argv: str) -> None:
    target, source = start_value_program(tmp_path, spawn, COROUTINE, *argv, stdin_pipe=True)
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


RETURN_ADDRESS = (
    r"""
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
const void *where;  /* where value() called note() from: in value()'s code */
unsigned char seen[16];
__attribute__((noinline)) void note(void) {
    where = __builtin_return_address(0);
    memcpy(seen, where, sizeof seen);
}
__attribute__((noinline)) int value(int x) {
    if (x) note();
    return x + 1;
}
"""
    + HAS_INPUT
    + r"""
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int noted = 0;;) {
        printf("value %d\n", value(0));
        if (has_input()) {
            if (!noted++) printf("noted %d\n", value(1));
            else printf("%s\n", memcmp(seen, where, sizeof seen) ? "overwritten" : "intact");
        }
        usleep(2000);
    }
}
"""
)


def test_a_return_address_the_program_stored_keeps_its_code(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    run_noted_return_address(tmp_path, spawn, RETURN_ADDRESS)


def run_noted_return_address(tmp_path: Path, spawn: SpawnFactory, program: str) -> None:
    """``program`` stores a return address into value() v2 (its "n" command), which
    later reloads supersede: v2 stays, and the bytes there are intact ("c")."""
    target, source = start_value_program(tmp_path, spawn, program, stdin_pipe=True)
    reload_value(target, source, 2)
    held = newest_code(target)
    target.write(b"n")  # value() v2 has note() store a return address into it
    target.wait_for(r"^noted 3$")
    supersede(target, source, 3, 6)
    assert intact(target, held)
    target.write(b"c")
    target.wait_for(r"^intact$")


HANDLER_TABLE = r"""
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static void on_signal(int sig) { printf("handler %d\n", sig > 0 ? 1 : 0); }
/* Built without PIE: the table is in .rodata, its entry a plain absolute address. */
static void (*const handlers[])(int) = {on_signal};
__attribute__((noinline)) int value(int x) {
    if (x) {  /* only the kernel keeps the handler's address once this returns */
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_handler = handlers[0];
        sigaction(SIGUSR1, &action, NULL);
    }
    return x + 1;
}
static int input(void) {
    struct pollfd in = {.fd = 0, .events = POLLIN};
    char c;
    return poll(&in, 1, 0) == 1 && read(0, &c, 1) == 1 ? c : 0;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) {
        printf("value %d\n", value(0));
        switch (input()) {
        case 'i': printf("installed %d\n", value(1)); break;
        case 'k': raise(SIGUSR1); break;
        }
        usleep(2000);
    }
}
"""


def set_handler(source: Path, n: int) -> None:
    text = source.read_text()
    start = text.index('printf("handler %d\\n", sig > 0 ? ') + len(
        'printf("handler %d\\n", sig > 0 ? '
    )
    source.write_text(text[:start] + str(n) + text[text.index(" :", start) :])


def test_a_handler_installed_from_a_table_in_read_only_data_runs_the_newest_code(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start_value_program(
        tmp_path,
        spawn,
        HANDLER_TABLE,
        stdin_pipe=True,
        flags=("-g", "-O0", "-fno-pie"),
        link_flags=("-no-pie",),
    )
    set_handler(source, 2)
    reload_value(target, source, 2)
    held = newest_code(target)
    target.write(b"i")  # value() v2 installs on_signal() from its table
    target.wait_for(r"^installed 3$")
    for n in range(3, 7):
        set_handler(source, n)
        reload_value(target, source, n)
    # The table's entry (a replaced function's address) is the original
    # on_signal(), which jumps to the newest: v2 itself is not kept for it.
    assert not intact(target, held)
    target.write(b"k")
    target.wait_for(r"^handler 6$")
    target.wait_for(r"^value 6$", after=target.mark())


EXITING = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static void at_exit(void) { printf("bye %d\n", 1); }
__attribute__((noinline)) int value(int x) {
    if (x) atexit(at_exit);  /* the handler's address, kept mangled by libc */
    return x + 1;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 0;; i++) {
        printf("value %d\n", value(0));
        char c;
        if (read(0, &c, 1) == 1 && c == 'a') printf("registered %d\n", value(1));
        if (c == 'q') exit(0);
    }
}
"""


@pytest.mark.parametrize("added", [False, True], ids=["replaced", "added"])
def test_an_atexit_handler_registered_by_new_code_runs_its_newest_version(
    tmp_path: Path, spawn: SpawnFactory, added: bool
) -> None:
    """libc keeps the handler's address mangled, where no scan sees it: the address
    is the original function's entry (``&f`` of a replaced function), or, for a
    function a reload added, the added function itself, which a later version
    redirects with an entry jump: never reclaimed."""
    target, source = start_value_program(tmp_path, spawn, EXITING, stdin_pipe=True)
    if added:  # a handler the original does not have
        source.write_text(
            EXITING.replace(
                "static void at_exit(void)",
                'static void at_exit_added(void) { printf("bye %d\\n", 1); }\n'
                "static void at_exit(void)",
            ).replace("atexit(at_exit)", "atexit(at_exit_added)")
        )

    def reload_both(n: int) -> None:
        text = source.read_text()
        start = text.index('printf("bye %d\\n", ') + len('printf("bye %d\\n", ')
        source.write_text(text[:start] + str(n) + text[text.index(")", start) :])
        set_value(source, n)
        wait_in_read(target)
        reload(target.pid, source, move_frames=False)
        mark = target.mark()
        target.write(b".")
        target.wait_for(rf"^value {n}$", after=mark)

    reload_both(2)
    held = newest_code(target)
    wait_in_read(target)
    target.write(b"a")  # value() v2 registers at_exit()
    target.wait_for(r"^registered 3$")
    for n in range(3, 7):
        reload_both(n)
    if added:  # the added function's first version holds its entry jump (not freed)
        patches = load_journal(target.pid).patches.values()
        assert any(held[0] <= p.entry < held[0] + len(held[1]) for p in patches)
    target.write(b"q")
    target.wait_for(r"^bye 6$")
    assert target.wait_exit() == 0


FORKING = r"""
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>
__attribute__((noinline)) int value(int x) { return x + 1; }
static int has_input(void) {
    struct pollfd in = {.fd = 0, .events = POLLIN};
    char line[16];  /* one fork per write */
    return poll(&in, 1, 0) == 1 && read(0, line, sizeof line) > 0;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) {
        if (has_input() && fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (;;) { printf("child %d value %d\n", (int)getpid(), value(0)); usleep(2000); }
        }
        printf("value %d\n", value(0));
        usleep(2000);
    }
}
"""


def test_a_child_forked_after_reclaims_and_its_parent_reload_apart(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    parent, source = start_value_program(tmp_path, spawn, FORKING, stdin_pipe=True)
    supersede(parent, source, 2, 6)  # the parent reuses its freed code
    assert (
        any(b.reclaimed for b in load_journal(parent.pid).blocks)
        or len(load_journal(parent.pid).blocks) < 5
    )
    child = fork_child(parent, r"^child {pid} value 6$")
    for n in range(7, 11):  # the parent goes on reusing: the child's copy is its own
        reload_value(parent, source, n)
        parent.wait_for(rf"^child {child} value 6$", after=parent.mark())
    for n in range(11, 15):  # the child reloads in space it never ran code in
        set_value(source, n)
        reload(child, source, move_frames=False)
        parent.wait_for(rf"^child {child} value {n}$", after=parent.mark())
        parent.wait_for(r"^value 10$", after=parent.mark())
    inherited = [b.code for b in load_journal(child).blocks if not b.source and b.code[1]]
    for block in load_journal(child).blocks:
        if block.source:
            assert not any(
                block.code[0] < start + size and start < block.code[0] + block.code[1]
                for start, size in inherited
            )
    assert parent.alive()


IN_SYSCALL = (
    r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int value(int x) {
    if (x) {  /* the worker waits in a system call made from this version's own code */
        char c;
        long got;
        __asm__ volatile("syscall" : "=a"(got) : "a"(0L), "D"(0L), "S"(&c), "d"(1L)
                         : "rcx", "r11", "memory");
        (void)got;
    }
    return x + 1;
}
"""
    + VALUE_WORKER_MAIN
)


def test_a_thread_in_a_system_call_made_by_old_code_keeps_it(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start_value_program(
        tmp_path, spawn, IN_SYSCALL, stdin_pipe=True, link_flags=("-pthread",)
    )
    reload_value(target, source, 2)
    wait_in_read(target)
    target.write(b"x")  # the worker leaves the original, enters v2 and waits in there
    target.wait_for(r"^worker 2$")
    held = newest_code(target)
    wait_in_read(target)
    supersede(target, source, 3, 6)
    assert intact(target, held)
    mark = target.mark()
    target.write(b"x")  # returns from v2 (1 + 2), then waits in v6
    target.wait_for(r"^worker 3$", after=mark)
    assert target.alive()


def test_a_jump_table_of_absolute_addresses_does_not_keep_its_code(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """The table lies in the block's own data, which only its code reads: it keeps
    the code only while something else reaches that data."""
    target, source = start_value_program(
        tmp_path, spawn, SWITCHING, flags=("-g", "-O0", "-fno-pie"), link_flags=("-no-pie",)
    )
    for n in (2, 3, 4, 5):
        reload_value(target, source, n)
    blocks = load_journal(target.pid).blocks
    assert not any(b.escaped for b in blocks)
    assert sum(not b.reclaimed for b in blocks) <= 2


STATIC_STACK = (
    r"""
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>
/* One object in .bss: the pointer lies below the stack the program runs on. */
static struct {
    char pad[8192];
    const void *where;
    unsigned char seen[16];
    char gap[16384];
    char stack[1 << 16];
} g;
static ucontext_t main_ctx, loop_ctx;
__attribute__((noinline)) void note(void) {
    g.where = __builtin_return_address(0);
    memcpy(g.seen, g.where, sizeof g.seen);
}
__attribute__((noinline)) int value(int x) {
    if (x) note();
    return x + 1;
}
"""
    + HAS_INPUT
    + r"""
static void loop(void) {
    memset(&loop_ctx, 0, sizeof loop_ctx);  /* no pointer to the stack's bottom is left */
    for (int noted = 0;;) {
        printf("value %d\n", value(0));
        if (has_input()) {
            if (!noted++) printf("noted %d\n", value(1));
            else printf("%s\n", memcmp(g.seen, g.where, sizeof g.seen) ? "overwritten" : "intact");
        }
        usleep(2000);
    }
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    getcontext(&loop_ctx);
    loop_ctx.uc_stack.ss_sp = g.stack;
    loop_ctx.uc_stack.ss_size = sizeof g.stack;
    makecontext(&loop_ctx, loop, 0);
    swapcontext(&main_ctx, &loop_ctx);  /* runs on a stack in .bss from here on */
}
"""
)


def test_a_pointer_below_a_stack_in_the_programs_own_data_keeps_its_code(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """Memory below a stack pointer is not taken for stale in a module's data: the
    program's code reaches its variables there without a stored pointer."""
    run_noted_return_address(tmp_path, spawn, STATIC_STACK)


RED_ZONE = r"""
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
volatile char armed, released, go;
/* A leaf function that keeps where it goes on (in rax on entry) only in its red
   zone, below the stack pointer, while it waits. */
__asm__(".text\n.globl park\n.type park, @function\npark:\n"
        "  mov %rax, -64(%rsp)\n"
        "  xor %eax, %eax\n"
        "  movb $1, armed(%rip)\n"
        "1: pause\n"
        "  cmpb $0, released(%rip)\n"
        "  je 1b\n"
        "  jmp *-64(%rsp)\n"
        ".size park, .-park\n");
__attribute__((noinline)) int value(int x) {
    /* Goes to park() with its own address to come back to, taken from a call's
       return address (popped: below the stack pointer from then on); below its
       own red zone, which keeps x. */
    if (x)
        __asm__ volatile("sub $128, %%rsp\n\tcall 1f\n\tadd $128, %%rsp\n\tjmp 2f\n"
                         "1:\tpop %%rax\n\tjmp park\n2:" ::: "rax", "memory", "cc");
    return x + 1;
}
static void *worker(void *arg) {
    while (!go) usleep(1000);
    printf("worker %d\n", value(1));
    return arg;
}
static int input(void) {
    struct pollfd in = {.fd = 0, .events = POLLIN};
    char c;
    return poll(&in, 1, 0) == 1 && read(0, &c, 1) == 1 ? c : 0;
}
int main(void) {
    pthread_t thread;
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_create(&thread, NULL, worker, NULL);
    for (int told = 0;;) {
        printf("value %d\n", value(0));
        if (armed && !told++) printf("parked\n");
        switch (input()) {
        case 'g': go = 1; break;
        case 'r': released = 1; break;
        }
        usleep(2000);
    }
}
"""


def test_a_code_pointer_kept_only_in_a_red_zone_keeps_its_code(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """The thread is stopped in park() (original code), which keeps the address
    in value() v2 it goes on at only in its red zone (as does the stale word of
    the call it came from): the 128 bytes below the stack pointer are searched,
    so v2 stays until park() has jumped back."""
    target, source = start_value_program(
        tmp_path, spawn, RED_ZONE, stdin_pipe=True, link_flags=("-pthread",)
    )
    reload_value(target, source, 2)
    held = newest_code(target)
    target.write(b"g")  # the worker enters value() v2, which goes to park()
    target.wait_for(r"^parked$")
    supersede(target, source, 3, 6)  # v2 would be reused by v4 and v6
    assert intact(target, held)
    target.write(b"r")  # park() jumps back into v2, which returns 1 + 2
    target.wait_for(r"^worker 3$")
    target.wait_for(r"^value 6$", after=target.mark())
    assert target.alive()


CALLBACKS = (
    r"""
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static int compare(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }
static void *spin(void *arg) {  /* runs for good in the version that started it */
    for (;;) {
        int numbers[] = {3, 1, 2};
        qsort(numbers, 3, sizeof *numbers, compare);
        printf("thread %d %d\n", numbers[0], 1);
        usleep(2000);
    }
    return arg;
}
__attribute__((noinline)) int value(int x) {
    pthread_t thread;
    if (x) pthread_create(&thread, NULL, spin, NULL);
    return x + 1;
}
"""
    + HAS_INPUT
    + r"""
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) {
        printf("value %d\n", value(0));
        if (has_input()) printf("started %d\n", value(1));
        usleep(2000);
    }
}
"""
)


def test_a_thread_started_on_a_function_of_new_code_keeps_running_it(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """``pthread_create`` and ``qsort`` take the address of a static function of the
    reloaded file: its original entry (which leads to the newest version); the
    thread that started in v2's spin() loops there, and its frames keep v2."""
    target, source = start_value_program(
        tmp_path, spawn, CALLBACKS, stdin_pipe=True, link_flags=("-pthread",)
    )
    text = source.read_text()
    source.write_text(text.replace("numbers[0], 1)", "numbers[0], 2)"))
    reload_value(target, source, 2)
    held = newest_code(target)
    target.write(b"s")  # value() v2 starts spin() v2, which sorts with compare() v2
    target.wait_for(r"^started 3$")
    for n in range(3, 7):
        text = source.read_text()
        source.write_text(text.replace(f"numbers[0], {n - 1})", f"numbers[0], {n})"))
        reload_value(target, source, n)
    assert intact(target, held)
    mark = target.mark()
    for _ in range(3):
        target.wait_for(r"^thread 1 2$", after=target.mark())
    assert not any(
        line.startswith("thread") and line != "thread 1 2" for line in target.lines[mark:]
    )


BIG_HEAP = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline)) int value(int x) { return x + 1; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    size_t size = 24 << 20;  /* more resident memory than the reclaim check copies */
    char *heap = malloc(size);
    memset(heap, 1, size);
    for (;;) { printf("value %d\n", value(0)); usleep(2000); }
}
"""


def test_a_program_with_more_memory_than_the_check_copies_keeps_superseded_code(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start_value_program(tmp_path, spawn, BIG_HEAP)
    supersede(target, source, 2, 5)
    assert [b.reclaimed for b in load_journal(target.pid).blocks] == [False] * 4

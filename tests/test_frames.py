"""Running frames move into the new code: loops that never return see their edits.

Each test compiles a real program whose loop never returns, edits code that is
inlined into that loop, reloads it while the program runs, and checks both the
report (``frame-moved``, or why the frame stays) and the program's output: the
new behaviour shows and its state (counters) carried on; in refused cases the
old code keeps running untouched.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import relive
from relive.events import Event, FrameMoved
from support import (
    LOOP_OVER_ENTRY_MAIN,
    LOOP_OVER_ENTRY_WORKER,
    SpawnFactory,
    Target,
    assert_untouched,
    compile_c,
    edit,
    reload,
    run_cli,
    start_remembered,
)

MAIN_LOOP = r"""
#include <stdio.h>
#include <unistd.h>
static inline __attribute__((always_inline)) int face(void) { return 3; }
static inline __attribute__((always_inline)) const char *word(void) { return "old"; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    long i = 0;
    for (;;) { printf("tick %ld face %d word %s\n", i++, face(), word()); usleep(20000); }
}
"""

BUILDS = [
    ("gcc", "-O0"),
    ("gcc", "-O1"),
    ("gcc", "-O2"),
    ("gcc", "-O3"),
    ("clang", "-O0"),
    ("clang", "-O2"),
]
EDITS = {
    "constant": ("return 3;", "return 21;", r"face 21 word old"),
    "string": ('"old"', '"new"', r"face 3 word new"),
}
#: Edits that change the loop's shape: its frame stays (a call added, a local added).
SHAPE_EDITS = {
    "call": ("return 3;", "return 3 + (getpid() > 0 ? 18 : 0);"),
    "local": ("long i = 0;", "long i = 0; volatile long pad = 7; (void)pad;"),
}


def _build(tmp_path: Path, source: str, compiler: str, level: str, *extra: str) -> Path:
    flags = ["-g", level, *extra]
    if compiler == "clang":
        flags.append("-grecord-command-line")  # so relive recompiles at the same level
    return compile_c(tmp_path, source, flags=tuple(flags), compiler=compiler)


def _moves(events: list[Event], function: str) -> list[FrameMoved]:
    return [e for e in events if isinstance(e, FrameMoved) and e.function == function]


def _stays(events: list[Event], function: str) -> list[str]:
    return [
        str(e) for e in events if e.kind == "frame-stays" and getattr(e, "function", "") == function
    ]


def _tick(target: Target, pattern: str) -> int:
    return int(target.wait_for(rf"tick (\d+) {pattern}").group(1))


@pytest.mark.parametrize(("compiler", "level"), BUILDS, ids=lambda v: v)
@pytest.mark.parametrize("change", sorted(EDITS))
def test_an_edit_inlined_into_main_shows_at_once(
    tmp_path: Path, spawn: SpawnFactory, compiler: str, level: str, change: str
) -> None:
    exe = _build(tmp_path, MAIN_LOOP, compiler, level)
    target = spawn([exe])
    before = _tick(target, "face 3 word old")
    old, new, shown = EDITS[change]
    edit(tmp_path / "prog.c", old, new)
    events = reload(target.pid, tmp_path / "prog.c")
    moved = _moves(events, "main")
    assert len(moved) == 1 and moved[0].tid == target.pid, [str(e) for e in events]
    assert not [e for e in events if e.kind == "active"]
    after = _tick(target, shown)
    assert after > before  # the loop's counter carried on: same frame, new code


@pytest.mark.parametrize(
    ("compiler", "level", "change"),
    [
        ("gcc", "-O0", "call"),
        ("clang", "-O0", "call"),
        ("gcc", "-O2", "call"),
        ("gcc", "-O2", "local"),
        ("clang", "-O2", "call"),
        ("clang", "-O2", "local"),
    ],
    ids=lambda v: v,
)
def test_a_loop_whose_frame_changed_stays_in_the_old_code_and_says_why(
    tmp_path: Path, spawn: SpawnFactory, compiler: str, level: str, change: str
) -> None:
    exe = _build(tmp_path, MAIN_LOOP, compiler, level)
    target = spawn([exe])
    _tick(target, "face 3 word old")
    old, new = SHAPE_EDITS[change]
    edit(tmp_path / "prog.c", old, new)
    events = reload(target.pid, tmp_path / "prog.c")
    assert not _moves(events, "main")
    (stays,) = _stays(events, "main")
    assert re.match(
        rf"main is running on thread {target.pid} and its frame cannot move to the new code: "
        r"(frame size \d+ -> \d+ bytes \(at the call to \w+\)"
        r"|.* carries a value into the rest of the function at the call to \w+, .*"
        r"|its new code has another shape .*)\. "
        r"The new code applies from its next call; .*noinline.*restart",
        stays,
    ), stays
    # The old code runs on, untouched: more ticks, still the old value.
    mark = target.mark()
    first = _tick(target, "face 3 word old")
    for _ in range(5):
        later = int(target.wait_for(r"tick (\d+) face 3 word old", after=mark).group(1))
        mark = target.mark()
    assert later > first
    assert target.proc.poll() is None


def test_the_issues_refusal_names_the_frame_size_and_the_call(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = _build(tmp_path, MAIN_LOOP, "gcc", "-O0")
    target = spawn([exe])
    _tick(target, "face 3 word old")
    edit(tmp_path / "prog.c", *SHAPE_EDITS["call"])
    (stays,) = _stays(reload(target.pid, tmp_path / "prog.c"), "main")
    assert re.search(r": frame size 32 -> 48 bytes \(at the call to usleep\)\. ", stays), stays


O0_LOOP = r"""
#include <stdio.h>
#include <unistd.h>
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    long i = 0;
    for (;;) {
        printf("tick %ld\n", i++);
        usleep(20000);
    }
}
"""


CALL_ADDED = ("usleep(20000);", 'printf("then %ld\\n", i * 10);\n        usleep(20000);')
LOCAL_ADDED = (
    "usleep(20000);",
    'long twice = i * 2;\n        printf("then %ld\\n", twice * 5);\n        usleep(20000);',
)


@pytest.mark.parametrize(
    ("compiler", "change"),
    [("gcc", CALL_ADDED), ("clang", CALL_ADDED), ("gcc", LOCAL_ADDED)],
    ids=["gcc-call", "clang-call", "gcc-local"],
)
def test_an_O0_loop_moves_at_its_matching_call_site(
    tmp_path: Path, spawn: SpawnFactory, compiler: str, change: tuple[str, str]
) -> None:
    exe = _build(tmp_path, O0_LOOP, compiler, "-O0")
    target = spawn([exe])
    before = int(target.wait_for(r"tick (\d+)").group(1))
    edit(tmp_path / "prog.c", *change)
    events = reload(target.pid, tmp_path / "prog.c")
    moved = _moves(events, "main")
    assert [m.how for m in moved] == ["matching call site"], [str(e) for e in events]
    value = int(target.wait_for(r"then (\d+)").group(1))
    assert value > before * 10  # computed from the loop's own counter, which carried on


def test_an_O0_frame_that_grew_stays(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = _build(tmp_path, O0_LOOP, "clang", "-O0")
    target = spawn([exe])
    target.wait_for(r"tick \d+")
    edit(tmp_path / "prog.c", *LOCAL_ADDED)  # clang gives the new local a slot of its own
    events = reload(target.pid, tmp_path / "prog.c")
    (stays,) = _stays(events, "main")
    assert re.search(r": frame size (\d+) -> (\d+) bytes \(at the call to \w+\)\. ", stays), stays
    mark = target.mark()
    for _ in range(3):
        target.wait_for(r"tick \d+", after=mark)
        mark = target.mark()
    assert not any(line.startswith("then") for line in target.lines)


def test_no_move_keeps_the_frame_in_the_old_code(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = _build(tmp_path, MAIN_LOOP, "gcc", "-O1")
    target = spawn([exe])
    _tick(target, "face 3 word old")
    edit(tmp_path / "prog.c", "return 3;", "return 21;")
    events = reload(target.pid, tmp_path / "prog.c", move_frames=False)
    assert not _moves(events, "main")
    assert any(e.kind == "active" and getattr(e, "name", "") == "main" for e in events)
    mark = target.mark()
    for _ in range(5):
        target.wait_for(r"tick \d+ face 3 word old", after=mark)
        mark = target.mark()


WORKERS = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
static inline __attribute__((always_inline)) int face(void) { return 100; }
static void *work(void *arg) {
    long id = (long)arg, n = 0;
    for (;;) { printf("worker %ld n %ld face %d\n", id, n++, face()); usleep(15000); }
    return NULL;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t t[THREADS];
    for (long k = 0; k < THREADS; k++) pthread_create(&t[k], NULL, work, (void *)k);
    for (;;) pause();
}
"""


def test_a_worker_threads_loop_moves(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = _build(tmp_path, WORKERS.replace("THREADS", "1"), "gcc", "-O2", "-pthread")
    target = spawn([exe])
    before = int(target.wait_for(r"worker 0 n (\d+) face 100").group(1))
    edit(tmp_path / "prog.c", "return 100;", "return 200;")
    events = reload(target.pid, tmp_path / "prog.c")
    moved = _moves(events, "work")
    assert len(moved) == 1 and moved[0].tid != target.pid
    after = int(target.wait_for(r"worker 0 n (\d+) face 200").group(1))
    assert after > before


def test_four_threads_in_the_same_loop_through_twenty_reloads(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = _build(tmp_path, WORKERS.replace("THREADS", "4"), "gcc", "-O1", "-pthread")
    target = spawn([exe])
    counts = {k: int(target.wait_for(rf"worker {k} n (\d+) face 100").group(1)) for k in range(4)}
    value = 100
    for round_ in range(20):
        new = 1000 + round_
        edit(tmp_path / "prog.c", f"return {value};", f"return {new};")
        value = new
        events = reload(target.pid, tmp_path / "prog.c")
        moved = _moves(events, "work")
        assert len({m.tid for m in moved}) == 4, [str(e) for e in events]
        mark = target.mark()
        for k in range(4):
            n = int(target.wait_for(rf"worker {k} n (\d+) face {new}", after=mark).group(1))
            assert n > counts[k]  # each thread's own counter carried on
            counts[k] = n


READER = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static inline __attribute__((always_inline)) int face(void) { return 5; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    char line[64];
    long n = 0;
    printf("ready\n");
    for (;;) {
        ssize_t got = read(0, line, sizeof line - 1);
        if (got <= 0) { printf("read returned %zd\n", got); return 1; }
        line[got] = 0;
        printf("got %ld %s face %d\n", n++, strtok(line, "\n"), face());
    }
}
"""

EPOLLER = r"""
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>
static inline __attribute__((always_inline)) int face(void) { return 5; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = 0}, out;
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    char line[64];
    long n = 0;
    printf("ready\n");
    for (;;) {
        int k = epoll_wait(ep, &out, 1, -1);
        if (k != 1) { printf("epoll_wait returned %d\n", k); return 1; }
        ssize_t got = read(0, line, sizeof line - 1);
        if (got <= 0) return 1;
        line[got] = 0;
        printf("got %ld %s face %d\n", n++, strtok(line, "\n"), face());
    }
}
"""


@pytest.mark.parametrize("source", [READER, EPOLLER], ids=["read", "epoll_wait"])
def test_a_loop_blocked_in_a_system_call_moves(
    tmp_path: Path, spawn: SpawnFactory, source: str
) -> None:
    exe = _build(tmp_path, source, "gcc", "-O2")
    target = spawn([exe], stdin_pipe=True)
    target.wait_for("ready")
    target.write(b"one\n")
    target.wait_for(r"got 0 one face 5")
    edit(tmp_path / "prog.c", "return 5;", "return 6;")
    events = reload(target.pid, tmp_path / "prog.c")
    assert len(_moves(events, "main")) == 1, [str(e) for e in events]
    target.write(b"two\n")
    target.wait_for(r"got 1 two face 6")  # no EINTR, no lost line, the count went on
    assert not any("returned" in line for line in target.lines)


RECURSIVE = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static volatile sig_atomic_t stop;
static void on_usr1(int sig) { (void)sig; stop = 1; }
__attribute__((noinline)) void descend(int depth) {
    if (depth == 0) {
        while (!stop) { printf("deep tag %d\n", 1); usleep(15000); }
        return;
    }
    descend(depth - 1);
    printf("up %d tag %d\n", depth, 1);
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGUSR1, on_usr1);
    descend(4);
    printf("done\n");
    for (;;) pause();
}
"""


def test_every_frame_of_a_recursive_function_moves(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = _build(tmp_path, RECURSIVE, "gcc", "-O0")
    target = spawn([exe])
    target.wait_for("deep tag 1")
    edit(tmp_path / "prog.c", 'printf("deep tag %d\\n", 1);', 'printf("deep tag %d\\n", 2);')
    edit(
        tmp_path / "prog.c",
        'printf("up %d tag %d\\n", depth, 1);',
        'printf("up %d tag %d\\n", depth, 2);',
    )
    events = reload(target.pid, tmp_path / "prog.c")
    assert len(_moves(events, "descend")) == 5, [str(e) for e in events]  # depth 4 .. 0
    target.wait_for("deep tag 2")
    os.kill(target.pid, signal.SIGUSR1)
    for depth in (1, 2, 3, 4):
        target.wait_for(rf"up {depth} tag 2")
    target.wait_for("done")
    assert not any(re.match(r"up \d tag 1", line) for line in target.lines)


HANDLER = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
static inline __attribute__((always_inline)) int face(void) { return 3; }
static void on_usr1(int sig) {
    (void)sig;
    for (int k = 0; k < 40; k++) { write(1, "in handler\n", 11); usleep(20000); }
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGUSR1, on_usr1);
    long i = 0;
    for (;;) { printf("tick %ld face %d\n", i++, face()); usleep(20000); }
}
"""


def test_a_frame_below_a_signal_handler_moves(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = _build(tmp_path, HANDLER, "gcc", "-O2")
    target = spawn([exe])
    before = _tick(target, "face 3")
    os.kill(target.pid, signal.SIGUSR1)
    target.wait_for("in handler")
    edit(tmp_path / "prog.c", "return 3;", "return 9;")
    events = reload(target.pid, tmp_path / "prog.c")
    assert len(_moves(events, "main")) == 1, [str(e) for e in events]
    after = _tick(target, "face 9")  # once the handler returned, main runs the new code
    assert after > before


def test_undo_moves_a_moved_frame_back(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = _build(tmp_path, MAIN_LOOP, "gcc", "-O1")
    target = spawn([exe])
    _tick(target, "face 3 word old")
    edit(tmp_path / "prog.c", "return 3;", "return 21;")
    assert _moves(reload(target.pid, tmp_path / "prog.c"), "main")
    before = _tick(target, "face 21 word old")
    events: list[Event] = []
    relive.attach(target.pid, on_event=events.append).undo()
    back = _moves(events, "main")
    assert [m.how for m in back] == ["same shape, back to the original code"], events
    assert not [e for e in events if e.kind == "frame-stays-new"]
    after = _tick(target, "face 3 word old")  # the original code, the same counter
    assert after > before


def test_undo_says_a_frame_that_cannot_move_back_stays(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = _build(tmp_path, O0_LOOP, "gcc", "-O0")
    target = spawn([exe])
    target.wait_for(r"tick \d+")
    edit(tmp_path / "prog.c", *CALL_ADDED)
    assert _moves(reload(target.pid, tmp_path / "prog.c"), "main")
    target.wait_for(r"then \d+")
    events: list[Event] = []
    relive.attach(target.pid, on_event=events.append).undo()
    said = [str(e) for e in events if e.kind == "frame-stays-new"]
    assert said == [
        f"main on thread {target.pid} keeps running its reloaded code until that call returns "
        "(its frame cannot move back to the original code)"
    ]
    mark = target.mark()
    for _ in range(3):  # as promised: main never returns, so it runs the reloaded code
        target.wait_for(r"then \d+", after=mark)
        mark = target.mark()


def test_the_cli_prints_one_line_per_moved_frame(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = _build(tmp_path, MAIN_LOOP, "gcc", "-O2")
    target = spawn([exe])
    _tick(target, "face 3 word old")
    edit(tmp_path / "prog.c", "return 3;", "return 21;")
    text = subprocess.run(
        [sys.executable, "-m", "relive", "reload", "-p", str(target.pid), str(tmp_path / "prog.c")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert re.search(
        rf"^moved main on thread {target.pid} into the new code: 0x[0-9a-f]+ -> 0x[0-9a-f]+ "
        r"\(same shape\)$",
        text,
        re.M,
    ), text
    edit(tmp_path / "prog.c", "return 21;", "return 22;")
    lines = subprocess.run(
        [
            *(sys.executable, "-m", "relive", "--json", "reload"),
            "-p",
            str(target.pid),
            str(tmp_path / "prog.c"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    moved = [json.loads(line) for line in lines if '"frame-moved"' in line]
    assert len(moved) == 1
    assert moved[0]["tid"] == target.pid and moved[0]["function"] == "main"
    assert moved[0]["how"] == "same shape" and moved[0]["old"] != moved[0]["new"]
    _tick(target, "face 22 word old")


@pytest.mark.parametrize(
    ("source", "flags", "function"),
    [
        (LOOP_OVER_ENTRY_MAIN, ("-g", "-O0"), "main"),
        (LOOP_OVER_ENTRY_WORKER, ("-g", "-O1", "-pthread"), "worker"),
    ],
    ids=["main-O0", "worker-O1"],
)
def test_moving_the_frame_is_the_way_past_a_loop_over_the_entry(
    tmp_path: Path, spawn: SpawnFactory, source: str, flags: tuple[str, ...], function: str
) -> None:
    exe = compile_c(
        tmp_path,
        source.replace('printf("value', 'printf("v%d value').replace(
            'value %d\\n", table[0]', 'value %d\\n", 1, table[0]'
        ),
        flags=flags,
    )
    target = spawn([exe])
    target.wait_for(r"^v1 value 1$")
    edit(tmp_path / "prog.c", "usleep(20000)", "usleep(10000)")
    edit(tmp_path / "prog.c", 'value %d\\n", 1,', 'value %d\\n", 2,')
    events = reload(target.pid, tmp_path / "prog.c")
    assert len(_moves(events, function)) == 1, [str(e) for e in events]
    target.wait_for(r"^v2 value 1$")
    mark = target.mark()
    for _ in range(5):  # the loop runs on in the new code; its old head was never re-entered
        target.wait_for(r"^v2 value 1$", after=mark)
        mark = target.mark()
    assert target.alive()


def test_a_loop_over_the_entry_whose_shape_changed_is_refused_untouched(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    target = start_remembered(tmp_path, spawn, LOOP_OVER_ENTRY_MAIN, flags=("-g", "-O0"))
    # A local array: the frame grows, so it cannot move at the call either.
    edit(
        tmp_path / "prog.c",
        "usleep(20000);",
        "usleep(20000); char pad[64]; pad[counter % 64] = 1; counter += pad[0];",
    )
    code, err = run_cli(capsys, "reload", "-p", str(target.pid), str(tmp_path / "prog.c"))
    assert code == 9, err
    assert "loop jumps back into the first bytes" in err
    assert_untouched(target)


def test_a_frame_left_in_an_earlier_reload_moves_later(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = _build(tmp_path, MAIN_LOOP, "gcc", "-O1")
    target = spawn([exe])
    _tick(target, "face 3 word old")
    value = 3
    for round_, move in enumerate([False, True, False, False, True]):
        new = 40 + round_
        edit(tmp_path / "prog.c", f"return {value};", f"return {new};")
        events = reload(target.pid, tmp_path / "prog.c", move_frames=move)
        # Without moving, main stays where it is (the original code, then an earlier
        # reload's code that no entry jumps to any more); moving finds it there.
        assert len(_moves(events, "main")) == (1 if move else 0), [str(e) for e in events]
        if move:
            _tick(target, f"face {new} word old")
        value = new
    assert target.alive()


INLINED_HELPER = r"""
#include <stdio.h>
#include <unistd.h>
long total;
void face(long i) { total += i; printf("face %ld total %ld\n", i, total); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (long i = 0;; i++) { face(i); usleep(20000); }
}
"""


def test_the_refusal_names_the_inlined_function_and_the_way_out(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = _build(tmp_path, INLINED_HELPER, "gcc", "-O2")
    target = spawn([exe])
    target.wait_for(r"face \d+ total")
    edit(tmp_path / "prog.c", "total += i;", "total += i; if (i % 2) total--;")
    events = reload(target.pid, tmp_path / "prog.c")
    (stays,) = _stays(events, "main")
    assert stays.startswith(
        f"face() is inlined into main, which is running on thread {target.pid}; its frame "
        "cannot move to the new code ("
    ), stays
    assert stays.endswith(
        "The change applies from main's next call; if it never returns, mark face "
        "__attribute__((noinline)), or restart"
    ), stays
    # the old loop runs on: its inlined copy of face() keeps the old arithmetic
    first = int(target.wait_for(r"face (\d+) total").group(1))
    later = int(target.wait_for(r"face (\d+) total").group(1))
    assert later == first + 1

"""End-to-end reloads: real C programs compiled now, running, reloaded, observed."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

import relive
from support import SpawnFactory, compile_c, edit, kinds, reload

LOOP_MAIN = r"""
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { tick(); usleep(20000); }
}
"""


STATE_PROG = (
    r"""
#include <stdio.h>
#include <unistd.h>
int counter;                       /* global */
static int file_static = 1000;     /* file static */
int value(void) {
    static int local = 50;         /* function-local static */
    local++;
    return 1;
}
__attribute__((noinline)) void tick(void) {
    counter++;
    file_static++;
    printf("value=%d counter=%d static=%d\n", value(), counter, file_static);
}
"""
    + LOOP_MAIN
)


@pytest.mark.parametrize("compiler", ["gcc", "clang"])
def test_globals_and_statics_keep_their_values(
    tmp_path: Path, spawn: SpawnFactory, compiler: str
) -> None:
    exe = compile_c(tmp_path, STATE_PROG, compiler=compiler)
    target = spawn([exe])
    first = target.wait_for(r"value=1 counter=(\d+) static=(\d+)")
    edit(tmp_path / "prog.c", "local++;\n    return 1;", "local++;\n    return local;")
    events = reload(target.pid, tmp_path / "prog.c")
    assert kinds(events)["redirected"] == ["value"]
    assert "tick" in kinds(events)["unchanged"]
    match = target.wait_for(r"value=(\d+) counter=(\d+) static=(\d+)")
    while match.group(1) == "1":
        match = target.wait_for(r"value=(\d+) counter=(\d+) static=(\d+)")
    counter = int(match.group(2))
    assert counter > int(first.group(1))
    # the local static started at 50 and was incremented once per call: kept, not reset
    assert int(match.group(1)) == 50 + counter
    assert int(match.group(3)) == 1000 + counter


STRINGS_PROG = (
    r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static int n;
__attribute__((noinline)) void tick(void) {
    n++;
    printf("old text %d\n", n);
}
"""
    + LOOP_MAIN
)


def test_new_strings_libc_calls_new_functions_and_globals(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, STRINGS_PROG)
    target = spawn([exe])
    target.wait_for(r"old text \d+")
    source = tmp_path / "prog.c"
    edit(
        source,
        "static int n;",
        "static int n;\nint added_global = 7;\nstatic int twice(int x) { return 2 * x; }\n",
    )
    edit(
        source,
        'printf("old text %d\\n", n);',
        'char buf[64]; char *heap = malloc(32); strcpy(heap, "heap");\n'
        "    added_global++;\n"
        '    snprintf(buf, sizeof buf, "new text %d twice=%d", n, twice(n));\n'
        '    printf("%s len=%zu %s g=%d\\n", buf, strlen(buf), heap, added_global);\n'
        "    free(heap);",
    )
    events = reload(target.pid, source)
    assert set(kinds(events)["new"]) == {"twice"}
    assert kinds(events)["redirected"] == ["tick"]
    match = target.wait_for(r"new text (\d+) twice=(\d+) len=(\d+) heap g=(\d+)")
    n = int(match.group(1))
    assert int(match.group(2)) == 2 * n
    assert int(match.group(3)) == len(f"new text {n} twice={2 * n}")
    g = int(match.group(4))
    # a second reload keeps the global the first one created
    edit(source, '"new text %d twice=%d"', '"newer text %d twice=%d"')
    reload(target.pid, source)
    match = target.wait_for(r"newer text \d+ twice=\d+ len=\d+ heap g=(\d+)")
    assert int(match.group(1)) > g


SEED_MAIN = r"""
#include <stdio.h>
#include <unistd.h>
int f1(void);
static int (*hot_f1)(void) = f1;
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("f1() = %d\n", hot_f1()); usleep(20000); }
}
"""


def test_seed_scenario_prebuilt_object(tmp_path: Path, spawn: SpawnFactory) -> None:
    """The proof of concept's workflow: f1 from a separately built fun.o replaces f1."""
    exe = compile_c(tmp_path, SEED_MAIN, extra_sources={"fun.c": "int f1(void) { return 1; }\n"})
    target = spawn([exe])
    target.wait_for(r"f1\(\) = 1")
    (tmp_path / "fun.c").write_text("int f1(void) { return 42; }\n")
    subprocess.run(["gcc", "-g", "-O0", "-c", "fun.c", "-o", "fun.o"], cwd=tmp_path, check=True)
    events = reload(target.pid, tmp_path / "fun.o")
    assert kinds(events)["redirected"] == ["f1"]
    target.wait_for(r"f1\(\) = 42")


TABLE_PROG = (
    r"""
#include <stdio.h>
#include <unistd.h>
static int add(int a, int b) { return a + b; }
static int mul(int a, int b) { return a * b; }
static int (*const ops[])(int, int) = { add, mul };
static int (*stored)(int, int);
__attribute__((noinline)) void tick(void) {
    if (!stored) stored = mul;
    printf("ops %d %d stored %d\n", ops[0](3, 4), ops[1](3, 4), stored(5, 6));
}
"""
    + LOOP_MAIN
)


def test_function_pointer_tables_reach_new_code(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, TABLE_PROG)
    target = spawn([exe])
    target.wait_for(r"ops 7 12 stored 30")
    edit(tmp_path / "prog.c", "return a * b;", "return a * b + 1000;")
    reload(target.pid, tmp_path / "prog.c")
    target.wait_for(r"ops 7 1012 stored 1030")


INLINE_PROG = (
    r"""
#include <stdio.h>
#include <unistd.h>
static inline int helper(int x) { return x + 1; }
int __attribute__((noinline)) caller(int x) { return helper(x) * 10; }
volatile int one = 1;  /* keeps gcc from hoisting the pure call out of main's loop */
__attribute__((noinline)) void tick(void) { printf("caller %d\n", caller(one)); }
"""
    + LOOP_MAIN
)


def test_inlined_helper_changes_its_caller(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, INLINE_PROG, flags=("-g", "-O2"))
    target = spawn([exe])
    target.wait_for(r"caller 20")
    edit(tmp_path / "prog.c", "return x + 1;", "return x + 2;")
    events = reload(target.pid, tmp_path / "prog.c")
    assert "caller" in kinds(events)["redirected"]
    target.wait_for(r"caller 30")


RECURSION_PROG = (
    r"""
#include <stdio.h>
#include <unistd.h>
int fact(int n) { return n <= 1 ? 1 : n * fact(n - 1); }
__attribute__((noinline)) void tick(void) { printf("fact %d\n", fact(5)); }
"""
    + LOOP_MAIN
)


def test_recursion(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, RECURSION_PROG)
    target = spawn([exe])
    target.wait_for(r"fact 120")
    edit(tmp_path / "prog.c", "return n <= 1 ? 1 :", "return n <= 1 ? 2 :")
    reload(target.pid, tmp_path / "prog.c")
    target.wait_for(r"fact 240")


@pytest.mark.parametrize(
    ("flags", "compiler"),
    [
        (("-g", "-O0", "-fno-pie", "-no-pie"), "gcc"),
        (("-g", "-O2", "-fcf-protection=full"), "gcc"),
        (("-g", "-O1"), "clang"),
        (("-g", "-O2", "-fPIC", "-pie"), "gcc"),
    ],
    ids=["non-pie", "cf-protection", "clang", "fpic"],
)
def test_build_variants(
    tmp_path: Path, spawn: SpawnFactory, flags: tuple[str, ...], compiler: str
) -> None:
    exe = compile_c(tmp_path, STATE_PROG, flags=flags, compiler=compiler)
    target = spawn([exe])
    target.wait_for(r"value=1 counter=\d+")
    edit(tmp_path / "prog.c", "local++;\n    return 1;", "local++;\n    return -counter;")
    reload(target.pid, tmp_path / "prog.c")
    match = target.wait_for(r"value=(-\d+) counter=(\d+)")
    assert match.group(1) == f"-{match.group(2)}"


def test_undo_and_status(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, RECURSION_PROG)
    target = spawn([exe])
    target.wait_for(r"fact 120")
    session = relive.attach(target.pid)
    assert session.status() == []
    edit(tmp_path / "prog.c", "return n <= 1 ? 1 :", "return n <= 1 ? 3 :")
    session.reload([tmp_path / "prog.c"])
    target.wait_for(r"fact 360")
    edit(tmp_path / "prog.c", "return n <= 1 ? 3 :", "return n <= 1 ? 4 :")
    session.reload([tmp_path / "prog.c"])
    target.wait_for(r"fact 480")
    # a fresh session (as a new relive process would) sees the record
    [row] = relive.attach(target.pid).status()
    assert (row.name, row.count, row.active) == ("fact", 2, True)
    assert row.source == str(tmp_path / "prog.c")
    assert relive.attach(target.pid).undo() == ["fact"]
    target.wait_for(r"fact 120")
    assert relive.attach(target.pid).status() == []


def test_dry_run_writes_nothing(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, RECURSION_PROG)
    target = spawn([exe])
    target.wait_for(r"fact 120")
    edit(tmp_path / "prog.c", "return n <= 1 ? 1 :", "return n <= 1 ? 2 :")
    events = reload(target.pid, tmp_path / "prog.c", dry_run=True)
    assert kinds(events)["redirected"] == ["fact"]
    mark = target.mark()
    target.wait_for(r"fact 120", after=mark)
    target.wait_for(r"fact 120")
    assert not any(re.search(r"fact 240", line) for line in target.lines)
    assert relive.attach(target.pid).status() == []


def test_a_tiny_new_function_can_be_reloaded_again(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, RECURSION_PROG, flags=("-g", "-O1"))
    target = spawn([exe])
    target.wait_for(r"fact 120")
    source = tmp_path / "prog.c"
    tiny = "__attribute__((noinline)) static int base(int x) { return x; }\n"
    edit(source, "int fact(int n)", tiny + "int fact(int n)")
    edit(source, "return n <= 1 ? 1 :", "return n <= 1 ? base(n + 1) :")
    reload(target.pid, source)
    target.wait_for(r"fact 240")
    # base() is 3 bytes (mov %edi,%eax; ret) in relive's memory: still room for a jump
    edit(source, "{ return x; }", "{ return x + 1; }")
    events = reload(target.pid, source)
    assert kinds(events)["redirected"] == ["base"]
    target.wait_for(r"fact 360")


VDSO_PROG = r"""
#include <stdio.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
__attribute__((noinline)) void tick(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    printf("old %d\n", tv.tv_sec > 0);
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { tick(); usleep(20000); }
}
"""


def test_ifunc_resolved_into_the_vdso(tmp_path: Path, spawn: SpawnFactory) -> None:
    """glibc's gettimeofday/time are IFUNCs whose implementation is in the vDSO."""
    exe = compile_c(tmp_path, VDSO_PROG)
    target = spawn([exe])
    target.wait_for(r"old 1")
    edit(
        tmp_path / "prog.c",
        'printf("old %d\\n", tv.tv_sec > 0);',
        'printf("new %d %d\\n", tv.tv_sec > 0, time(NULL) > 0);',
    )
    reload(target.pid, tmp_path / "prog.c")
    target.wait_for(r"new 1 1")


SWITCH_PROG = r"""
#include <stdio.h>
#include <unistd.h>
int a, b, c, d, e, f;
__attribute__((noinline)) void bump(int k) {
    switch (k) {  /* different side effects per case: a jump table */
    case 0: a += 3; break; case 1: b *= 5; break; case 2: c -= 7; a++; break;
    case 3: d ^= 9; b--; break; case 4: e += a; break; case 5: f = b + c; break;
    case 6: a = d - e; break;
    }
}
__attribute__((noinline)) const char *name(int k) {
    switch (k) {  /* gcc turns this into a table of string pointers (CSWTCH) */
    case 0: return "zero"; case 1: return "one"; case 2: return "two";
    case 3: return "three"; case 4: return "four"; default: return "many";
    }
}
volatile int two = 2;
__attribute__((noinline)) int tag(void) { return 1; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 0;; i++) { bump(i % 7); printf("%s tag %d\n", name(two), tag()); usleep(20000); }
}
"""


def test_switch_tables_are_compared_not_assumed_changed(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, SWITCH_PROG, flags=("-g", "-O2"))
    target = spawn([exe])
    target.wait_for(r"two tag 1")
    source = tmp_path / "prog.c"
    edit(source, "return 1; }", "return 2; }")
    events = reload(target.pid, source)
    assert kinds(events)["redirected"] == ["tag"]  # bump and name are unchanged
    target.wait_for(r"two tag 2")
    edit(source, 'case 2: return "two";', 'case 2: return "TWO";')
    events = reload(target.pid, source)
    assert kinds(events)["redirected"] == ["name"]  # a string in its table changed
    target.wait_for(r"TWO tag 2")


def test_linker_relaxed_got_loads_compare_as_unchanged(tmp_path: Path, spawn: SpawnFactory) -> None:
    """-fPIC code loads globals through the GOT; ld relaxes that to a direct lea."""
    exe = compile_c(tmp_path, STATE_PROG, flags=("-g", "-O2", "-fPIC", "-pie"))
    target = spawn([exe])
    target.wait_for(r"value=1 counter=\d+")
    edit(tmp_path / "prog.c", "local++;\n    return 1;", "local++;\n    return 7;")
    events = reload(target.pid, tmp_path / "prog.c")
    assert kinds(events)["redirected"] == ["value"]
    assert "tick" in kinds(events)["unchanged"]  # it reads counter through the (relaxed) GOT
    target.wait_for(r"value=7 counter=\d+")

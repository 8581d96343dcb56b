"""What optimising compilers do: LTO, clones, cold parts, loops that never return,
stack protectors, TLS in libraries, dlopen, and the program's red zone."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import relive
from relive.patch.journal import load_journal
from support import SpawnFactory, Target, compile_c, edit, kinds, reload

LTO_MAIN = r"""
#include <stdio.h>
#include <unistd.h>
static int hits;
int other(int);
__attribute__((noinline)) static int scale(int x) { hits++; return x * 3; }
__attribute__((noinline)) int value(int x) { return scale(x) + other(x); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    volatile int one = 1;
    for (;;) { printf("value %d hits %d\n", value(one), hits); usleep(20000); }
}
"""
LTO_OTHER = r"""
static int private_counter;
__attribute__((noinline)) int other(int x) {
    private_counter++;
    return x + 100 + 0 * private_counter;
}
"""


def test_lto_program_is_recompiled_without_lto_and_keeps_its_statics(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(
        tmp_path, LTO_MAIN, flags=("-g", "-O2", "-flto"), extra_sources={"other.c": LTO_OTHER}
    )
    target = spawn([exe])
    target.wait_for(r"value 104 hits \d+")
    edit(tmp_path / "prog.c", "return x * 3;", "return x * 5;")
    events = reload(target.pid, tmp_path / "prog.c")
    assert any("recompiling it without LTO" in str(e) for e in events)
    assert "scale" in kinds(events)["redirected"]
    # main never returns: its frame moved, or relive says it stays in the old code
    said = [str(e) for e in events if e.kind in ("active", "frame-stays", "frame-moved")]
    assert any("main" in line for line in said), said
    hits = int(target.wait_for(r"value 106 hits (\d+)").group(1))
    edit(tmp_path / "other.c", "return x + 100", "return x + 200")
    reload(target.pid, tmp_path / "other.c")
    later = int(target.wait_for(r"value 206 hits (\d+)").group(1))
    assert later > hits  # the LTO-internalised static kept counting


LOOP_PROG = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int step(int n) { return n + 1; }
__attribute__((noinline)) void run_forever(void) {
    int n = 0;
    for (;;) { n = step(n); printf("n %d tag A\n", n); usleep(20000); }
}
int main(void) { setvbuf(stdout, NULL, _IONBF, 0); run_forever(); }
"""


def test_a_loop_that_never_returns_is_reported_as_running(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """Without moving frames (``--no-move``), the loop keeps its old code and relive says so."""
    exe = compile_c(tmp_path, LOOP_PROG, flags=("-g", "-O1", "-falign-functions=16"))
    target = spawn([exe])
    target.wait_for(r"n \d+ tag A")
    edit(tmp_path / "prog.c", 'printf("n %d tag A\\n", n);', 'printf("n %d tag B\\n", n);')
    events = reload(target.pid, tmp_path / "prog.c", move_frames=False)
    active = [str(e) for e in events if e.kind == "active"]
    assert any(re.match(rf"run_forever is running on thread {target.pid}: ", a) for a in active)
    # and indeed the loop keeps its old code; the next call of step() is new code though
    mark = target.mark()
    target.wait_for(r"n \d+ tag A", after=mark)
    edit(tmp_path / "prog.c", "return n + 1;", "return n + 1000;")
    reload(target.pid, tmp_path / "prog.c", move_frames=False)
    previous = int(target.wait_for(r"n (\d+) tag A").group(1))
    for _ in range(50):  # lines printed before the reload may still be in the pipe
        current = int(target.wait_for(r"n (\d+) tag A").group(1))
        if current - previous == 1000:
            break
        previous = current
    assert current - previous == 1000


CLONES_PROG = r"""
#include <stdio.h>
#include <unistd.h>
extern void report(const char *, int) __attribute__((cold));
void report(const char *what, int i) { fprintf(stderr, "%s %d\n", what, i); }
__attribute__((noinline)) static int scale(int x, int k) {
    return x * k + (x > 100000 ? x / 7 : 0);
}
__attribute__((noinline)) int work(int x) {
    int acc = 0;
    for (int i = 0; i < x; i++) {
        if (__builtin_expect(i == 777777, 0)) { report("odd", i); acc -= 5; continue; }
        acc += scale(i, 3);
    }
    return acc;
}
volatile int four = 4;
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("work %d\n", work(four)); usleep(20000); }
}
"""


def test_cold_parts_and_constprop_clones(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, CLONES_PROG, flags=("-g", "-O2"))
    symbols = subprocess.run(["nm", str(exe)], capture_output=True, text=True).stdout
    assert "work.cold" in symbols and "scale.constprop.0" in symbols
    target = spawn([exe])
    target.wait_for(r"^work 18$")
    edit(tmp_path / "prog.c", "return x * k +", "return x * k * 10 +")
    events = reload(target.pid, tmp_path / "prog.c")
    found = kinds(events)
    assert "scale.constprop.0" in found["redirected"]
    assert "work.cold" not in found.get("redirected", [])
    target.wait_for(r"^work 180$")
    edit(tmp_path / "prog.c", "acc -= 5;", "acc -= 6;")  # changes work and its cold part
    events = reload(target.pid, tmp_path / "prog.c")
    assert "work" in kinds(events)["redirected"]
    assert "work.cold" not in kinds(events).get("redirected", [])
    target.wait_for(r"^work 180$")


def test_stack_protector_and_cf_protection(tmp_path: Path, spawn: SpawnFactory) -> None:
    source = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
__attribute__((noinline)) int measure(const char *s) {
    char buf[32];
    strncpy(buf, s, sizeof buf - 1);
    buf[31] = 0;
    return (int)strlen(buf);
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("measure %d\n", measure("hello")); usleep(20000); }
}
"""
    flags = ("-g", "-O2", "-fstack-protector-all", "-fcf-protection=full")
    exe = compile_c(tmp_path, source, flags=flags)
    target = spawn([exe])
    target.wait_for(r"measure 5")
    edit(tmp_path / "prog.c", "return (int)strlen(buf);", "return (int)strlen(buf) * 100;")
    reload(target.pid, tmp_path / "prog.c")
    target.wait_for(r"measure 500")


TLS_LIB = r"""
__thread int lib_tls = 10;
static __thread int lib_static_tls;
__attribute__((noinline)) int lib_bump(void) { lib_tls += 1; lib_static_tls++; return lib_tls; }
"""

TLS_LIB_MAIN = r"""
#include <dlfcn.h>
#include <stdio.h>
#include <unistd.h>
int lib_bump(void);
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    void *plugin = dlopen("./libplugin.so", RTLD_NOW);
    if (!plugin) { printf("dlopen: %s\n", dlerror()); return 1; }
    int (*plugin_value)(void) = (int (*)(void))dlsym(plugin, "plugin_value");
    for (;;) { printf("tls %d plugin %d\n", lib_bump(), plugin_value()); usleep(20000); }
}
"""


def start_tls_program(tmp_path: Path, spawn: SpawnFactory, *lib_flags: str) -> Target:
    """libtls.so (built with ``lib_flags``) linked in, libplugin.so dlopened."""
    (tmp_path / "libtls.c").write_text(TLS_LIB)
    (tmp_path / "plugin.c").write_text("int plugin_value(void) { return 1; }\n")
    for src, lib, flags in (("libtls.c", "libtls.so", lib_flags), ("plugin.c", "libplugin.so", ())):
        subprocess.run(
            ["gcc", "-g", "-O1", "-fPIC", *flags, "-shared", "-o", lib, src],
            cwd=tmp_path,
            check=True,
        )
    link = (f"-L{tmp_path}", "-ltls", f"-Wl,-rpath,{tmp_path}", "-ldl")
    return spawn([compile_c(tmp_path, TLS_LIB_MAIN, link_flags=link)], cwd=tmp_path)


def check_library_tls_reload(tmp_path: Path, target: Target) -> None:
    """A reload of libtls.c keeps each thread's counter (it jumps by 1000 from where it was)."""
    before = int(target.wait_for(r"tls (\d+) plugin 1").group(1))
    edit(tmp_path / "libtls.c", "lib_tls += 1;", "lib_tls += 1000;")
    reload(target.pid, tmp_path / "libtls.c")
    match = target.wait_for(r"tls (\d+) plugin 1")
    while int(match.group(1)) < 1000:
        match = target.wait_for(r"tls (\d+) plugin 1")
    assert before < int(match.group(1)) < before + 3000


def test_tls_in_a_shared_library_and_a_dlopened_plugin(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = start_tls_program(tmp_path, spawn)  # general-dynamic accesses (TLSGD, TLSLD)
    check_library_tls_reload(tmp_path, target)
    edit(tmp_path / "plugin.c", "return 1;", "return 2;")
    reload(target.pid, tmp_path / "plugin.c")
    target.wait_for(r"tls \d+ plugin 2")


RED_ZONE_PROG = r"""
#include <stdio.h>
#include <unistd.h>
/* A leaf that keeps values below its stack pointer (the red zone) and checks
   them in a loop: a tracer that wrote below a stopped thread's SP would show. */
static long check_red_zone(void) {
    long bad;
    __asm__ volatile(
        "movabs $0x5a5a5a5a5a5a5a5a, %%rax\n"
        "mov %%rax, -8(%%rsp)\n"
        "mov %%rax, -64(%%rsp)\n"
        "mov %%rax, -128(%%rsp)\n"
        "mov $5000000, %%rcx\n"
        "1: cmp %%rax, -8(%%rsp)\n jne 2f\n"
        "cmp %%rax, -64(%%rsp)\n jne 2f\n"
        "cmp %%rax, -128(%%rsp)\n jne 2f\n"
        "dec %%rcx\n jnz 1b\n"
        "xor %0, %0\n jmp 3f\n"
        "2: mov $1, %0\n"
        "3:\n"
        : "=r"(bad) : : "rax", "rcx", "memory", "cc");
    return bad;
}
__attribute__((noinline)) const char *tag(void) { return "A"; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (long n = 0;; n++) {
        if (check_red_zone()) printf("RED ZONE CORRUPTED\n");
        printf("round %ld %s\n", n, tag());
    }
}
"""


def test_nothing_is_written_below_a_stopped_threads_stack_pointer(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, RED_ZONE_PROG, flags=("-g", "-O2"))
    target = spawn([exe])
    target.wait_for(r"round \d+ A")
    source = tmp_path / "prog.c"
    letters = "BCDEFGHIJK"
    previous = 'return "A";'
    for letter in letters:
        current = f'return "{letter}";'
        edit(source, previous, current)
        reload(target.pid, source)
        previous = current
        target.wait_for(rf"round \d+ {letter}")
    assert not any("CORRUPTED" in line for line in target.lines)


def test_repeated_reloads_keep_memory_bounded(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(
        tmp_path,
        LOOP_PROG.replace(
            "run_forever();",
            'for (;;) { int n = step(0); printf("n %d tag A\\n", n); usleep(20000); }',
        ),
    )
    target = spawn([exe])
    target.wait_for(r"n 1 tag A")

    def relive_mappings() -> tuple[int, int]:
        """Mappings and bytes of the arenas relive mapped (per its journal), checking
        that none of their pages is writable and executable at once."""
        chunks = load_journal(target.pid).arenas
        count = total = 0
        for line in Path(f"/proc/{target.pid}/maps").read_text().splitlines():
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if any(c.address <= start < c.address + c.size for c in chunks):
                assert fields[1] in ("r-xp", "rw-p"), line
                count += 1
                total += end - start
        return count, total

    source = tmp_path / "prog.c"
    seen = []
    for i in range(10):
        edit(
            source,
            "return n + 1;" if i % 2 == 0 else "return n + 2;",
            "return n + 2;" if i % 2 == 0 else "return n + 1;",
        )
        reload(target.pid, source)
        target.wait_for(rf"n {2 if i % 2 == 0 else 1} tag A")
        seen.append(relive_mappings())
    # One code arena and one data arena, mapped by the first reload and reused.
    assert seen[0][0] == 2 and seen[0][1] > 0
    assert seen == [seen[0]] * 10, seen
    blocks = load_journal(target.pid).blocks
    # Superseded blocks with no data left (step() loads none) are forgotten once freed.
    assert 1 <= len(blocks) <= 10 and all(0 < b.code[1] <= 16384 for b in blocks)
    assert relive.attach(target.pid).status()[0].count == 10


def test_initial_exec_tls_in_a_shared_library(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = start_tls_program(tmp_path, spawn, "-ftls-model=initial-exec")  # GOTTPOFF
    check_library_tls_reload(tmp_path, target)

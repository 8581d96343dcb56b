"""An unmodified file redirects nothing: compare what the code does, not its encoding.

The program is built the way most projects build (no ``-ffunction-sections``),
so its tail calls to functions of the same section are assembled as 2-byte
``jmp rel8`` with different NOP padding, while relive's copy has ``jmp rel32``
and a relocation; it reads a string through ``lea .LC0-1(%rip)`` and a 16-byte
constant through an instruction with an immediate after the displacement.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from support import SpawnFactory, compile_c, edit, kinds, reload

FLAGS = ("-g", "-O2", "-msse4.1")

PROG = r"""
#include <stdio.h>
#include <unistd.h>
#include <smmintrin.h>
volatile int sink;
static __attribute__((noinline)) int leaf(int x) { return x * 3 + sink; }
static const char *const names[] = {"", "one", "two", ""};
/* Two jump tables in one section, after a tail call (a 2-byte jmp) that shifts them. */
__attribute__((noinline)) int dispatch(int op, int x) {
    if (__builtin_expect(x < 0, 1)) return leaf(x);
    switch (op) {
    case 0: x += 11; break; case 1: x *= 13; break; case 2: x -= 17; break;
    case 3: x ^= 19; break; case 4: x <<= 2; break; case 5: x |= 23; break;
    default: return x;
    }
    switch (x & 7) {
    case 0: return x + names[1][0]; case 1: return x * 3; case 2: return x - 29;
    case 3: return x ^ 31; case 4: return x + 37; case 5: return x * 41;
    default: return x + (int)sizeof names[0];
    }
}
__attribute__((noinline)) int wrap(int x) { return leaf(x + 1); }
__attribute__((noinline)) int pick(int x) { if (x > 5) return leaf(x); return x - sink; }
__attribute__((noinline)) int count_in(const char *s, int n) {
    int c = 0;
    for (int i = 1; i <= n; i++) c += "xyzzy plugh"[i - 1] == s[i];
    return c;
}
__attribute__((noinline)) __m128 shuffle(__m128 x) {
    return _mm_shuffle_ps(x, _mm_set_ps(1, 2, 3, 4), 0x1b);
}
static float shuffled(__m128 x) {
    float out[4];
    _mm_storeu_ps(out, shuffle(x));
    return out[0] + out[2] * 10;
}
__attribute__((noinline)) double scaled(double *a) {
    __m128d k = _mm_set_pd(3.5, 1.25);
    return _mm_cvtsd_f64(_mm_mul_pd(_mm_loadu_pd(a), k));
}
__attribute__((noinline)) const char *blank(int x) { return x > 0 ? "" : "?"; }
__attribute__((noinline)) const char *name(int i) { return names[i & 3]; }
__attribute__((noinline)) double magnitude(double x) { return __builtin_fabs(x); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    double pair[2] = {2, 4};
    for (;;) {
        printf("wrap=%d pick=%d count=%d shuffled=%g scaled=%g magnitude=%g blank=[%s]", wrap(1),
               pick(7), count_in("-xyzzy", 5), shuffled(_mm_set1_ps(sink)), scaled(pair),
               magnitude(-2), blank(1));
        printf(" dispatch=%d name=[%s%s]\n", dispatch(2 + sink, 40), name(sink), name(1 + sink));
        usleep(20000);
    }
}
"""


def _assembly(source: Path) -> str:
    return subprocess.run(
        ["gcc", *FLAGS, "-S", "-o", "-", str(source)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_an_unmodified_file_redirects_nothing(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, PROG, flags=FLAGS)
    source = tmp_path / "prog.c"
    asm = _assembly(source)
    # The build really has what used to look changed.
    assert re.search(r"jmp\s+leaf", asm)
    assert re.search(r"leaq\s+-1\+\.LC\d+\(%rip\)", asm)
    assert re.search(r"shufps\s+\$27, \.LC\d+\(%rip\)", asm)
    assert '.string\t""' in asm  # an empty string: its label points at a terminator
    assert len(re.findall(r"\.long\t\.L\d+-\.L\d+", asm)) >= 12  # two jump tables
    target = spawn([exe])
    target.wait_for(
        r"wrap=6 pick=21 count=5 shuffled=30 scaled=2.5 magnitude=2 blank=\[\] "
        r"dispatch=31 name=\[one\]"
    )

    events = kinds(reload(target.pid, source))
    assert "redirected" not in events, events
    assert {
        "leaf",
        "wrap",
        "pick",
        "count_in",
        "shuffle",
        "scaled",
        "blank",
        "dispatch",
        "name",
    } <= set(events["unchanged"])


def test_changes_behind_those_references_are_still_seen(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, PROG, flags=FLAGS)
    source = tmp_path / "prog.c"
    target = spawn([exe])
    target.wait_for(r"count=5 shuffled=30 ")
    edit(source, '"xyzzy plugh"', '"xyzzz plugh"')
    edit(source, "_mm_set_ps(1, 2, 3, 4)", "_mm_set_ps(1, 2, 5, 4)")
    edit(source, "return x * 3 + sink;", "return x * 4 + sink;")
    events = kinds(reload(target.pid, source))
    # main changes too: IPA register allocation follows its callees' new code.
    assert (
        {"count_in", "leaf", "shuffle"}
        <= set(events["redirected"])
        <= {"count_in", "leaf", "shuffle", "main"}
    )
    assert {"wrap", "pick", "scaled", "magnitude"} <= set(events["unchanged"])
    target.wait_for(r"wrap=8 pick=28 count=4 shuffled=50 ")

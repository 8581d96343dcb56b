"""What a reload of a big unit skips, and that skipping it changes no answer: the
compiler clones the new code no longer has are still named, and a type check
still finds a changed global when the new code also uses function statics."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relive.errors import LayoutChanged
from relive.events import Notice
from support import SpawnFactory, compile_c, edit, kinds, reload

CLONES = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) static int scale(int x, int k) {
    return x * k + (x > 100000 ? x / 7 : 0);
}
volatile int four = 4;
__attribute__((noinline)) int work(int x) {
    int acc = 0;
    for (int i = 0; i < x; i++)
        acc += scale(i, 3);
    return acc;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("work %d\n", work(four)); usleep(20000); }
}
"""


def test_a_clone_the_new_code_no_longer_has_is_named(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, CLONES, flags=("-g", "-O2"))
    symbols = subprocess.run(["nm", str(exe)], capture_output=True, text=True).stdout
    assert "scale.constprop.0" in symbols
    target = spawn([exe])
    target.wait_for(r"^work 18$")
    # k is no longer a constant: gcc makes no clone, work calls scale itself.
    edit(tmp_path / "prog.c", "acc += scale(i, 3);", "acc += scale(i, four - 1) * 2;")
    events = reload(target.pid, tmp_path / "prog.c")
    assert "work" in kinds(events)["redirected"]
    notices = [str(e) for e in events if isinstance(e, Notice)]
    assert any(n.startswith("scale.constprop.0 (a compiler clone") for n in notices), notices
    target.wait_for(r"^work 36$")


STATS = r"""
#include <stdio.h>
#include <unistd.h>
struct stats { long hits; long misses; };
struct stats totals;
__attribute__((noinline)) long count(long x) {
    static long calls;
    calls++;
    totals.hits += x;
    return calls;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("calls %ld hits %ld\n", count(1), totals.hits); usleep(20000); }
}
"""


def test_a_changed_global_is_found_next_to_a_function_static(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """The type check skips names DWARF cannot have (``calls.N``), not the others."""
    exe = compile_c(tmp_path, STATS, flags=("-g", "-O2"))
    target = spawn([exe])
    target.wait_for(r"^calls \d+ hits \d+$")
    edit(tmp_path / "prog.c", "long hits; long misses;", "long misses; long hits;")
    edit(tmp_path / "prog.c", "totals.hits += x;", "totals.hits += 2 * x;")
    with pytest.raises(LayoutChanged, match=r"struct stats: hits moved 0 -> 8"):
        reload(target.pid, tmp_path / "prog.c")
    target.wait_for(r"^calls \d+ hits \d+$")

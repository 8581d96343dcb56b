"""A function inlined into its caller: what --function and undo say about it (issue 11 §4)."""

from __future__ import annotations

from pathlib import Path

import relive
from relive.events import Event
from support import SpawnFactory, compile_c, kinds, notices

PROG = r"""
#include <stdio.h>
#include <unistd.h>
volatile int seed = 3;
int pick(int x) { return x * 2; }           /* inlined into report at -O2 */
__attribute__((noinline)) void report(void) { printf("picked %d\n", pick(seed)); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { report(); usleep(20000); }
}
"""


def test_selecting_an_inlined_function_names_the_callers_that_show_it(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target = spawn([compile_c(tmp_path, PROG, flags=("-g", "-O2"))])
    target.wait_for(r"^picked 6$")
    source = tmp_path / "prog.c"
    source.write_text(PROG.replace("return x * 2;", "return x * 5;"))

    events: list[Event] = []
    relive.attach(target.pid, on_event=events.append).reload([source], functions=["pick"])
    assert kinds(events)["redirected"] == ["pick"]
    [notice] = [n for n in notices(events) if "not selected" in n]
    assert notice.startswith("report changed too but was not selected")
    assert "--function report" in notice

    events.clear()
    relive.attach(target.pid, on_event=events.append).reload([source])
    assert kinds(events)["redirected"] == ["report"]  # pick runs its new code already
    target.wait_for(r"^picked 15$")

    events.clear()
    assert relive.attach(target.pid, on_event=events.append).undo(["pick"]) == ["pick"]
    [kept] = [n for n in notices(events) if "keeps its new code" in n]
    assert kept.startswith("report, redirected by the same reload, keeps its new code")
    assert "`relive undo report`" in kept
    target.wait_for(r"^picked 15$")  # what the notice says: report's copy of pick stays

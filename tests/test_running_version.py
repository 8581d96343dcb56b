""" "Unchanged" means unchanged from what runs now, whichever file or reload put it there.

Two objects define the same function: reloading a.o, then b.o, then a.o again must
put a's code back (switching git branches back and forth does this); after an
undo, the original code is the baseline.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import relive
from support import SpawnFactory, compile_c, kinds, reload

PROG = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int work(void) { return 0; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("work=%d\n", work()); usleep(20000); }
}
"""


def _object(tmp_path: Path, name: str, value: int) -> Path:
    source = tmp_path / f"{name}.c"
    source.write_text(PROG.replace("return 0;", f"return {value};"))
    obj = tmp_path / f"{name}.o"
    subprocess.run(["gcc", "-g", "-O0", "-c", "-o", str(obj), str(source)], check=True)
    return obj


def test_a_file_reloaded_again_after_another_is_compared_with_what_runs(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target = spawn([compile_c(tmp_path, PROG)])
    target.wait_for(r"^work=0$")
    a, b = _object(tmp_path, "a", 1), _object(tmp_path, "b", 2)

    assert kinds(reload(target.pid, a))["redirected"] == ["work"]
    target.wait_for(r"^work=1$")
    assert kinds(reload(target.pid, b))["redirected"] == ["work"]
    target.wait_for(r"^work=2$")
    assert kinds(reload(target.pid, a))["redirected"] == ["work"]
    target.wait_for(r"^work=1$")
    # a again: that is what runs now.
    assert "work" in kinds(reload(target.pid, a))["unchanged"]

    relive.attach(target.pid).undo()
    target.wait_for(r"^work=0$")
    assert kinds(reload(target.pid, b))["redirected"] == ["work"]
    target.wait_for(r"^work=2$")
    relive.attach(target.pid).undo()
    target.wait_for(r"^work=0$")
    # After the undo the original runs: b's own earlier reload is not the baseline.
    assert kinds(reload(target.pid, b))["redirected"] == ["work"]
    target.wait_for(r"^work=2$")

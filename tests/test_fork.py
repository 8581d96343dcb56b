"""Forked children of a patched process: status, reload and undo on a child are exact.

A child inherits its parent's memory, jumps included, but relive never touched
it: its journal is rebuilt from its memory, and original bytes always come from
the module file, never from memory that may already hold a jump.  Children die
with their parent (PR_SET_PDEATHSIG), so the test's teardown ends them all.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import relive
from relive.cli.main import main
from relive.patch.modules import load_running_modules
from relive.patch.original import read_original_code
from relive.process.memory import ProcessMemory
from support import SpawnFactory, Target, compile_c, fork_child

FORKING_PROG = r"""
#include <stdio.h>
#include <unistd.h>
#include <signal.h>
#include <sys/prctl.h>
__attribute__((noinline)) int value(void) { return 1; }
static void loop(const char *who) {
    for (;;) { printf("%s %d value=%d\n", who, (int)getpid(), value()); usleep(20000); }
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    printf("parent ready\n");
    char line[16];
    /* One child per line read; the parent itself only forks. */
    while (fgets(line, sizeof line, stdin))
        if (fork() == 0) { prctl(PR_SET_PDEATHSIG, SIGKILL); loop("child"); }
    return 0;
}
"""


def _start(tmp_path: Path, spawn: SpawnFactory) -> tuple[Target, Path]:
    """The forking program, once it runs main (its loader done, its libraries mapped),
    and its source."""
    parent = spawn([compile_c(tmp_path, FORKING_PROG)], stdin_pipe=True)
    parent.wait_for(r"^parent ready$")
    return parent, tmp_path / "prog.c"


def _start_patched(tmp_path: Path, spawn: SpawnFactory) -> tuple[Target, Path]:
    """The forking program with value() reloaded to return 2, and its source."""
    parent, source = _start(tmp_path, spawn)
    _edit_value(source, 2)
    relive.attach(parent.pid).reload([source])
    return parent, source


def _fork_child(target: Target) -> int:
    return fork_child(target, r"child {pid} value=")


def _child_prints(target: Target, pid: int, value: int) -> None:
    mark = target.mark()
    target.wait_for(rf"child {pid} value={value}$", after=mark)
    target.wait_for(rf"child {pid} value={value}$", after=target.mark())


def _edit_value(source: Path, value: int) -> None:
    text = source.read_text()
    start = text.index("int value(void) { return ") + len("int value(void) { return ")
    end = text.index(";", start)
    source.write_text(text[:start] + str(value) + text[end:])


def test_children_forked_after_a_reload_and_after_an_undo(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    parent, source = _start_patched(tmp_path, spawn)
    first = _fork_child(parent)
    _child_prints(parent, first, 2)

    # The child runs the inherited patch, and status says so.
    [row] = relive.attach(first).status()
    assert (row.name, row.active, row.source) == ("value", True, str(source))

    # Reload then undo on the child: the original comes back, not the parent's patch.
    _edit_value(source, 3)
    relive.attach(first).reload([source])
    _child_prints(parent, first, 3)
    assert relive.attach(first).undo() == ["value"]
    _child_prints(parent, first, 1)
    assert relive.attach(first).status() == []

    # A second child, forked while the parent is still patched, undone directly.
    second = _fork_child(parent)
    _child_prints(parent, second, 2)
    assert relive.attach(second).undo(["value"]) == ["value"]
    _child_prints(parent, second, 1)

    # The parent keeps its patch; undone there, a child forked afterwards has none.
    [row] = relive.attach(parent.pid).status()
    assert (row.name, row.active) == ("value", True)
    relive.attach(parent.pid).undo()
    third = _fork_child(parent)
    _child_prints(parent, third, 1)
    assert relive.attach(third).status() == []
    # ... and the first child, patched before the parent's undo, still reports exactly.
    assert relive.attach(first).status() == []


def test_a_child_keeps_a_patch_its_parent_undid_after_the_fork(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    parent, _ = _start_patched(tmp_path, spawn)
    child = _fork_child(parent)
    relive.attach(parent.pid).undo()
    _child_prints(parent, child, 2)
    [row] = relive.attach(child).status()
    assert (row.name, row.active) == ("value", True)
    assert relive.attach(child).undo() == ["value"]
    _child_prints(parent, child, 1)


def test_original_code_comes_from_the_file_not_from_patched_memory(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    parent, source = _start(tmp_path, spawn)
    [main, *_] = load_running_modules(parent.pid)
    symbol = main.image.find_global("value")
    assert symbol is not None
    address = main.runtime(symbol.value)
    with ProcessMemory(parent.pid) as memory:
        before = memory.read(address, symbol.size)
        assert read_original_code(main, address, symbol.size, memory.read) == before
        _edit_value(source, 2)
        relive.attach(parent.pid).reload([source])
        assert memory.read(address, symbol.size) != before
        assert read_original_code(main, address, symbol.size, memory.read) == before


def test_status_and_undo_take_all_for_the_workers_of_a_program(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    parent, _ = _start_patched(tmp_path, spawn)
    workers = [_fork_child(parent), _fork_child(parent)]

    assert main(["status", "-p", str(workers[0])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["FUNCTION", "ENTRY", "->"]
    assert lines[1].split()[0] == "value" and "active" in lines[1]

    assert main(["status", "--all", "-p", str(parent.pid)]) == 0
    out = capsys.readouterr().out
    assert sum(line.startswith("value ") for line in out.splitlines()) == 3

    assert main(["undo", "--all", "-p", str(parent.pid)]) == 0
    for worker in workers:
        _child_prints(parent, worker, 1)
    assert main(["status", "--all", "-p", str(parent.pid)]) == 0
    assert capsys.readouterr().out.count("nothing patched") == 3

"""New functions and globals added in one file and used from another (issue 10 §3)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import relive
from relive.errors import LinkError
from support import (
    RELIVE,
    SpawnFactory,
    Target,
    compile_c,
    edit,
    json_events,
    kinds,
    reload,
    wait_event,
)

PROG = r"""
#include <stdio.h>
#include <unistd.h>
int util_base(void);
__attribute__((noinline)) void tick(void) { printf("value=%d\n", util_base()); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { tick(); usleep(20000); }
}
"""

UTIL = "int util_base(void) { return 1; }\n"

#: util.c with a new global and a new function using it.
UTIL_WITH_ANSWER = """int relive_counter;
int util_base(void) { return 1; }
int relive_answer(void) { return 1000 + relive_counter++; }
"""


def _use_answer(prog: Path) -> None:
    edit(prog, "int util_base(void);", "int util_base(void);\nint relive_answer(void);")
    edit(prog, "util_base())", "relive_answer())")


@pytest.fixture
def program(tmp_path: Path, spawn: SpawnFactory) -> Target:
    exe = compile_c(tmp_path, PROG, extra_sources={"util.c": UTIL})
    target = spawn([exe])
    target.wait_for(r"^value=1$")
    return target


def _counts(target: Target, count: int) -> list[int]:
    """The next ``count`` values printed from now on."""
    first = int(target.wait_for(r"^value=(\d+)$", after=target.mark()).group(1))
    return [first] + [int(target.wait_for(r"^value=(\d+)$").group(1)) for _ in range(count - 1)]


@pytest.mark.parametrize("order", [("prog.c", "util.c"), ("util.c", "prog.c")])
def test_files_of_one_reload_share_their_new_symbols(
    tmp_path: Path, program: Target, order: tuple[str, str]
) -> None:
    (tmp_path / "util.c").write_text(UTIL_WITH_ANSWER)
    _use_answer(tmp_path / "prog.c")
    events = reload(program.pid, *(tmp_path / name for name in order))
    assert kinds(events)["new"] == ["relive_answer"]
    assert "tick" in kinds(events)["redirected"]
    program.wait_for(r"^value=1\d\d\d$")
    first, second = _counts(program, 2)
    assert second == first + 1  # the new global counts, in storage the new code shares


def test_a_later_reload_uses_what_an_earlier_one_added(tmp_path: Path, program: Target) -> None:
    (tmp_path / "util.c").write_text(UTIL_WITH_ANSWER)
    assert kinds(reload(program.pid, tmp_path / "util.c"))["new"] == ["relive_answer"]
    _use_answer(tmp_path / "prog.c")
    assert "tick" in kinds(reload(program.pid, tmp_path / "prog.c"))["redirected"]
    program.wait_for(r"^value=1\d\d\d$")
    # And a variable added earlier is shared, not copied: both files see one counter.
    edit(
        tmp_path / "prog.c",
        "int relive_answer(void);",
        "int relive_answer(void);\nextern int relive_counter;",
    )
    edit(tmp_path / "prog.c", "relive_answer())", "relive_answer() + 0 * relive_counter)")
    reload(program.pid, tmp_path / "prog.c")
    first, second = _counts(program, 2)
    assert second == first + 1


def test_using_a_symbol_nobody_defines_yet_is_refused_and_changes_nothing(
    tmp_path: Path, program: Target
) -> None:
    _use_answer(tmp_path / "prog.c")  # util.c, which would add it, is not reloaded
    maps = Path(f"/proc/{program.pid}/maps").read_text()
    with pytest.raises(LinkError, match="relive_answer"):
        reload(program.pid, tmp_path / "prog.c")
    assert Path(f"/proc/{program.pid}/maps").read_text() == maps
    assert relive.attach(program.pid).status() == []
    program.wait_for(r"^value=1$", after=program.mark())
    cli = subprocess.run(
        [*RELIVE, "reload", "-p", str(program.pid), str(tmp_path / "prog.c")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 7
    assert "relive_answer" in cli.stderr and "same command" in cli.stderr


def test_watch_reloads_two_files_saved_together_as_one(
    tmp_path: Path, spawn: SpawnFactory, program: Target
) -> None:
    watch = spawn([*RELIVE, "--json", "watch", "-p", str(program.pid), "--debounce", "300"])
    wait_event(watch, "watching")
    (tmp_path / "util.c").write_text(UTIL_WITH_ANSWER)
    _use_answer(tmp_path / "prog.c")
    event = wait_event(watch, "watch-reloaded")
    assert sorted(Path(s).name for s in event["sources"]) == ["prog.c", "util.c"]
    assert event["added"] == ["relive_answer"]
    program.wait_for(r"^value=1\d\d\d$")
    assert json_events(watch, "watch-failed") == []

"""`relive watch` driven for real: a running program, its files saved, relive reloading them.

relive runs as a separate process (`python -m relive --json watch ...`); the tests
read its JSON events and the program's output, waiting for patterns, never sleeping.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support import (
    RELIVE,
    SpawnFactory,
    Target,
    compile_c,
    edit,
    json_events,
    save_by_rename,
    wait_event,
)

PROG = r"""
#include <stdio.h>
#include <unistd.h>
int step(void);
int counter;
__attribute__((noinline)) int value(void) { return 1; }
__attribute__((noinline)) void tick(void) {
    counter++;
    printf("value=%d step=%d counter=%d\n", value(), step(), counter);
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { tick(); usleep(20000); }
}
"""
UTIL = r"""
#include "conf.h"
__attribute__((noinline)) int step(void) { return STEP; }
"""
CONF = "#define STEP 1\n"


def build(tmp_path: Path, name: str = "prog") -> Path:
    """The test program: NAME.c (value, tick, main) + util.c (step) including conf.h."""
    return compile_c(tmp_path, PROG, name=name, extra_sources={"util.c": UTIL, "conf.h": CONF})


def real(path: Path) -> str:
    return os.path.realpath(path)


def start_watch(
    spawn: SpawnFactory, *args: str | int | Path, as_json: bool = True
) -> tuple[Target, dict[str, Any] | None]:
    """Start `relive watch ARGS` and wait until it watches; return it and its start event."""
    argv = [*RELIVE, *(["--json"] if as_json else []), "watch", *map(str, args)]
    watch = spawn(argv)
    if not as_json:
        watch.wait_for(r"^watching ")
        return watch, None
    return watch, wait_event(watch, "watching")


@pytest.fixture
def program(tmp_path: Path, spawn: SpawnFactory) -> Target:
    target = spawn([build(tmp_path)])
    target.wait_for(r"value=1 step=1")
    return target


def test_saves_in_place_and_by_rename_reload_and_keep_state(
    tmp_path: Path, spawn: SpawnFactory, program: Target
) -> None:
    watch, started = start_watch(spawn, "-p", program.pid)
    assert started is not None
    source = tmp_path / "prog.c"
    assert sorted(started["units"]) == sorted([real(source), real(tmp_path / "util.c")])
    assert real(tmp_path / "conf.h") in started["files"]
    assert real(source) in wait_event(watch, "flags-from-dwarf")["sources"]

    edit(source, "return 1;", "return 2;")
    event = wait_event(watch, "watch-reloaded")
    assert event["sources"] == [real(source)]
    assert event["redirected"] == ["value"]
    assert "tick" in event["unchanged"]
    assert event["compile_ms"] > 0 and event["link_ms"] > 0 and event["stopped_us"] > 0
    before = int(program.wait_for(r"value=2 step=1 counter=(\d+)").group(1))

    save_by_rename(source, source.read_text().replace("return 2;", "return 3;"))
    event = wait_event(watch, "watch-reloaded")
    assert event["redirected"] == ["value"]
    after = int(program.wait_for(r"value=3 step=1 counter=(\d+)").group(1))
    assert after > before  # the global kept counting through both reloads


def test_saved_header_reloads_the_units_that_include_it(
    tmp_path: Path, spawn: SpawnFactory, program: Target
) -> None:
    watch, _ = start_watch(spawn, "-p", program.pid)
    edit(tmp_path / "conf.h", "STEP 1", "STEP 5")
    event = wait_event(watch, "watch-reloaded")
    assert event["sources"] == [real(tmp_path / "util.c")]  # prog.c does not include it
    assert event["redirected"] == ["step"]
    program.wait_for(r"value=1 step=5")


def test_a_newly_included_header_is_watched_from_then_on(
    tmp_path: Path, spawn: SpawnFactory, program: Target
) -> None:
    watch, _ = start_watch(spawn, "-p", program.pid)
    (tmp_path / "extra").mkdir()
    more = tmp_path / "extra" / "more.h"  # in a folder not watched so far
    more.write_text("#define MORE 4\n")
    source = tmp_path / "prog.c"
    source.write_text(
        '#include "extra/more.h"\n' + source.read_text().replace("return 1;", "return MORE;")
    )
    wait_event(watch, "watch-reloaded")
    program.wait_for(r"value=4 ")
    edit(more, "MORE 4", "MORE 6")
    event = wait_event(watch, "watch-reloaded")
    assert event["sources"] == [real(source)]
    program.wait_for(r"value=6 ")


def test_broken_edit_keeps_the_last_good_code_and_the_fix_reloads(
    tmp_path: Path, spawn: SpawnFactory, program: Target
) -> None:
    watch, _ = start_watch(spawn, "-p", program.pid)
    source = tmp_path / "prog.c"
    edit(source, "return 1;", "return 2")
    failed = wait_event(watch, "watch-failed")
    assert failed["error"] == "CompileError"
    assert re.search(r"prog\.c:\d+:\d+: error", failed["message"]), failed["message"]
    assert "return 2" in failed["details"]  # the compiler's diagnostics, with the line
    mark = program.mark()
    program.wait_for(r"value=1 step=1", after=mark)  # still running the old code

    edit(source, "return 2", "return 2;")
    assert wait_event(watch, "watch-reloaded")["redirected"] == ["value"]
    program.wait_for(r"value=2 step=1")


def test_two_quick_saves_reload_once_and_unchanged_saves_are_skipped(
    tmp_path: Path, spawn: SpawnFactory, program: Target
) -> None:
    watch, _ = start_watch(spawn, "-p", program.pid)
    source = tmp_path / "prog.c"
    text = source.read_text()
    source.write_text(text.replace("return 1;", "return 2;"))
    source.write_text(text.replace("return 1;", "return 3;"))
    assert wait_event(watch, "watch-reloaded")["redirected"] == ["value"]
    program.wait_for(r"value=3 ")

    source.write_text(source.read_text())  # saved, not changed
    assert wait_event(watch, "save-skipped")["path"] == real(source)

    edit(source, "return 3;", "return 4;")
    wait_event(watch, "watch-reloaded")
    program.wait_for(r"value=4 ")
    assert len(json_events(watch, "watch-reloaded")) == 2
    assert not any("value=2 " in line for line in program.lines)


def test_plain_output_is_one_line_per_reload(
    tmp_path: Path, spawn: SpawnFactory, program: Target
) -> None:
    watch, _ = start_watch(spawn, "-p", program.pid, as_json=False)
    source = tmp_path / "prog.c"
    edit(source, "return 1;", "return 2;")
    line = watch.wait_for(r"^\d\d:\d\d:\d\d prog\.c: 1 redirected \(value\), 0 new, \d+ unchanged")
    assert re.search(r"\| compile \d+ ms, link \d+ ms, stopped \d+ µs", line.string), line.string
    edit(source, "return 2;", "return 2")
    watch.wait_for(r"prog\.c: compile error: \S*prog\.c:\d+:\d+: error")
    edit(source, "return 2", "return 3;")
    watch.wait_for(r"prog\.c: 1 redirected \(value\)")
    program.wait_for("value=3 ")
    notices = [line for line in watch.lines if "come only from DWARF" in line]
    assert len(notices) == 1 and "bear -- make" in notices[0]
    assert not any(line.startswith("redirected ") for line in watch.lines)


def test_watch_ends_when_the_program_exits(program: Target, spawn: SpawnFactory) -> None:
    watch, _ = start_watch(spawn, "-p", program.pid)
    program.stop()
    assert wait_event(watch, "exited")["pid"] == program.pid
    assert wait_event(watch, "watch-stopped")["reason"] == "the program exited"
    assert watch.wait_exit() == 0


@pytest.mark.parametrize("undo", [False, True], ids=["keep", "undo-on-exit"])
def test_sigint_ends_watching_and_keeps_or_reverts_the_patches(
    tmp_path: Path, spawn: SpawnFactory, program: Target, undo: bool
) -> None:
    watch, _ = start_watch(spawn, "-p", program.pid, *(["--undo-on-exit"] if undo else []))
    edit(tmp_path / "prog.c", "return 1;", "return 2;")
    wait_event(watch, "watch-reloaded")
    program.wait_for(r"value=2 ")
    watch.proc.send_signal(signal.SIGINT)
    stopped = wait_event(watch, "watch-stopped")
    assert watch.wait_exit() == 0
    assert stopped["undone"] == (["value"] if undo else [])
    assert stopped["kept"] == ([] if undo else ["value"])
    mark = program.mark()
    program.wait_for(r"value=1 " if undo else r"value=2 ", after=mark)


def tracer_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"TracerPid:\s*(\d+)", status).group(1))  # type: ignore[union-attr]


def test_idle_watch_is_not_attached(tmp_path: Path, spawn: SpawnFactory, program: Target) -> None:
    watch, _ = start_watch(spawn, "-p", program.pid)
    assert tracer_of(program.pid) == 0
    edit(tmp_path / "prog.c", "return 1;", "return 2;")
    wait_event(watch, "watch-reloaded")
    program.wait_for(r"value=2 ")
    assert tracer_of(program.pid) == 0


def test_watch_paths_narrow_what_is_watched(
    tmp_path: Path, spawn: SpawnFactory, program: Target
) -> None:
    watch, started = start_watch(spawn, "-p", program.pid, tmp_path / "conf.h")
    assert started is not None
    assert started["files"] == [real(tmp_path / "conf.h")]
    assert started["units"] == [real(tmp_path / "util.c")]
    edit(tmp_path / "prog.c", "return 1;", "return 2;")  # not watched
    edit(tmp_path / "conf.h", "STEP 1", "STEP 7")
    assert wait_event(watch, "watch-reloaded")["redirected"] == ["step"]
    program.wait_for(r"value=1 step=7")


# --- -n NAME and --all ---------------------------------------------------------


def unique_name() -> str:
    """A process name no other test (or engineer) uses; comm keeps 15 characters."""
    return f"rl{os.getpid() % 100000}w"


def test_reload_by_name_refuses_two_matches_and_all_reloads_each(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    name = unique_name()
    exe = build(tmp_path, name)
    first, second = spawn([exe]), spawn([exe])
    for target in (first, second):
        target.wait_for(r"value=1 ")
    source = tmp_path / f"{name}.c"
    edit(source, "return 1;", "return 2;")

    ambiguous = subprocess.run(
        [*RELIVE, "reload", "-n", name, str(source)], capture_output=True, text=True, check=False
    )
    assert ambiguous.returncode == 2
    assert str(first.pid) in ambiguous.stderr and str(second.pid) in ambiguous.stderr
    assert "--all" in ambiguous.stderr

    done = subprocess.run(
        [*RELIVE, "--json", "reload", "-n", name, "--all", str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    finished = [e for e in events if e["kind"] == "reloaded"]
    assert sorted(e["pid"] for e in finished) == sorted([first.pid, second.pid])
    assert all(e["redirected"] == 1 for e in finished)
    for target in (first, second):
        target.wait_for(r"value=2 ")


def test_watch_all_reloads_every_process_of_the_program(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    name = unique_name()
    exe = build(tmp_path, name)
    first, second = spawn([exe]), spawn([exe])
    for target in (first, second):
        target.wait_for(r"value=1 ")
    watch, started = start_watch(spawn, "-p", first.pid, "--all")
    assert started is not None
    assert sorted(started["pids"]) == sorted([first.pid, second.pid])
    edit(tmp_path / f"{name}.c", "return 1;", "return 2;")
    pids = {wait_event(watch, "watch-reloaded")["pid"] for _ in range(2)}
    assert pids == {first.pid, second.pid}
    for target in (first, second):
        target.wait_for(r"value=2 ")


# --- the CLI stays light -------------------------------------------------------


def test_help_and_reload_do_not_import_watchfiles_or_rich() -> None:
    code = (
        "import sys\n"
        "from relive.cli.main import main\n"
        "main(['--help'])\n"
        "main(['reload', '-p', '999999999', 'x.c'])\n"
        "print(sorted(m for m in ('watchfiles', 'rich') if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert proc.stdout.splitlines()[-1] == "[]"


def test_watch_by_process_name(tmp_path: Path, spawn: SpawnFactory) -> None:
    name = f"w{os.getpid() % 100000}"  # a name no other process here has
    target = spawn([build(tmp_path, name=name)])
    target.wait_for(r"value=1 step=1")
    watch, started = start_watch(spawn, "-n", name)
    assert started is not None
    edit(tmp_path / f"{name}.c", "return 1;", "return 2;")
    assert wait_event(watch, "watch-reloaded")["redirected"] == ["value"]
    target.wait_for(r"value=2 step=1")


def test_a_failed_multi_file_save_keeps_the_good_file_pending(
    tmp_path: Path, spawn: SpawnFactory, program: Target
) -> None:
    # A long quiet time: both saves are one burst, one reload.
    watch, _ = start_watch(spawn, "-p", program.pid, "--debounce", "400")
    source, util = tmp_path / "prog.c", tmp_path / "util.c"
    edit(source, "return 1;", "return 2;")
    edit(util, "return STEP;", "return STEP + 1")
    failed = wait_event(watch, "watch-failed")
    assert sorted(failed["sources"]) == sorted([real(source), real(util)])
    mark = program.mark()
    program.wait_for(r"value=1 step=1", after=mark)  # neither file applied

    edit(util, "return STEP + 1", "return STEP + 1;")
    event = wait_event(watch, "watch-reloaded")
    assert sorted(event["sources"]) == sorted([real(source), real(util)])
    assert sorted(event["redirected"]) == ["step", "value"]
    program.wait_for(r"value=2 step=2")


def test_a_file_saved_after_the_build_is_pending_when_watching_starts(
    tmp_path: Path, spawn: SpawnFactory, program: Target
) -> None:
    source = tmp_path / "prog.c"
    edit(source, "return 1;", "return 2;")  # after the build, before watching
    watch, _ = start_watch(spawn, "-p", program.pid)
    pending = wait_event(watch, "pending-since-build")
    assert pending["sources"] == [real(source)]
    edit(tmp_path / "util.c", "return STEP;", "return STEP + 1;")
    event = wait_event(watch, "watch-reloaded")
    assert sorted(event["sources"]) == sorted([real(source), real(tmp_path / "util.c")])
    program.wait_for(r"value=2 step=2")

"""Debuggers and profilers see reloaded code: debug objects, relive gdb, unwind, perf, cores."""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

import relive
from relive.events import Event, FunctionAdded, FunctionRedirected
from relive.patch.debugfiles import list_debug_objects
from relive.process.procfs import get_start_time
from support import BACKTRACE_PROG, RELIVE, SpawnFactory, Target, compile_c, wait_until

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb is not installed")

PROG = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int counter;
int leaf(int x) { return x + 1; }
__attribute__((noinline)) int middle(int v) {
    int local = v * 2;
    return leaf(local) + 1;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { counter = middle(counter) % 1000; printf("c=%d\n", counter); usleep(20000); }
}
"""

NEW_MIDDLE = """__attribute__((noinline)) int middle(int v) {
    int local = v * 3;
    int extra = local + 7;
    return leaf(local) + extra - extra + 1;
}"""


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def _reload(pid: int, *paths: Path, **options: object) -> list[Event]:
    events: list[Event] = []
    relive.attach(pid, on_event=events.append).reload(list(paths), **options)  # type: ignore[arg-type]
    return events


def _redirected(events: list[Event]) -> dict[str, int]:
    return {e.name: e.new_address for e in events if isinstance(e, FunctionRedirected)}


def _start_middle(tmp_path: Path, spawn: SpawnFactory, flags: tuple[str, ...] = ("-g", "-O0")):  # type: ignore[no-untyped-def]
    exe = compile_c(tmp_path, PROG, flags=flags)
    target = spawn([exe])
    target.wait_for(r"c=\d+")
    return exe, target


def _reload_new_middle(tmp_path: Path, spawn: SpawnFactory) -> tuple[Target, int]:
    """Start PROG, replace ``middle`` with NEW_MIDDLE and reload; the new address."""
    _, target = _start_middle(tmp_path, spawn)
    source = tmp_path / "prog.c"
    old = source.read_text()
    _edit(source, old[old.index("__attribute__") : old.index("int main")], NEW_MIDDLE + "\n")
    return target, _redirected(_reload(target.pid, source))["middle"]


def test_debug_object_has_code_symbols_and_lines_at_runtime_addresses(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, new_middle = _reload_new_middle(tmp_path, spawn)

    objects = list_debug_objects(target.pid, get_start_time(target.pid))
    assert [o.live for o in objects] == [True]
    with objects[0].path.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        symbols = {s.name: s["st_value"] for s in symtab.iter_symbols()}
        assert symbols["middle"] == new_middle
        assert "leaf" not in symbols  # unchanged: the program's own symbols describe it
        text = elf.get_section_by_name(".text.middle")
        assert text is not None and text["sh_addr"] == new_middle
        dwarf = elf.get_dwarf_info()
        rows = []
        for cu in dwarf.iter_CUs():
            program = dwarf.line_program_for_CU(cu)
            assert program is not None
            rows += [
                (entry.state.address, entry.state.line)
                for entry in program.get_entries()
                if entry.state is not None and entry.state.address >= new_middle
            ]
    lines = {line for address, line in rows if address < new_middle + 0x100}
    assert {8, 9, 10} <= lines  # the new body's lines, at the new addresses
    decoded = subprocess.run(
        ["readelf", "--debug-dump=decodedline", str(objects[0].path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert f"{new_middle:#x}" in decoded


def _relive_gdb(target: list[str], *commands: str) -> str:
    """What ``relive gdb TARGET -- -batch -ex COMMAND...`` printed (stdout, then stderr)."""
    batch = [arg for command in commands for arg in ("-ex", command)]
    gdb = subprocess.run(
        [*RELIVE, "gdb", *target, "--", "-batch", *batch],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return gdb.stdout + gdb.stderr


@needs_gdb
def test_relive_gdb_breaks_in_new_code_and_unwinds_through_it(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, new_middle = _reload_new_middle(tmp_path, spawn)

    out = _relive_gdb(
        ["-p", str(target.pid)], "break leaf", "continue", "bt", "frame 1", "info locals"
    )
    assert "relive: loaded 1 reload(s)" in out, out
    frames = re.findall(
        r"^#(\d)\s+(?:(0x[0-9a-f]+) in )?(\w+) \(.*\) at .*prog\.c:(\d+)", out, re.M
    )
    assert [(f[0], f[2]) for f in frames[:3]] == [("0", "leaf"), ("1", "middle"), ("2", "main")]
    middle_pc = int(frames[1][1], 16)
    assert new_middle <= middle_pc < new_middle + 0x100  # the new function's frame
    assert frames[1][3] == "10"  # the new code's line of the call to leaf
    assert re.search(r"^extra = -?\d+", out, re.M), out  # a local only the new code has
    assert target.alive()
    target.wait_for(r"c=\d+", after=target.mark())


@needs_gdb
def test_relive_gdb_stops_lists_and_finishes_in_a_new_function(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, _ = _reload_new_middle(tmp_path, spawn)
    commands = ["break prog.c:9", "continue", "info locals", "list 9,9", "finish"]
    out = _relive_gdb(["-p", str(target.pid)], *commands)
    assert re.search(r"Breakpoint 1(\.\d)?, middle \(v=\d+\) at .*prog\.c:9", out), out
    assert re.search(r"^local = \d+", out, re.M), out  # set by line 8 of the new body
    assert re.search(r"^9\s+int extra = local \+ 7;", out, re.M), out  # list: the new source
    assert re.search(r"Value returned is \$1 = \d+", out), out  # finish
    assert target.alive()
    target.wait_for(r"c=\d+", after=target.mark())


def test_perf_map_lists_each_new_function(tmp_path: Path, spawn: SpawnFactory) -> None:
    _, target = _start_middle(tmp_path, spawn)
    perf_map = Path(f"/tmp/perf-{target.pid}.map")
    perf_map.unlink(missing_ok=True)
    source = tmp_path / "prog.c"
    _edit(source, "v * 2", "v * 5")
    _edit(source, "int main", "int added(int x) { return x - 1; }\nint main")
    _edit(source, "middle(counter) % 1000", "added(middle(counter)) % 1000")
    events = _reload(target.pid, source)
    try:
        addresses = {
            e.name: e.new_address
            for e in events
            if isinstance(e, FunctionRedirected | FunctionAdded)
        }
        lines = perf_map.read_text().splitlines()
        entries = {}
        for line in lines:
            start, size, name = line.split(" ", 2)
            entries[name] = (int(start, 16), int(size, 16))
        assert set(entries) == {"middle", "added", "main"}
        for name, (address, length) in entries.items():
            assert address == addresses[name]
            assert length > 0
    finally:
        perf_map.unlink(missing_ok=True)


def test_backtrace_walks_through_new_frames(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, BACKTRACE_PROG)
    target = spawn([exe])
    before = int(target.wait_for(r"frames=(\d+)").group(1))
    source = tmp_path / "prog.c"
    _edit(source, "depth3() + 0", "depth3() + 1000")  # depth2: the middle of the chain
    _edit(source, "depth2() + 0", "depth2() + 0 * 2")  # and depth1, redirected too
    _reload(target.pid, source)
    after = int(target.wait_for(r"frames=(1\d\d\d)", after=target.mark()).group(1))
    assert after - 1000 == before  # every frame found, through the new depth2


@needs_gdb
def test_relive_gdb_reads_a_core_dumped_by_new_code(tmp_path: Path, spawn: SpawnFactory) -> None:
    prog = PROG.replace(
        "int main(void) {", 'int main(void) {\n    (void)chdir(getenv("CORE_DIR"));'
    )
    exe = compile_c(tmp_path, prog)
    env_dir = tmp_path / "cores"
    env_dir.mkdir()
    with open("/proc/sys/kernel/core_pattern") as f:
        if not f.read().startswith("core"):
            pytest.skip("core_pattern sends cores elsewhere than the working directory")
    proc = subprocess.Popen(
        [exe],
        stdout=subprocess.PIPE,
        env={**os.environ, "CORE_DIR": str(env_dir)},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_CORE, (-1, -1)),
    )
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        source = tmp_path / "prog.c"
        _edit(
            source,
            "int local = v * 2;",
            "int local = v * 2;\n    if (v > 0) *(volatile int *)0 = local;",
        )
        _reload(proc.pid, source)
        assert proc.wait(timeout=30) < 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    cores = list(env_dir.glob("core*"))
    assert cores, "no core was written"
    out = _relive_gdb(["--core", str(cores[0]), str(exe)], "bt")
    assert re.search(r"#0 .*middle \(v=\d+\) at .*prog\.c:9", out), out
    assert re.search(r"#1 .*main \(\) at .*prog\.c:\d+", out), out


OPTIMISED_PROG = r"""
#include <stdio.h>
#include <unistd.h>
int counter;
__attribute__((noinline)) int leaf(int x) { return x + 1; }
__attribute__((noinline)) int middle(int v) {
    int local = counter * 3 + v;
    counter = leaf(local);
    return counter % 1000;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { counter = middle(counter) % 1000; printf("c=%d\n", counter); usleep(20000); }
}
"""


@needs_gdb
def test_hot_deoptimize_shows_optimised_out_locals(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, OPTIMISED_PROG, flags=("-g", "-O2"))
    target = spawn([exe])
    target.wait_for(r"c=\d+")

    def locals_after_the_call() -> str:
        return _relive_gdb(["-p", str(target.pid)], "break prog.c:9", "continue", "info locals")

    assert "local = <optimized out>" in locals_after_the_call()
    events = _reload(target.pid, tmp_path / "prog.c", debug=True)
    redirected = _redirected(events)
    assert {"middle", "leaf"} <= set(redirected)  # every function, changed or not
    assert re.search(r"^local = \d+", locals_after_the_call(), re.M)
    target.wait_for(r"c=\d+", after=target.mark())
    # A plain reload puts optimised code back.
    back = _redirected(_reload(target.pid, tmp_path / "prog.c"))
    assert {"middle", "leaf"} <= set(back)
    target.wait_for(r"c=\d+", after=target.mark())


def test_prune_removes_what_exited_processes_left_after_a_week() -> None:
    from relive.patch import debugfiles
    from relive.statedir import find_state_dir

    state = find_state_dir()
    dead = "999999999-1"  # no such pid
    live = f"{os.getpid()}-{get_start_time(os.getpid())}"
    week_ago = time.time() - debugfiles.KEEP_SECONDS - 60
    made = []
    for prefix in (dead, live):
        folder = state / "debug" / prefix
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("manifest.json", "0001-prog.debug"):
            (folder / name).write_bytes(b"[]")
            os.utime(folder / name, (week_ago, week_ago))
        (state / f"{prefix}.lock").write_bytes(b"")
        made += [folder, state / f"{prefix}.lock"]
    stamp = state / ".pruned"
    if stamp.exists():
        os.utime(stamp, (week_ago, week_ago))  # the last sweep was long ago
    try:
        debugfiles.prune_expired()
        assert not (state / "debug" / dead).exists()
        assert not (state / f"{dead}.lock").exists()
        assert (state / "debug" / live / "0001-prog.debug").exists()  # still running
        assert (state / f"{live}.lock").exists()
    finally:
        for path in made:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def test_big_debug_objects_are_written_in_the_background(
    tmp_path: Path, spawn: SpawnFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relive.patch import debugfiles

    monkeypatch.setattr(debugfiles, "BACKGROUND_RELOCATIONS", 0)  # every object is "big"
    _, target = _start_middle(tmp_path, spawn)
    source = tmp_path / "prog.c"
    _edit(source, "v * 2", "v * 7")
    new_middle = _redirected(_reload(target.pid, source))["middle"]
    [obj] = list_debug_objects(target.pid, get_start_time(target.pid))
    wait_until(obj.path.exists, what="the debug object written in the background")
    with obj.path.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection)
        assert {s.name: s["st_value"] for s in symtab.iter_symbols()}["middle"] == new_middle
    # The background writer holds nothing a next reload needs (the process lock).
    _edit(source, "v * 7", "v * 8")
    assert "middle" in _redirected(_reload(target.pid, source))

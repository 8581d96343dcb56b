"""Long sessions (issue 13 §3): reloads share per-module arenas instead of mapping
blocks of their own, and the journal is the arenas' allocator state.

Real processes, real ptrace: the mapping count is read from /proc/PID/maps.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import relive
from relive.patch.journal import LoadedBlock, journal_path, load_journal, save_journal
from support import (
    SWITCHING,
    VALUE_LOOP_MAIN,
    VALUE_WORKER_MAIN,
    SpawnFactory,
    Target,
    compile_c,
    read_memory,
    reload,
    reload_value,
    set_value,
    start_value_program,
    wait_reading_stdin,
)

PROG = (
    r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int value(int x) { return x + 1; }
"""
    + VALUE_LOOP_MAIN
)


def map_count(pid: int) -> int:
    return len(Path(f"/proc/{pid}/maps").read_text().splitlines())


def start(tmp_path: Path, spawn: SpawnFactory) -> tuple[Target, Path]:
    return start_value_program(tmp_path, spawn, PROG)


def original_entry(target: Target) -> tuple[int, bytes]:
    [patch] = load_journal(target.pid).patches.values()
    return patch.entry, bytes.fromhex(patch.original)


def test_reloads_share_two_arenas_and_no_page_is_writable_and_executable(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start(tmp_path, spawn)
    before = map_count(target.pid)
    reload_value(target, source, 2)
    after_first = map_count(target.pid)
    assert after_first - before <= 2
    for n in range(3, 33):
        reload_value(target, source, n)
    assert map_count(target.pid) == after_first
    journal = load_journal(target.pid)
    assert {c.kind for c in journal.arenas} == {"code", "data"}
    # Reclaimed blocks with no data left (value() loads none) are forgotten.
    assert 1 <= len(journal.blocks) <= 31 and not any(b.pending for b in journal.blocks)
    assert all(not b.reclaimed or b.data[1] for b in journal.blocks)
    # Blocks in use never overlap, and each lies in an arena of its kind.
    for kind, parts in (("code", ("code",)), ("data", ("data", "own"))):
        ranges = sorted(
            tuple(getattr(b, part))
            for b in journal.blocks
            for part in parts
            if getattr(b, part)[1] and not (part != "data" and b.reclaimed)
        )
        assert all(a[0] + a[1] <= b[0] for a, b in itertools.pairwise(ranges))
        chunks = [c for c in journal.arenas if c.kind == kind]
        assert all(
            any(c.address <= r[0] and r[0] + r[1] <= c.address + c.size for c in chunks)
            for r in ranges
        )
    perms = {
        line.split()[1]
        for line in Path(f"/proc/{target.pid}/maps").read_text().splitlines()
        if any(
            c.address <= int(line.split("-")[0], 16) < c.address + c.size for c in journal.arenas
        )
    }
    assert perms == {"r-xp", "rw-p"}


def test_a_block_recorded_for_a_reload_that_never_committed_is_free_again(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start(tmp_path, spawn)
    reload_value(target, source, 2)
    journal = load_journal(target.pid)
    [block] = journal.blocks
    # As a relive killed after writing ahead and before any jump: its block is pending.
    code = block.code[0] + block.code[1]
    journal.blocks.append(LoadedBlock(str(source), block.module, [code, 64], [0, 0], pending=True))
    save_journal(journal)
    assert load_journal(target.pid).blocks == [block]
    reload_value(target, source, 3)
    # the space was reused (the first block, superseded, may be reclaimed and forgotten)
    assert load_journal(target.pid).blocks[-1].code[0] < code + 64


def test_a_chunk_recorded_but_never_mapped_is_forgotten(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start(tmp_path, spawn)
    reload_value(target, source, 2)
    journal = load_journal(target.pid)
    [code] = [c for c in journal.arenas if c.kind == "code"]
    # As a relive killed after writing the chunk ahead and before mapping it.
    journal.arenas.append(dataclasses.replace(code, address=code.address + code.size + (1 << 20)))
    save_journal(journal)
    assert load_journal(target.pid).arenas == [c for c in journal.arenas[:-1]]
    reload_value(target, source, 3)


def test_blocks_written_as_objects_still_load(tmp_path: Path, spawn: SpawnFactory) -> None:
    target, source = start(tmp_path, spawn)
    reload_value(target, source, 2)
    journal = load_journal(target.pid)
    path = journal_path(target.pid, journal.start_time)
    raw = json.loads(path.read_text())
    raw["blocks"] = [dataclasses.asdict(b) for b in journal.blocks]  # as this morning's relive
    path.write_text(json.dumps(raw))
    assert load_journal(target.pid).blocks == journal.blocks
    reload_value(target, source, 3)
    assert json.loads(path.read_text())["blocks"][0][:2] == [str(source), journal.blocks[0].module]


def test_an_old_journal_with_regions_only_still_loads_and_undoes(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start(tmp_path, spawn)
    reload_value(target, source, 2)
    address, original = original_entry(target)
    path = journal_path(target.pid, load_journal(target.pid).start_time)
    raw = json.loads(path.read_text())
    raw["regions"] = [[c["address"], c["size"]] for c in raw.pop("arenas")]
    del raw["blocks"]
    path.write_text(json.dumps(raw))
    journal = load_journal(target.pid)
    assert journal.regions and not journal.arenas
    assert [p.name for p in relive.attach(target.pid).status()] == ["value"]
    relive.attach(target.pid).undo()
    target.wait_for(r"^value 1$", after=target.mark())
    assert read_memory(target.pid, address, len(original)) == original


def live_code(pid: int) -> list[tuple[int, int]]:
    return [tuple(b.code) for b in load_journal(pid).blocks if not b.reclaimed]  # type: ignore[misc]


def test_superseded_code_is_reclaimed_and_reused_and_tools_forget_it(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start(tmp_path, spawn)
    Path(f"/tmp/perf-{target.pid}.map").unlink(missing_ok=True)  # an earlier process's
    addresses = set()
    for n in range(2, 22):
        reload_value(target, source, n)
        [patch] = load_journal(target.pid).patches.values()
        addresses.add(patch.target)
        assert len(live_code(target.pid)) == 1  # the one before was dead at the switch
    # The new code of each reload goes where the code before the last one was.
    assert len(addresses) <= 3, [hex(a) for a in addresses]
    [(start_, _size)] = live_code(target.pid)
    perf = Path(f"/tmp/perf-{target.pid}.map").read_text().splitlines()
    perf = [line for line in perf if line.endswith(" value")]
    assert [int(line.split()[0], 16) for line in perf] == [start_]
    assert load_journal(target.pid).patches[patch_key(target)].earlier == []


def patch_key(target: Target) -> str:
    [key] = load_journal(target.pid).patches
    return key


PARKING_PROG = (
    r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
int fd;
__attribute__((noinline)) int value(int x) {
    char c;
    if (x) read(fd, &c, 1);  /* the worker waits here: inside this version */
    if (x < 0) puts("never");  /* data: a reclaimed block stays in the journal */
    return x + 1;
}
"""
    + VALUE_WORKER_MAIN
)


def test_a_thread_parked_in_old_code_keeps_it_until_it_leaves(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start_value_program(
        tmp_path, spawn, PARKING_PROG, stdin_pipe=True, link_flags=("-pthread",)
    )

    def reload_no_move(n: int) -> list[bool]:
        set_value(source, n)
        reload(target.pid, source, move_frames=False)
        target.wait_for(rf"^value {n}$", after=target.mark())
        return [b.reclaimed for b in load_journal(target.pid).blocks]

    assert reload_no_move(2) == [False]  # the worker stays in the original value()
    target.write(b"x")  # it returns, calls value() v2 and waits in there
    target.wait_for(r"^worker 2$")
    assert reload_no_move(3) == [False, False]  # v2 is superseded, but the worker is in it
    assert reload_no_move(4) == [False, True, False]  # v3: nobody was in it
    target.write(b"x")  # the worker leaves v2 (1 + 2), enters v4
    target.wait_for(r"^worker 3$")
    assert reload_no_move(5) == [True, True, False, False]  # v2 is free now; v4 is kept
    target.write(b"x")
    target.wait_for(r"^worker 5$")  # v4's code was intact
    assert target.alive()


ESCAPING = (
    r"""
#include <stdio.h>
#include <unistd.h>
void *volatile where;
/* A string: each block holds data, so a reclaimed one stays in the journal. */
__attribute__((noinline)) int value(int x) { if (x < 0) puts("never"); return x + 1; }
"""
    + VALUE_LOOP_MAIN
)


def test_code_whose_address_was_taken_is_never_reclaimed(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start_value_program(tmp_path, spawn, ESCAPING)
    # A label's address, stored where the program can keep it: the code escapes.
    source.write_text(
        ESCAPING.replace(
            "return x + 1; }",
            "where = &&here; here: return x + 2; }",
        )
    )
    reload(target.pid, source)
    target.wait_for(r"^value 2$", after=target.mark())
    [escaped] = load_journal(target.pid).blocks
    assert escaped.escaped
    for n in (3, 4, 5):
        source.write_text(ESCAPING.replace("return x + 1;", f"return x + {n};"))
        reload(target.pid, source)
        target.wait_for(rf"^value {n}$", after=target.mark())
    blocks = load_journal(target.pid).blocks
    assert blocks[0] == escaped and not blocks[0].reclaimed
    assert [b.reclaimed for b in blocks[1:]] == [True, True, False]


def test_undo_after_many_reloads_restores_the_original_and_leaves_no_arena(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start(tmp_path, spawn)
    maps = map_count(target.pid)
    for n in range(2, 12):
        reload_value(target, source, n)
    address, original = original_entry(target)
    relive.attach(target.pid).undo()
    target.wait_for(r"^value 1$", after=target.mark())
    assert read_memory(target.pid, address, len(original)) == original
    journal = load_journal(target.pid)
    assert journal.arenas == [] and journal.blocks == []
    assert map_count(target.pid) == maps
    reload_value(target, source, 7)  # and reloads start over in a new arena
    assert len(load_journal(target.pid).arenas) == 2


FORKING = r"""
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <unistd.h>
__attribute__((noinline)) int value(int x) { return x + 1; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    char line[16];
    while (fgets(line, sizeof line, stdin))  /* one child per line; the parent only forks */
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (;;) { printf("child %d value %d\n", (int)getpid(), value(0)); usleep(2000); }
        }
    return 0;
}
"""


def test_a_forked_child_never_reuses_what_it_inherited(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, FORKING)
    source = tmp_path / "prog.c"
    parent = spawn([exe], stdin_pipe=True)
    wait_reading_stdin(parent)
    set_value(source, 2)
    relive.attach(parent.pid).reload([source])
    [inherited] = load_journal(parent.pid).blocks
    parent.write(b"f\n")
    child = int(parent.wait_for(r"^child (\d+) value 2$")[1])
    for n in (3, 4, 5):  # the child's code of 2 is superseded: never reused in the child
        set_value(source, n)
        relive.attach(child).reload([source])
        parent.wait_for(rf"^child {child} value {n}$", after=parent.mark())
    start, size = inherited.code
    for block in load_journal(child).blocks:
        if block.source:  # the child's own reloads
            assert block.code[0] + block.code[1] <= start or block.code[0] >= start + size
    relive.attach(child).undo()
    parent.wait_for(rf"^child {child} value 1$", after=parent.mark())
    assert [row.name for row in relive.attach(parent.pid).status()] == ["value"]


UNWINDING = (
    r"""
#include <execinfo.h>
#include <stdio.h>
#include <unistd.h>
/* backtrace() walks through value()'s frame only if the program's unwinder has
   the table of the code running it: a negative value says it stopped there. */
__attribute__((noinline)) int value(int x) {
    void *frames[16];
    if (backtrace(frames, 16) <= 2) return -1;
    return x + 1;
}
"""
    + VALUE_LOOP_MAIN
)


def test_reclaimed_code_leaves_the_programs_unwinder_exact(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    from relive.patch.debugfiles import list_debug_objects

    target, source = start_value_program(tmp_path, spawn, UNWINDING)
    for n in range(2, 9):
        set_value(source, n)
        before = target.mark()
        reload(target.pid, source)  # its table registered, the one before taken out
        # Until the table is registered (after the threads ran on) backtrace()
        # stops short: such lines may be read after the reload returned.
        target.wait_for(rf"^value {n}$", after=before)
        mark = target.lines.index(f"value {n}", before)
        for _ in range(5):
            target.wait_for(rf"^value {n}$", after=target.mark())
        assert not any(line.startswith("value -") for line in target.lines[mark:])
    # The code before the last is freed unless the thread was inside it (in
    # backtrace()) at the switch: then the next reload frees it.
    live = live_code(target.pid)
    assert 1 <= len(live) <= 2
    [patch] = load_journal(target.pid).patches.values()
    objects = list_debug_objects(target.pid)
    assert [o.base for o in objects if o.live] == [patch.target]  # gdb loads the running one
    manifest = json.loads((objects[0].path.parent / "manifest.json").read_text())
    registered = [e["unwind_table"] for e in manifest if e["unwind_table"] is not None]
    assert len(registered) == len(live)  # the tables of code that may run, and only those
    relive.attach(target.pid).undo()
    target.wait_for(r"^value 1$", after=target.mark())
    assert target.alive() and load_journal(target.pid).arenas == []


def test_a_jump_table_does_not_keep_code_from_being_reclaimed(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, source = start_value_program(tmp_path, spawn, SWITCHING)  # -O0: a jump table
    for n in (2, 3, 4):
        reload_value(target, source, n)
    blocks = load_journal(target.pid).blocks
    assert not any(b.escaped for b in blocks)
    assert [b.reclaimed for b in blocks] == [True, True, False]

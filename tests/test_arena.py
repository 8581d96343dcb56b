"""Long sessions (issue 13 §3): reloads share per-module arenas instead of mapping
blocks of their own, and the journal is the arenas' allocator state.

Real processes, real ptrace: the mapping count is read from /proc/PID/maps.
"""

from __future__ import annotations

import json
from pathlib import Path

import relive
from relive.patch.journal import LoadedBlock, journal_path, load_journal, save_journal
from support import SpawnFactory, Target, compile_c, reload

PROG = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int value(int x) { return x + 1; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 0;; i++) { printf("value %d\n", value(0)); usleep(2000); }
}
"""


def map_count(pid: int) -> int:
    return len(Path(f"/proc/{pid}/maps").read_text().splitlines())


def set_value(source: Path, n: int) -> None:
    text = source.read_text()
    start = text.index("return x + ") + len("return x + ")
    source.write_text(text[:start] + str(n) + text[text.index(";", start) :])


def start(tmp_path: Path, spawn: SpawnFactory) -> tuple[Target, Path]:
    exe = compile_c(tmp_path, PROG)
    target = spawn([exe])
    target.wait_for(r"^value 1$")
    return target, tmp_path / "prog.c"


def reload_value(target: Target, source: Path, n: int) -> None:
    set_value(source, n)
    reload(target.pid, source)
    target.wait_for(rf"^value {n}$", after=target.mark())


def original_entry(target: Target) -> tuple[int, bytes]:
    [patch] = load_journal(target.pid).patches.values()
    return patch.entry, bytes.fromhex(patch.original)


def read(pid: int, address: int, size: int) -> bytes:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(address)
        return mem.read(size)


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
    assert len(journal.blocks) == 31 and not any(b.pending for b in journal.blocks)
    # Blocks never overlap, and each lies in an arena of its kind.
    for kind in ("code", "data"):
        ranges = sorted(tuple(getattr(b, kind)) for b in journal.blocks if getattr(b, kind)[1])
        assert all(a[0] + a[1] <= b[0] for a, b in zip(ranges, ranges[1:], strict=False))
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
    assert load_journal(target.pid).blocks[1].code[0] < code + 64  # the space was reused


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
    assert read(target.pid, address, len(original)) == original

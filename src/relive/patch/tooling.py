"""The last step of a reload: make the new code visible to debuggers, profilers and
the program's own unwinder.  It runs after the threads were released, so it never
lengthens the stop, and a failure in it leaves the reload in place and becomes a
notice: the new code runs either way.

* unwind tables registered with libgcc (``patch.unwind``);
* a debug object per block (``patch.debugfiles``);
* the perf map ``/tmp/perf-PID.map``.

``undo`` retires the unwind tables of blocks whose code no longer runs, and
code that was reclaimed (``patch.reclaim``) is retired from all three before
its range is free for later reloads.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from relive.errors import ReliveError
from relive.link import LinkedImage
from relive.patch.debugfiles import (
    append_perf_map,
    prune_expired,
    prune_perf_map,
    reclaim_debug_objects,
    refresh_liveness,
    write_debug_objects,
)
from relive.patch.journal import Journal, LoadedBlock, save_journal
from relive.patch.modules import RunningModule, load_running_modules
from relive.patch.reclaim import mark_reclaimed
from relive.patch.unwind import (
    Unwinder,
    deregister_unwind_tables,
    find_unwinder,
    register_unwind_tables,
)


def publish_new_code(
    pid: int,
    modules: Sequence[RunningModule],
    journal: Journal,
    blocks: Sequence[tuple[str, LinkedImage]],
    reclaimed: Collection[tuple[int, int]] = (),
) -> list[str]:
    """Register, describe and map the new blocks (``(source, block)``); the notices.

    ``reclaimed``: ``(address, size)`` of code the reload freed, which the perf
    map stops describing (its debug objects were retired when it was freed).
    """
    notices = []
    images = [image for _, image in blocks]
    registered: list[int] = []
    unwinder = find_unwinder(modules)
    if unwinder is not None:
        try:
            registered = register_unwind_tables(pid, unwinder, images)
        except ReliveError as error:
            notices.append(
                f"unwind tables not registered ({error.message}): backtrace() and exceptions "
                "stop at the new code"
            )
    try:
        prune_expired()
        write_debug_objects(journal, blocks, registered)
    except ReliveError as error:
        notices.append(f"no debug object written ({error.message}): gdb shows ?? for new code")
    append_perf_map(pid, images, reclaimed)
    return notices


def retire_unused_code(pid: int, journal: Journal) -> list[str]:
    """After an undo: deregister the unwind tables of blocks no longer used; the notices."""
    try:
        retired = refresh_liveness(journal)
        unwinder = find_unwinder(load_running_modules(pid)) if retired else None
        if unwinder is not None:
            deregister_unwind_tables(pid, unwinder, retired)
    except ReliveError as error:
        return [f"unwind tables of undone code left registered ({error.message})"]
    return []


def deregister_dead_code(
    pid: int, journal: Journal, blocks: Sequence[LoadedBlock]
) -> tuple[list[LoadedBlock], list[str]]:
    """Retire the debug objects of dead code (``blocks``) and take its unwind tables
    out of the program's unwinder before its range is reused; the blocks that may
    be reclaimed, and notices.

    The manifest forgets the tables first: a relive killed in between leaves a
    table registered, never one deregistered twice (libgcc aborts on that).
    None is reclaimed when the tables cannot be deregistered: stale tables over
    reused addresses would mislead the program's unwinder.
    """
    if not blocks:
        return [], []
    ranges = {(b.code[0], b.code[1]) for b in blocks}
    unwinder: list[Unwinder | None] = []

    def may_deregister() -> bool:
        unwinder.append(find_unwinder(load_running_modules(pid)))
        return unwinder[0] is not None

    try:
        tables = reclaim_debug_objects(journal, ranges, may_deregister)
    except ReliveError as error:
        return [], [f"superseded code kept ({error.message})"]
    if tables is None:
        return [], ["superseded code kept: its unwind tables cannot be deregistered"]
    if tables and unwinder and unwinder[0] is not None:
        try:
            deregister_unwind_tables(pid, unwinder[0], tables)
        except ReliveError as error:
            # Whether the tables are still registered is unknown, and the manifest
            # no longer lists them: the code and its tables are kept for good.
            for block in blocks:
                block.escaped = True
            return [], [f"superseded code kept for good ({error.message})"]
    return list(blocks), []


def reclaim_code(pid: int, journal: Journal, blocks: Sequence[LoadedBlock]) -> list[str]:
    """Free the code of ``blocks`` (proven dead) for later reloads, once the tools no
    longer claim it: debug objects retired, unwind tables deregistered, perf map
    lines removed.  Saves the journal; the notices."""
    freed, notices = deregister_dead_code(pid, journal, blocks)
    if not freed:
        if any(block.escaped for block in blocks):
            try:
                save_journal(journal)
            except ReliveError as error:
                notices.append(f"journal not saved ({error.message})")
        return notices
    ranges = mark_reclaimed(journal, freed)
    try:
        save_journal(journal)
    except ReliveError as error:
        return [f"reclaimed code not recorded ({error.message})"]
    prune_perf_map(pid, ranges)
    return []

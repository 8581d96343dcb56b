"""The transaction: allocate, write the new code, protect it, stop, check, write entry
jumps, resume.

Nothing the program can reach is written until everything is resolved, linked
and checked.  The new code is written while the program runs (nothing jumps
to it yet); threads are held only to check where they are and to write the
entry jumps.  relive's own SIGINT/SIGTERM are held back meanwhile, so an
interrupted relive finishes the transaction before it exits.
"""

from __future__ import annotations

import bisect
import itertools
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from relive.arch.base import Arch
from relive.errors import LinkError, ReliveError, UnsafePatch
from relive.link import LinkedImage, link
from relive.patch.loops import find_threads_in_loops, loop_head_refusal
from relive.patch.placement import iter_candidate_addresses, page_round
from relive.patch.plan import ReloadPlan
from relive.process.memory import ProcessMemory
from relive.process.procfs import read_maps
from relive.process.remote import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    remote_mprotect,
    remote_munmap,
    try_remote_mmap_at,
)
from relive.process.threads import stop_all, stop_one

#: Attempts to find every thread outside the bytes being replaced.
MAX_ATTEMPTS = 12


@dataclass(frozen=True)
class EntryWrite:
    """One entry jump: where, what is there now, what goes there."""

    name: str
    address: int  # first byte overwritten (after a kept landing pad)
    expected: bytes  # what must be there now
    new: bytes
    #: The function's code [start, end): a thread anywhere in it is in the way too
    #: if ``loops_into_window()`` (a branch inside it targets the replaced bytes).
    function: tuple[int, int] = (0, 0)
    loops_into_window: Callable[[], bool] | None = None
    #: Where the new jump goes (0 when restoring original bytes).
    target: int = 0
    #: For the journal: the source file and module the function belongs to.
    source: str = ""
    module: str = ""

    def blocks(self, pc: int) -> bool:
        """Whether a thread at ``pc`` would be hurt by this write."""
        if self.address < pc < self.address + len(self.new):
            return True
        start, end = self.function
        # Disassembling is only worth it when a thread is inside the function.
        return start <= pc < end and self.loops_into_window is not None and self.loops_into_window()


@contextmanager
def held_signals() -> Iterator[None]:
    """Defer SIGINT/SIGTERM/SIGHUP to relive until the transaction is over."""
    held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def allocate_and_link(pid: int, plan: ReloadPlan, arch: Arch) -> LinkedImage:
    """Link the plan at a reachable free address and map that memory in the target."""
    size = page_round(plan.layout.size)
    low_memory = not plan.module.image.is_pie_or_shared
    last_error: LinkError | None = None
    maps = read_maps(pid)
    candidates = iter_candidate_addresses(
        maps, plan.module, size, arch.jump_reach, low_memory, plan.layout.alignment
    )
    for address in candidates:
        try:
            image = link(plan.layout, address)
        except LinkError as error:
            last_error = error
            continue
        # One idle thread is enough: nothing refers to the new block yet, and a
        # mapping the program makes meanwhile only makes this address fail (EEXIST).
        with stop_one(pid) as stopped:
            mapped = try_remote_mmap_at(
                stopped,
                address,
                size,
                PROT_READ | PROT_WRITE,  # executable only once written: see protect_code
                MAP_PRIVATE | MAP_ANONYMOUS,
            )
        if mapped is not None:
            return image
    if last_error is not None:
        raise last_error
    raise ReliveError(
        f"no free address within reach of {plan.module.name} for {size} bytes of new code",
        hint="the address space near the module is full; restart the program",
    )


def write_block(memory: ProcessMemory, image: LinkedImage) -> None:
    """Write the new code and data (the program cannot reach it yet)."""
    memory.write(image.base, image.data)


def protect_code(pid: int, image: LinkedImage) -> None:
    """Make the block's code pages read+execute (they were written read+write).

    No page is ever writable and executable at once.  Later entry jumps into
    this code are written through /proc/PID/mem, which the kernel allows on
    read-only pages for a tracer, as for the program's own text.
    """
    code = page_round(image.layout.code_size)
    if code:
        with stop_one(pid) as stopped:
            remote_mprotect(stopped, image.base, code, PROT_READ | PROT_EXEC)


def release_block(pid: int, image: LinkedImage) -> None:
    """Give back a block that will not be used (best effort, after a failure)."""
    try:
        with stop_one(pid) as stopped:
            remote_munmap(stopped, image.base, page_round(len(image.data)))
    except ReliveError:
        pass


@dataclass(frozen=True)
class EntryReport:
    """What ``write_entries`` saw: time held, and where each thread stood."""

    held_seconds: float
    positions: list[tuple[int, int, int]]  # (tid, pc, sp) at the moment of writing


def write_entries(pid: int, writes: list[EntryWrite], arch: Arch | None = None) -> EntryReport:
    """Stop every thread, wait until none is in the way, write all jumps, resume.

    Everything that can be is prepared while the program runs (the pages of
    the entries read, the blocking ranges indexed), so the threads are held for
    one read and one write per page of entries, however many there are.
    With ``arch``, a function whose loop re-enters its replaced bytes also
    waits until no thread has a return address into it.
    """
    looping = {
        w.name: w.function
        for w in writes
        if arch is not None and w.loops_into_window is not None and w.loops_into_window()
    }
    with ProcessMemory(pid, poke_tid=pid) as memory:
        prepared = memory.prepare_edits([(w.address, w.expected, w.new) for w in writes])
        blockers = _BlockerIndex(writes)
        with stop_all(pid) as stopped:
            for attempt in range(MAX_ATTEMPTS):
                found = blockers.find(stopped.iter_pcs())
                in_loop = []
                if not found and arch is not None:
                    in_loop = find_threads_in_loops(stopped, memory, arch, looping)
                if not found and not in_loop:
                    break
                if attempt == MAX_ATTEMPTS - 1:
                    if in_loop:
                        raise loop_head_refusal(in_loop[0][1], in_loop[0][0])
                    tid, name = found[0]
                    raise UnsafePatch(
                        f"thread {tid} keeps executing the first bytes of {name}; "
                        f"tried {MAX_ATTEMPTS} times",
                        hint="reload again, or reload when the program is less busy",
                    )
                stopped.resume_briefly(0.0005 * (2**attempt))
            mismatched = prepared.apply(memory)
            if mismatched:
                _refuse_unexpected(memory, writes[mismatched[0]])
            positions = list(stopped.iter_positions())
    return EntryReport(stopped.stopped_seconds, positions)


class _BlockerIndex:
    """Which writes a thread's PC is in the way of, by bisecting sorted ranges."""

    def __init__(self, writes: list[EntryWrite]) -> None:
        spans = sorted((*_blocking_range(w), k) for k, w in enumerate(writes))
        self.writes = writes
        self.spans = spans
        self.starts = [lo for lo, _, _ in spans]
        self.reach = list(itertools.accumulate((hi for _, hi, _ in spans), max))

    def find(self, pcs: Iterable[tuple[int, int]]) -> list[tuple[int, str]]:
        found = []
        for tid, pc in pcs:
            j = bisect.bisect_right(self.starts, pc) - 1
            while j >= 0 and self.reach[j] > pc:
                write = self.writes[self.spans[j][2]]
                if write.blocks(pc):
                    found.append((tid, write.name))
                j -= 1
        return found


def _blocking_range(write: EntryWrite) -> tuple[int, int]:
    start, end = write.function
    window = (write.address, write.address + len(write.new))
    if end <= start:
        return window
    return min(start, window[0]), max(end, window[1])


def _refuse_unexpected(memory: ProcessMemory, write: EntryWrite) -> None:
    current = memory.read(write.address, len(write.expected))
    raise ReliveError(
        f"the entry of {write.name} at {write.address:#x} holds unexpected bytes "
        f"({current.hex()}, expected {write.expected.hex()})",
        hint="another tool patched it; undo that first, or restart the program",
    )


def now() -> float:
    """Monotonic seconds, for phase timings."""
    return time.perf_counter()

"""Writing the entry jumps: every thread held, none in the way, all jumps at once.

Threads are held only to check where they are and to write the entry jumps;
everything else (the pages of the entries read, the blocking ranges indexed) is
prepared while the program runs.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from relive.arch.base import Arch
from relive.errors import ReliveError, UnsafePatch
from relive.patch.entries import EntryWrite
from relive.patch.frames import FrameMover, FramePlan
from relive.patch.loops import find_threads_in_loops, loop_head_refusal
from relive.process.memory import ProcessMemory
from relive.process.threads import StoppedProcess, stop_all

#: Attempts to find every thread outside the bytes being replaced.
MAX_ATTEMPTS = 12


@dataclass(frozen=True)
class EntryReport:
    """What ``write_entries`` saw: how long the threads were stopped, and where each stood."""

    stopped_seconds: float
    positions: list[tuple[int, int, int]]  # (tid, pc, sp) at the moment of writing
    frames: FramePlan | None = None  # frames moved into new code, and frames that stay
    #: ``time.monotonic()`` right after the jumps were written (how close together
    #: the processes of ``reload --all`` switched).
    written_at: float = 0.0


def write_entries(
    pid: int,
    writes: list[EntryWrite],
    arch: Arch | None = None,
    frames: FrameMover | None = None,
    values: Sequence[tuple[int, bytes]] = (),
    inspect: Callable[[StoppedProcess, ProcessMemory], None] | None = None,
) -> EntryReport:
    """Stop every thread, wait until none is in the way, write all jumps, resume.

    Everything that can be is prepared while the program runs (the pages of
    the entries read, the blocking ranges indexed), so the threads are held for
    one read and one write per page of entries, however many there are.
    With ``arch``, a function whose loop re-enters its replaced bytes also
    waits until no thread has a return address into it.  With ``frames``,
    frames inside old code move to the new code in the same stop (a thread
    whose frames all move is in nobody's way).  ``values`` (address, bytes),
    the initial values ``--reinit`` chose, are written right after the jumps:
    a reload refused here has changed no running variable.  ``inspect`` looks at
    the held threads once everything is written (``patch.reclaim``).
    """
    moves = None
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
                moves = frames.plan(stopped, memory) if frames is not None else None
                pcs = stopped.iter_pcs()
                if moves is not None:
                    pcs = ((t, pc) for t, pc in pcs if not moves.moves_pc(t))
                found = blockers.find(pcs)
                in_loop = []
                if not found and arch is not None:
                    in_loop = find_threads_in_loops(stopped, memory, arch, looping)
                    if moves is not None:
                        in_loop = [(t, n) for t, n in in_loop if not moves.covers(t, n)]
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
            written_at = time.monotonic()
            if mismatched:
                _refuse_unexpected(memory, writes[mismatched[0]])
            for address, data in values:
                memory.write(address, data)
            if frames is not None and moves is not None:
                frames.apply(moves, stopped, memory)
            if inspect is not None:
                inspect(stopped, memory)
            positions = list(stopped.iter_positions())
    return EntryReport(stopped.stopped_seconds, positions, moves, written_at)


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

"""Reclaiming code a later reload superseded, once it is provably dead.

A reload's code (its block's range in the code arena) is only ever reached
through the entry jumps that lead to it, direct calls from code relive loaded
to the functions it added (journal definitions), and the stacks of threads
that were inside it.  It is dead, and its range free for later reloads, when:

* no entry jump leads into it and no entry lies in it (``Journal.patches``, as
  they stand once the jumps being written are committed);
* no function relive added lives in it (later reloads bind to those: direct
  calls from other loaded code, and their address may be stored anywhere);
* its address never escaped: no relocation of its own code or writable data
  takes the address of its code other than a direct call or jump (``&f`` of a
  replaced function binds to the original entry, see ``patch.binder``; the
  linker records what remains, ``LinkedImage.takes_own_code``);
* no thread's PC is in it and no word of any thread's stack (from its stack
  pointer to the end of that mapping) points into it: checked while every
  thread is held, after the jumps moved away from it.  Nothing can enter the
  code afterwards, so dead then is dead for good.

A thread whose stack cannot be scanned whole (its stack pointer outside any
mapping, or more than :data:`STACK_LIMIT` of stack) makes the check give up
for that stop: nothing is reclaimed, later reloads try again.  Not seen: the
frames of a thread interrupted by a signal while it runs the handler on an
alternate signal stack, below the interrupted stack pointer (the alternate
stack itself is scanned).

``undo`` frees a block's data too, under a stronger check: no variable relive
added lives in it and no word of the program's writable memory points into it
(the program may have stored the address of a string or constant the reload
brought).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from relive.errors import ReliveError
from relive.patch.journal import Journal, LoadedBlock
from relive.process.memory import ProcessMemory
from relive.process.procfs import Mapping, find_mapping
from relive.process.threads import StoppedProcess

#: Most stack read per thread at a stop (its used part: stack pointer to mapping end).
STACK_LIMIT = 1 << 20
#: Most writable memory scanned for pointers into data an undo would free (a
#: program with more keeps that data: the scan holds its threads).
DATA_SCAN_LIMIT = 16 << 20

Range = tuple[int, int]


def _pins(journal: Journal) -> list[int]:
    """Addresses in relive's code that something still reaches, as the journal will
    stand once its pending entry writes are committed."""
    addresses: list[int] = []
    for key, patch in journal.patches.items():
        pending = journal.pending.get(key)
        if pending is not None and pending.after is None:
            continue  # being undone
        if pending is None or pending.after is None:
            addresses += [patch.entry, patch.target]
    for pending in journal.pending.values():
        if pending.after is not None:
            addresses += [pending.after.entry, pending.after.target]
    for record in journal.sources.values():
        addresses += [d.address for d in record.definitions.values()]
    return sorted(addresses)


def _holds(sorted_addresses: list[int], start: int, size: int) -> bool:
    at = bisect.bisect_left(sorted_addresses, start)
    return at < len(sorted_addresses) and sorted_addresses[at] < start + size


def find_candidates(journal: Journal) -> list[LoadedBlock]:
    """Committed blocks whose code nothing reaches any more but, perhaps, threads."""
    pins = _pins(journal)
    return [
        block
        for block in journal.blocks
        if block.code[1]
        and not (block.reclaimed or block.pending or block.escaped)
        and not _holds(pins, block.code[0], block.code[1])
    ]


def find_data_candidates(journal: Journal, blocks: Iterable[LoadedBlock]) -> list[LoadedBlock]:
    """Of ``blocks`` (whose code is dead or absent), those whose data no definition holds."""
    pins = _pins(journal)
    return [b for b in blocks if b.data[1] and not _holds(pins, b.data[0], b.data[1])]


@dataclass
class DeadCodeCheck:
    """Run while every thread is held (``inspect``): which candidates no thread is in.

    ``maps`` are read before the stop (stacks do not move).  With ``data``, the
    program's writable memory is scanned for pointers into those blocks' data too.
    """

    candidates: Sequence[LoadedBlock]
    maps: list[Mapping]
    data: Sequence[LoadedBlock] = ()
    #: Blocks whose code no thread is in; blocks whose data nothing points to.
    dead: list[LoadedBlock] = field(default_factory=list)
    dead_data: list[LoadedBlock] = field(default_factory=list)

    @classmethod
    def for_undo(cls, journal: Journal, maps: list[Mapping]) -> DeadCodeCheck:
        """The check for an undo (its writes staged): code as for a reload, and the
        data of the blocks whose code is, or may turn out, dead."""
        candidates = find_candidates(journal)
        # Data of blocks without code of their own is kept: code elsewhere (an
        # inherited arena's) may refer to it without storing a pointer.
        freed = [b for b in journal.blocks if b.reclaimed and b.data[1]]
        return cls(candidates, maps, find_data_candidates(journal, [*candidates, *freed]))

    def inspect(self, stopped: StoppedProcess, memory: ProcessMemory) -> None:
        if not self.candidates and not self.data:
            return
        code = [(b.code[0], b.code[0] + b.code[1]) for b in self.candidates]
        busy: set[int] = set()
        positions = list(stopped.iter_positions())
        for _tid, pc, sp in positions:
            busy |= {k for k, (lo, hi) in enumerate(code) if lo <= pc < hi}
            words = self._stack(memory, sp)
            if words is None:
                return  # cannot tell: reclaim nothing this time
            # A return address may be the end of the range (a call as last instruction).
            busy |= find_words(words, [(lo, hi + 1) for lo, hi in code])
        self.dead = [b for k, b in enumerate(self.candidates) if k not in busy]
        if self.data:
            self.dead_data = self._unreferenced_data(
                stopped, memory, [sp for _, _, sp in positions]
            )

    def _stack(self, memory: ProcessMemory, sp: int) -> bytes | None:
        stack = find_mapping(self.maps, sp)
        if stack is None or stack.end - sp > STACK_LIMIT:
            return None
        try:
            return memory.read(sp & ~7, stack.end - (sp & ~7))
        except ReliveError:
            return None

    def _unreferenced_data(
        self, stopped: StoppedProcess, memory: ProcessMemory, sps: list[int]
    ) -> list[LoadedBlock]:
        """Of the data blocks whose code is dead, those no word of the
        program's writable memory (stacks from their pointer on) or registers points to."""
        dead = [id(b) for b in self.dead]
        blocks = [b for b in self.data if b.reclaimed or id(b) in dead]
        # Only the object's data can have been handed to the program; relive's own
        # (unwind table, GOT) was only the block's code's and the unwinder's, which
        # has let go of it by the time it is freed.
        ranges = [(b.data[0], b.data[0] + _program_part(b)) for b in blocks]
        spans = []
        for m in self.maps:
            if "w" not in m.perms:
                continue
            # Below a stack pointer (and its red zone) lie stale values of returned calls.
            start = max([m.start, *(sp - 128 for sp in sps if m.start <= sp < m.end)])
            spans += _subtract((start, m.end), ranges)  # the data itself is not a referrer
        if not any(lo < hi for lo, hi in ranges):
            return blocks
        if sum(end - start for start, end in spans) > DATA_SCAN_LIMIT:
            return [b for b in blocks if not _program_part(b)]
        busy: set[int] = set()
        for start, end in spans:
            try:
                busy |= find_words(memory.read(start, end - start), ranges, start)
            except ReliveError:
                continue  # a guard page or a mapping gone: holds nothing readable
        for tid in stopped.tids:
            busy |= find_words(bytes(stopped.get_regs(tid)), ranges)
        return [b for k, b in enumerate(blocks) if k not in busy]


def _subtract(span: Range, holes: Sequence[Range]) -> list[Range]:
    """``span`` without ``holes``."""
    pieces = [span]
    for lo, hi in holes:
        pieces = [
            piece
            for start, end in pieces
            for piece in ((start, min(end, lo)), (max(start, hi), end))
            if piece[0] < piece[1]
        ]
    return pieces


def _program_part(block: LoadedBlock) -> int:
    """Bytes at the start of a block's data the program may point to."""
    return block.data[1] if block.program_data < 0 else min(block.program_data, block.data[1])


def find_words(data: bytes, ranges: Sequence[Range], base: int = 0) -> set[int]:
    """Indices of ``ranges`` (``[lo, hi)``) that some 8-byte aligned word of ``data``
    (at address ``base``) falls in.

    Searched for the upper half of the range's addresses first (in C, by
    ``bytes.find``), so a stack or a heap of megabytes is scanned in milliseconds.
    """
    found: set[int] = set()
    skew = base % 8
    for k, (lo, hi) in enumerate(ranges):
        if lo >= hi:
            continue
        if lo >> 32 != (hi - 1) >> 32:
            if _scan_slowly(data, lo, hi, skew):
                found.add(k)
            continue
        pattern = (lo >> 32).to_bytes(4, "little")
        at = data.find(pattern, 4)
        while at != -1:
            start = at - 4
            if (start + skew) % 8 == 0 and lo <= int.from_bytes(
                data[start : at + 4], "little"
            ) < hi:
                found.add(k)
                break
            at = data.find(pattern, at + 1)
    return found


def _scan_slowly(data: bytes, lo: int, hi: int, skew: int) -> bool:
    first = (8 - skew) % 8
    view = memoryview(data)[first : first + (len(data) - first) // 8 * 8].cast("Q")
    return any(lo <= word < hi for word in view)


def mark_reclaimed(journal: Journal, dead: Iterable[LoadedBlock]) -> list[tuple[int, int]]:
    """Free the code of ``dead`` blocks, and the part of their data only that code
    used (unwind table, GOT); forget blocks with nothing left, and forget the
    code as an earlier version of any function (frames are never looked for there
    again).  Returns ``(address, size)`` of the code freed."""
    freed: list[tuple[int, int]] = []
    for block in dead:
        if block in journal.blocks and not block.reclaimed:
            block.reclaimed = True
            freed.append((block.code[0], block.code[1]))
            block.own = [block.own[0], 0]
            if block.program_data >= 0:
                block.data = [block.data[0], min(block.data[1], block.program_data)]
    if freed:
        journal.blocks = [b for b in journal.blocks if not (b.reclaimed and not b.data[1])]
        for patch in journal.patches.values():
            patch.earlier = [
                r for r in patch.earlier if not any(a <= r[0] < a + n for a, n in freed)
            ]
    return freed


def drop_blocks(journal: Journal, blocks: Iterable[LoadedBlock]) -> None:
    """Forget blocks whose code and data are both free (after an undo)."""
    gone = [id(b) for b in blocks]
    journal.blocks = [b for b in journal.blocks if id(b) not in gone]

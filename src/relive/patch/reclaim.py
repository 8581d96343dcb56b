"""Reclaiming code a later reload superseded, once it is provably dead.

A reload's code (its block's range in the code arena) is only ever reached
through the entry jumps that lead to it, direct calls from code relive loaded
to the functions it added (journal definitions), and the return addresses,
saved contexts and other pointers made while a thread ran it.  It is dead, and
its range free for later reloads, when:

* no entry jump leads into it and no entry lies in it (``Journal.patches``, as
  they stand once the jumps being written are committed);
* no function relive added lives in it (later reloads bind to those: direct
  calls from other loaded code, and their address may be stored anywhere);
* its address never escaped: no relocation of its own code or writable data
  takes the address of its code other than a direct call or jump (``&f`` of a
  replaced function binds to the original entry, see ``patch.binder``; the
  linker records what remains, ``LinkedImage.takes_own_code``);
* no thread's PC is in it, and no register of any thread and no word of the
  program's memory points into it: every readable and writable mapping (heap,
  thread stacks, coroutine stacks, alternate signal stacks, the contexts
  ``swapcontext`` and the kernel's signal frames save, globals), see
  :class:`MemoryScan`.  Registers and memory are copied while every thread is
  held, after the jumps moved away from it, and searched once the threads run
  again.  Nothing can enter the code afterwards but through a pointer that was
  somewhere at that moment, so dead then is dead for good.

Below the lowest stack pointer in an anonymous mapping lie the stale words of
calls that returned: that part is scanned only if something scanned points into
it (a coroutine suspended there, a frame under a handler running on an
alternate stack, a context saved there).  A candidate's own data (jump tables
of absolute addresses, without PIE) counts only if its code or a pointer into it
is found.  The leaf function a thread is stopped in may
keep a value in its red zone, below its stack pointer: a pointer into
superseded code kept only there, and nowhere else, is not seen.

The copy holds the threads about 1 ms per MiB, so a reload does not always pay
it: a program with at most :data:`CHECK_EVERY_RELOAD_BELOW` of anonymous
resident memory is checked at every reload (well under a millisecond more); a
bigger one only once :data:`RECLAIM_BATCH` of superseded code has gathered (see
:func:`worth_checking`).  Code waiting for the next check stays where it was,
in arena space already mapped: the mapping count does not grow, and memory by
at most that batch.

The check gives up (nothing reclaimed that time; later reloads try again) when
the memory to copy is over :data:`SCAN_LIMIT` or cannot be read.  Not seen
either: pointers the program keeps mangled (glibc's ``setjmp`` buffers and
``atexit`` lists hold them XORed with a secret: a ``jmp_buf`` is only valid
while its frame is live, so the frame's own return address keeps the code),
outside its memory (in a file, a pipe, another process, the kernel: a signal
handler installed from a pointer that is no longer in memory), or in vector
registers of a thread whose vector state cannot be read.

``undo`` frees a block's data too, under a stronger check: no variable relive
added lives in it and no word of the program's writable memory points into it
(the program may have stored the address of a string or constant the reload
brought).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from relive.arch import host_registers
from relive.errors import ReliveError
from relive.patch.journal import ArenaKind, Journal, LoadedBlock
from relive.process.memory import ProcessMemory
from relive.process.pagemap import PopulatedPages
from relive.process.procfs import Mapping, find_anonymous_resident, read_maps
from relive.process.threads import StoppedProcess

#: Most memory (resident or swapped pages of readable, writable mappings) copied
#: at a stop to search for pointers into superseded code or into data an undo
#: would free: a program with more keeps both (the copy holds its threads, about
#: 1 ms per MiB).
SCAN_LIMIT = 16 << 20
#: A program with at most this much anonymous resident memory has its superseded
#: code checked at every reload: the copy adds well under a millisecond to the stop.
CHECK_EVERY_RELOAD_BELOW = 1 << 20
#: Superseded code a bigger program lets gather before a reload's stop checks it.
RECLAIM_BATCH = 64 << 10

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
    """Which candidates nothing can return or jump into any more: ``inspect`` runs
    while every thread is held and copies what it needs (registers, the
    program's memory); ``dead`` and ``dead_data`` are worked out from that copy
    afterwards, with the threads running again.

    With ``data``, pointers into those blocks' data are looked for too.
    """

    candidates: Sequence[LoadedBlock]
    data: Sequence[LoadedBlock] = ()
    #: Parts of relive's arenas the program holds nothing in (see :func:`relive_only`).
    unscanned: Sequence[Range] = ()
    #: Relive's arenas, and per candidate the data only its code reaches (see
    #: :class:`MemoryScan`; ``(0, 0)``: none).
    arenas: Sequence[Range] = ()
    gates: Sequence[Range] = ()
    _pcs: list[int] = field(default_factory=list, init=False)
    _scan: MemoryScan | None = field(default=None, init=False)
    _result: tuple[list[LoadedBlock], list[LoadedBlock]] | None = field(default=None, init=False)

    @classmethod
    def for_reload(cls, journal: Journal, pid: int) -> DeadCodeCheck:
        """The check for a reload (its writes staged): superseded code only, when
        it is worth the time the threads are held (:func:`worth_checking`)."""
        candidates = find_candidates(journal)
        if not worth_checking(pid, candidates):
            candidates = []
        return cls(candidates, (), *_arena_facts(journal, candidates))

    @classmethod
    def for_undo(cls, journal: Journal) -> DeadCodeCheck:
        """The check for an undo (its writes staged): code as for a reload, and the
        data of the blocks whose code is, or may turn out, dead."""
        candidates = find_candidates(journal)
        # Data of blocks without code of their own is kept: code elsewhere (an
        # inherited arena's) may refer to it without storing a pointer.
        freed = [b for b in journal.blocks if b.reclaimed and b.data[1]]
        data = find_data_candidates(journal, [*candidates, *freed])
        return cls(candidates, data, *_arena_facts(journal, candidates))

    def inspect(self, stopped: StoppedProcess, memory: ProcessMemory) -> None:
        """At the stop: copy the registers and the memory to search."""
        if not self.candidates and not self.data:
            return
        try:
            registers = [stopped.get_regs(tid) for tid in stopped.tids]
        except ReliveError:  # a thread that cannot be read: nothing is freed, the reload stands
            return
        self._pcs = [host_registers().get_pc(regs) for regs in registers]
        # A return address may be the end of the range (a call as last instruction).
        code = [(b.code[0], b.code[0] + b.code[1] + 1) for b in self.candidates]
        # Only the object's data can have been handed to the program; relive's own
        # (unwind table, GOT) was only the block's code's and the unwinder's, which
        # has let go of it by the time it is freed.
        data = [(b.data[0], b.data[0] + _program_part(b)) for b in self._data_blocks()]
        scan = MemoryScan(code, data, self.unscanned, self.arenas, self.gates)
        sps = [host_registers().get_sp(regs) for regs in registers]
        words = b"".join([*map(bytes, registers), *_vector_registers(stopped)])
        if scan.capture(stopped.pid, memory, words, sps):
            self._scan = scan

    @property
    def dead(self) -> list[LoadedBlock]:
        """Blocks whose code nothing refers to (none if ``inspect`` never ran)."""
        return self._decide()[0]

    @property
    def dead_data(self) -> list[LoadedBlock]:
        """Blocks whose data nothing points to."""
        return self._decide()[1]

    def _decide(self) -> tuple[list[LoadedBlock], list[LoadedBlock]]:
        if self._result is not None:
            return self._result
        data_blocks = self._data_blocks()
        if self._scan is None:  # not inspected, too much memory, or unreadable: keep it all
            self._result = [], [b for b in data_blocks if b.reclaimed and not _program_part(b)]
            return self._result
        running = {
            k for k, b in enumerate(self.candidates) for pc in self._pcs if _holds([pc], *b.code)
        }
        code_busy, data_busy = self._scan.search(running)
        dead = [b for k, b in enumerate(self.candidates) if k not in code_busy]
        dead_data = [
            b
            for k, b in enumerate(data_blocks)
            if k not in data_busy and (b.reclaimed or b in dead)
        ]
        self._result = dead, dead_data
        return self._result

    def _data_blocks(self) -> list[LoadedBlock]:
        """The data candidates whose code is gone or may turn out dead."""
        candidates = [id(b) for b in self.candidates]
        return [b for b in self.data if b.reclaimed or id(b) in candidates]


def worth_checking(pid: int, candidates: Sequence[LoadedBlock]) -> bool:
    """Whether a reload's stop should copy the program's memory to look for dead code
    among ``candidates``.

    The copy is what makes the check sound (a pointer into superseded code may be
    anywhere) and what it costs: about 1 ms of held threads per MiB.  A small
    program pays it at each reload; a bigger one once enough superseded code
    has gathered to be worth freeing, so most of its reloads hold the threads
    no longer than before arenas.
    """
    if not candidates:
        return False
    resident = find_anonymous_resident(pid)
    if resident is None or resident <= CHECK_EVERY_RELOAD_BELOW:
        return True
    return sum(block.code[1] for block in candidates) >= RECLAIM_BATCH


def _arena_facts(
    journal: Journal, candidates: Sequence[LoadedBlock]
) -> tuple[list[Range], list[Range], list[Range]]:
    """What the scan needs to know of relive's arenas: the parts it leaves out,
    the arenas, and each candidate's gate (its program data, unless a variable
    a later reload binds to lives there: that code reaches it without a pointer)."""
    pins = _pins(journal)
    gates = []
    for block in candidates:
        start, size = block.data[0], _program_part(block)
        gates.append((0, 0) if not size or _holds(pins, start, size) else (start, start + size))
    arenas = [(c.address, c.address + c.size) for c in journal.arenas]
    return relive_only(journal), arenas, gates


def _vector_registers(stopped: StoppedProcess) -> list[bytes]:
    """Each held thread's FPU/vector state (a pointer copied through ``memcpy``
    may be in a vector register only); empty where it cannot be read."""
    states = []
    for tid in stopped.tids:
        try:
            state = stopped.get_xstate(tid)
        except ReliveError:
            continue
        states.append(state + bytes(-len(state) % 8))  # joined: words stay whole
    return states


@dataclass
class _Piece:
    """A run of the program's memory to scan: ``region``, the index of the stale
    stack region it lies in (scanned only once something points there)."""

    start: int
    end: int
    #: In data an undo may free: searched for pointers into code only.
    code_only: bool
    region: int | None


@dataclass
class MemoryScan:
    """Which ``code`` and ``data`` ranges (``[lo, hi)``) some word of the program's
    memory or registers points into.

    Every readable and writable mapping (and anonymous readable one) is
    scanned, not only thread stacks from their stack pointers: a coroutine's
    suspended stack, a frame under a signal handler running on an alternate
    stack, a context saved by ``swapcontext`` or a function pointer the
    program loaded from a table can be anywhere.  Relive's own arena space is
    left out (``unscanned``, see :func:`relive_only`).

    Some memory counts only if something reaches it (a *region*, searched once
    a register or a word already searched points into it):

    * below the lowest stack pointer in an anonymous mapping lie the stale
      words of calls that returned: a suspended coroutine stack, an interrupted
      frame or a saved context there is reached through a saved stack pointer
      or a pointer to it.  Not in memory code reaches without a stored pointer:
      a module's data and bss (file-backed, or the anonymous mapping right
      after one) and relive's arenas (``arenas``);
    * ``gates[k]``, the data of candidate ``k`` (its jump tables and constants
      point into its code): reached also when candidate ``k``'s code is.

    The data being freed is searched for pointers into code only (a pointer in
    it is live if the data is kept).
    """

    code: list[Range]
    data: list[Range]
    unscanned: Sequence[Range]
    arenas: Sequence[Range] = ()
    gates: Sequence[Range] = ()
    #: What ``capture`` copied: the registers, the regions, and each piece with its bytes.
    registers: bytes = b""
    regions: list[Range] = field(default_factory=list)
    copied: list[tuple[_Piece, bytes]] = field(default_factory=list)
    #: ``unscanned`` in address order (disjoint ranges), and their ends.
    _holes: list[Range] = field(default_factory=list)
    _hole_ends: list[int] = field(default_factory=list)

    def capture(self, pid: int, memory: ProcessMemory, registers: bytes, sps: list[int]) -> bool:
        """Copy the memory to search (threads held); False when it is over
        :data:`SCAN_LIMIT` or cannot all be read (then nothing may be freed)."""
        pieces = self._plan(pid, sps)
        if sum(p.end - p.start for p in pieces) > SCAN_LIMIT:
            return False
        try:
            self.copied = [(p, memory.read(p.start, p.end - p.start)) for p in pieces]
        except ReliveError:
            return False
        self.registers = registers
        return True

    def search(self, running: set[int]) -> tuple[set[int], set[int]]:
        """``(code indices, data indices)`` the copy points into, or (code) some
        thread runs (``running``)."""
        registers, regions = self.registers, self.regions
        code_busy = find_words(registers, self.code) | running
        data_busy = find_words(registers, self.data)
        live = find_words(registers, regions) | code_busy  # gate k is region k
        todo = [c for c in self.copied if c[0].region is None or c[0].region in live]
        while todo:
            reached: set[int] = set()
            for code_only in (False, True):
                # Pieces are 8-byte aligned: joined, each word stays whole.
                words = b"".join(data for piece, data in todo if piece.code_only is code_only)
                found = find_words(words, self.code)
                code_busy |= found
                reached |= found  # a candidate's code in use reaches its data
                if not code_only:
                    data_busy |= find_words(words, self.data)
                reached |= find_words(words, regions)
            reached -= live
            live |= reached
            todo = [c for c in self.copied if c[0].region in reached]
        return code_busy, data_busy

    def _plan(self, pid: int, sps: list[int]) -> list[_Piece]:
        """The pieces of memory to scan; sets ``regions`` (the gates first)."""
        pieces: list[_Piece] = []
        self.regions = list(self.gates) + [(0, 0)] * (len(self.code) - len(self.gates))
        previous: Mapping | None = None
        with PopulatedPages(pid) as populated:
            for mapping in read_maps(pid):
                if _may_hold_pointers(mapping):
                    stale = self._stale_part(mapping, previous, sps)
                    pieces += self._plan_mapping(mapping, populated, stale)
                previous = mapping
        return pieces

    def _unscanned_in(self, mapping: Mapping) -> list[Range]:
        """The parts of relive's arenas left out that overlap ``mapping`` (found by
        bisection: a long session's arenas hold thousands of blocks)."""
        if not self._holes:
            self._holes = sorted(r for r in self.unscanned if r[0] < r[1])
            self._hole_ends = [end for _, end in self._holes]
        at = bisect.bisect_right(self._hole_ends, mapping.start)
        found = []
        while at < len(self._holes) and self._holes[at][0] < mapping.end:
            found.append(self._holes[at])
            at += 1
        return found

    def _stale_part(self, mapping: Mapping, previous: Mapping | None, sps: list[int]) -> Range:
        """The part of ``mapping`` below the lowest stack pointer in it, if only
        stored pointers lead into that mapping's memory."""
        lowest = min((sp for sp in sps if mapping.start <= sp < mapping.end), default=0)
        after_module = previous is not None and previous.end == mapping.start and previous.inode
        if not lowest or mapping.inode or after_module:
            return (0, 0)
        if any(lo < mapping.end and hi > mapping.start for lo, hi in self.arenas):
            return (0, 0)
        return (mapping.start, lowest)

    def _plan_mapping(
        self, mapping: Mapping, populated: PopulatedPages, stale: Range
    ) -> list[_Piece]:
        """The pieces of ``mapping``, each with its region (or None)."""
        unscanned = self._unscanned_in(mapping)
        held = [r for r in self.data if r[0] < r[1]]
        inside = [
            (k, (max(lo, mapping.start), min(hi, mapping.end)))
            for k, (lo, hi) in enumerate(self.regions)
            if lo < mapping.end and hi > mapping.start
        ]
        if stale[0] < stale[1]:
            inside.append((len(self.regions), stale))
            self.regions.append(stale)
        runs = (
            populated.runs(mapping.start, mapping.end)
            if mapping.perms.endswith("p")
            else [(mapping.start, mapping.end)]
        )
        pieces: list[_Piece] = []
        for run in runs:
            for piece in _subtract(run, unscanned):
                for part in _subtract(piece, [r for _, r in inside]):
                    pieces += _split(part, held, None)
                for k, region in inside:
                    for part in _intersect(piece, [region]):
                        pieces += _split(part, held, k)
        return pieces


def _may_hold_pointers(mapping: Mapping) -> bool:
    """Whether the program may have stored a pointer in ``mapping``: readable and
    writable, or anonymous (a table it made read-only, code it generated), but
    the kernel's own pages."""
    if "r" not in mapping.perms:
        return False
    return "w" in mapping.perms or not (mapping.inode or mapping.path.startswith("[v"))


def _split(span: Range, held: Sequence[Range], region: int | None) -> list[_Piece]:
    """``span`` as pieces, those inside ``held`` (data being freed) marked code-only;
    widened to whole words (pieces are joined before the search)."""
    outside = [(lo, hi, False) for lo, hi in _subtract(span, held)]
    inside = [(lo, hi, True) for lo, hi in _intersect(span, held)]
    return [_Piece(lo & ~7, (hi + 7) & ~7, kind, region) for lo, hi, kind in outside + inside]


def relive_only(journal: Journal) -> list[Range]:
    """The parts of relive's arenas the program cannot have stored anything in: the
    code arenas, and the data arenas but for the blocks' program data.

    The rest of a data arena is relive's own data (unwind tables and their
    registration records, which hold their code's address; GOTs, which hold
    only the addresses of what their block calls) and free space, which may
    still hold such records of code reclaimed before.
    """
    out: list[Range] = []
    program = sorted((b.data[0], b.data[0] + _program_part(b)) for b in journal.blocks)
    for chunk in journal.arenas:
        span = (chunk.address, chunk.address + chunk.size)
        out += [span] if chunk.kind is ArenaKind.CODE else _gaps(span, program)
    return out


def _gaps(span: Range, sorted_holes: Sequence[Range]) -> list[Range]:
    """``span`` without ``sorted_holes`` (in address order), in one sweep."""
    gaps: list[Range] = []
    cursor, end = span
    for lo, hi in sorted_holes:
        if lo >= end:
            break
        if hi <= cursor:
            continue
        if lo > cursor:
            gaps.append((cursor, lo))
        cursor = max(cursor, hi)
    if cursor < end:
        gaps.append((cursor, end))
    return gaps


def _intersect(span: Range, ranges: Sequence[Range]) -> list[Range]:
    """The parts of ``span`` inside ``ranges``."""
    return [
        (max(span[0], lo), min(span[1], hi)) for lo, hi in ranges if lo < span[1] and hi > span[0]
    ]


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

    Searched for by three bytes of the range's addresses above the lowest two
    (or four) bytes (in C, by ``bytes.find``), each hit checked whole, so
    megabytes of memory full of pointers are scanned in milliseconds.
    """
    found: set[int] = set()
    skew = base % 8
    for k, (lo, hi) in enumerate(ranges):
        if lo >= hi:
            continue
        for shift in (16, 32):
            if ((hi - 1) >> shift) - (lo >> shift) < _MOST_PATTERNS:
                break
        else:
            if _scan_slowly(data, lo, hi, skew):
                found.add(k)
            continue
        # Three bytes from the lowest that differ between nearby pointers: the
        # needle's last byte is not the zero of every user-space address's top.
        low = shift // 8
        for high in range(lo >> shift, ((hi - 1) >> shift) + 1):
            if _find_in(data, (high & 0xFFFFFF).to_bytes(3, "little"), low, lo, hi, skew):
                found.add(k)
                break
    return found


#: Most distinct upper parts of a range searched one by one.
_MOST_PATTERNS = 8


def _find_in(data: bytes, pattern: bytes, low: int, lo: int, hi: int, skew: int) -> bool:
    """Whether an aligned word whose upper bytes are ``pattern`` (after ``low`` lower
    bytes) is in ``[lo, hi)``."""
    at = data.find(pattern, low)
    while at != -1:
        start = at - low
        word = data[start : start + 8]
        if (start + skew) % 8 == 0 and len(word) == 8 and lo <= int.from_bytes(word, "little") < hi:
            return True
        at = data.find(pattern, at + 1)
    return False


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

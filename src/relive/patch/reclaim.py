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
is found.  The red zone below the stack pointer of a thread stopped outside a
system call (128 bytes on x86-64, ``Registers.red_zone``), where the function
it is stopped in may keep values without moving the pointer, is never taken for
stale: it is always searched (see :meth:`MemoryScan._stale_part`).

The copy (one ``process_vm_readv`` of every populated page of the mappings
searched; which parts of it are searched is worked out after the stop) holds
the threads about 1 ms per MiB, so a reload does not always pay it: a program
with at most :data:`CHECK_EVERY_RELOAD_BELOW` of anonymous resident memory is
checked at every reload (well under a millisecond more); a bigger one only once
:data:`RECLAIM_BATCH` of superseded code has gathered (see
:func:`worth_checking`).  Code waiting for the next check stays where it was,
in arena space already mapped: the mapping count does not grow, and memory by
at most that batch.

The check gives up (nothing reclaimed that time; later reloads try again) when
the memory to copy is over :data:`SCAN_LIMIT` or cannot be read.  Not seen
either: pointers the program keeps mangled (glibc's ``setjmp`` buffers and
``atexit`` lists hold them XORed with a secret: a ``jmp_buf`` is only valid
while its frame is live, so the frame's own return address keeps the code),
outside its memory (in a file, a pipe, another process, the kernel: a signal
handler installed from a pointer that is no longer in memory), only in the red
zone of a function blocked in a system call (across the call), or in vector
registers of a thread whose vector state cannot be read.

``undo`` frees a block's data too, under a stronger check: no variable relive
added lives in it and no word of the program's writable memory points into it
(the program may have stored the address of a string or constant the reload
brought).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from relive.arch import host_arch, host_registers
from relive.errors import ReliveError
from relive.patch.journal import ArenaKind, Journal, LoadedBlock
from relive.process.memory import ProcessMemory
from relive.process.pagemap import PopulatedPages
from relive.process.procfs import (
    Mapping,
    find_anonymous_resident,
    parse_maps_line,
    read_maps_text,
)
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
        else:
            parse_maps(read_maps_text(pid))  # parsed now: the stop only compares the text
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
        if candidates or data:
            # Parsed now, as for a reload: the stop only compares the text (a
            # failure here is met again, and handled, at the stop).
            with contextlib.suppress(ReliveError):
                parse_maps(read_maps_text(journal.pid))
        return cls(candidates, data, *_arena_facts(journal, candidates))

    def inspect(self, stopped: StoppedProcess, memory: ProcessMemory) -> None:
        """At the stop: copy the registers and the memory to search.  It runs
        after the new jumps are written: whatever cannot be read (a thread's
        registers, the maps, memory) means nothing is freed, and the reload stands."""
        if not self.candidates and not self.data:
            return
        with contextlib.suppress(ReliveError):
            self._capture(stopped, memory)

    def _capture(self, stopped: StoppedProcess, memory: ProcessMemory) -> None:
        registers = [stopped.get_regs(tid) for tid in stopped.tids]
        self._pcs = [host_registers().get_pc(regs) for regs in registers]
        # A return address may be the end of the range (a call as last instruction).
        code = [(b.code[0], b.code[0] + b.code[1] + 1) for b in self.candidates]
        # Only the object's data can have been handed to the program; relive's own
        # (unwind table, GOT) was only the block's code's and the unwinder's, which
        # has let go of it by the time it is freed.
        data = [(b.data[0], b.data[0] + _program_part(b)) for b in self._data_blocks()]
        scan = MemoryScan(code, data, self.unscanned, self.arenas, self.gates)
        sps = [host_registers().get_sp(regs) for regs in registers]
        in_syscall = host_arch().in_syscall
        leaves = [
            sp
            for sp, regs in zip(sps, registers, strict=True)
            if in_syscall is None or not in_syscall(regs)
        ]
        words = b"".join([*map(bytes, registers), *_vector_registers(stopped)])
        if scan.capture(stopped.pid, memory, words, sps, leaves):
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
    if resident > SCAN_LIMIT:  # more than the stop would copy: every try would give up
        return False
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


@dataclass(frozen=True)
class _Taken:
    """What a stop saw of the program's memory: the mappings, per mapping the
    populated runs copied (none for a mapping not searched), the copy (the runs
    one after the other), and the held threads' stack pointers."""

    maps: Sequence[Mapping]
    runs: list[list[Range]]
    copy: bytearray
    sps: list[int]
    #: The stack pointers whose red zone is searched (see :meth:`MemoryScan._stale_part`).
    leaves: list[int]


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
    #: What ``capture`` copied: the registers, and the rest as seen at the stop.
    registers: bytes = b""
    _taken: _Taken | None = None
    #: The regions, and each piece of the copy to search with its bytes (``_lay_out``).
    regions: list[Range] = field(default_factory=list)
    copied: list[tuple[_Piece, memoryview]] = field(default_factory=list)
    #: ``unscanned`` in address order (disjoint ranges), and their ends.
    _holes: list[Range] = field(default_factory=list)
    _hole_ends: list[int] = field(default_factory=list)

    def capture(
        self,
        pid: int,
        memory: ProcessMemory,
        registers: bytes,
        sps: list[int],
        leaves: Sequence[int] = (),
    ) -> bool:
        """Copy the memory to search (threads held); False when it is over
        :data:`SCAN_LIMIT` or cannot all be read (then nothing may be freed).
        ``sps`` are the held threads' stack pointers, ``leaves`` those of the
        threads stopped outside a system call (their red zone is searched).

        The stop pays only for what must be seen at that moment: the mappings,
        which of their pages are populated, and those pages, copied in one read
        (``ProcessMemory.read_spans``).  Which parts of the copy are searched, and
        how (:meth:`_lay_out`), is worked out from what was seen then, once the
        threads run again.
        """
        maps = parse_maps(read_maps_text(pid))
        runs: list[list[Range]] = []
        with PopulatedPages(pid) as populated:
            for mapping in maps:
                if not _may_hold_pointers(mapping):
                    runs.append([])
                elif mapping.perms.endswith("p"):
                    runs.append(populated.runs(mapping.start, mapping.end))
                else:
                    runs.append([(mapping.start, mapping.end)])
        spans = [run for each in runs for run in each]
        if sum(end - start for start, end in spans) > SCAN_LIMIT:
            return False
        try:
            copy = memory.read_spans(spans)
        except ReliveError:
            return False
        self.registers = registers
        self._taken = _Taken(maps, runs, copy, sps, list(leaves))
        return True

    def search(self, running: set[int]) -> tuple[set[int], set[int]]:
        """``(code indices, data indices)`` the copy points into, or (code) some
        thread runs (``running``)."""
        self._lay_out()
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

    def _lay_out(self) -> None:
        """Cut the copy into the pieces to search (``copied``), each with its region
        (or None); sets ``regions`` (the gates first)."""
        taken, self._taken = self._taken, None
        if taken is None:
            return  # laid out already, or nothing was copied
        view = memoryview(taken.copy)
        self.regions = list(self.gates) + [(0, 0)] * (len(self.code) - len(self.gates))
        previous: Mapping | None = None
        offset = 0
        for mapping, runs in zip(taken.maps, taken.runs, strict=True):
            if runs:
                placed = []
                for start, end in runs:
                    placed.append(((start, end), offset))
                    offset += end - start
                stale = self._stale_part(mapping, previous, taken.sps, taken.leaves)
                for piece, at in self._plan_mapping(mapping, placed, stale):
                    self.copied.append((piece, view[at : at + piece.end - piece.start]))
            previous = mapping

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

    def _stale_part(
        self, mapping: Mapping, previous: Mapping | None, sps: list[int], leaves: list[int]
    ) -> Range:
        """The part of ``mapping`` below the lowest stack pointer in it, if only
        stored pointers lead into that mapping's memory.

        The red zone below the stack pointer of a thread stopped outside a
        system call (``leaves``) is not stale: the function it is stopped in may
        keep values there without moving the pointer.  That of a thread blocked
        in a system call is taken for stale: it holds the stale words of the
        calls that led there (a return address into the code that ran last, as
        a rule), which would keep that code, and the last version an ``undo``
        leaves, for no reason; a pointer into superseded code the function
        making the call keeps only there, across the call, is not seen.
        """
        inside = range(mapping.start, mapping.end)
        lowest = min((sp for sp in sps if sp in inside), default=0)
        after_module = previous is not None and previous.end == mapping.start and previous.inode
        if not lowest or mapping.inode or after_module:
            return (0, 0)
        if any(lo < mapping.end and hi > mapping.start for lo, hi in self.arenas):
            return (0, 0)
        red_zone = host_registers().red_zone
        end = min((sp - red_zone for sp in leaves if sp in inside), default=lowest)
        return (mapping.start, max(mapping.start, min(end, lowest)))

    def _plan_mapping(
        self, mapping: Mapping, runs: list[tuple[Range, int]], stale: Range
    ) -> list[tuple[_Piece, int]]:
        """The pieces of ``mapping``'s populated ``runs`` (each with its offset in
        the copy), each with its region (or None) and its offset in the copy."""
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
        pieces: list[tuple[_Piece, int]] = []
        for run, offset in runs:
            found: list[_Piece] = []
            for piece in _subtract(run, unscanned):
                for part in _subtract(piece, [r for _, r in inside]):
                    found += _split(part, held, None)
                for k, region in inside:
                    for part in _intersect(piece, [region]):
                        found += _split(part, held, k)
            # Pieces are widened to whole words, never past their page-aligned run.
            pieces += [(p, offset + p.start - run[0]) for p in found]
        return pieces


@functools.lru_cache(maxsize=1)
def parse_maps(text: str) -> tuple[Mapping, ...]:
    """/proc/PID/maps's ``text`` parsed, the last text kept: a stop reads the maps
    again and finds them parsed when they have not changed since they were read
    while the program ran (each line parsed costs a microsecond of held threads)."""
    return tuple(parse_maps_line(line) for line in text.splitlines() if line)


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

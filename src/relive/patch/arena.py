"""Per-module arenas: the memory reloads put their code and data in, reused across reloads.

A reload used to map a block of its own (code pages, data pages, a guard gap):
a day of saves added thousands of mappings.  Now each module gets two arenas
near it (within reach of 32-bit displacements, found with the gap search of
``patch.placement``): one read+execute for code, one read+write for data,
filled in address order.  New code is written through /proc/PID/mem, which a
tracer may write through page protections, so there is no ``mprotect`` per
reload and no page is ever writable and executable in the program's view.

An arena grows by mapping the next chunk right next to it with the same
protection: the kernel merges adjacent anonymous mappings with equal flags,
so the mapping count stays the same.  When that address is taken, a new
arena is opened elsewhere.  A new arena is placed with room to grow
(:data:`HEADROOM` kept clear on the side it grows into).

The journal is the allocator's state (``Journal.arenas``, ``Journal.blocks``):
free space is the arenas minus the ranges of the blocks reloads placed there
and still use, so a reload that died before it committed leaks nothing.  A
chunk is recorded (and the journal saved) before it is mapped; a chunk whose
mapping never happened is dropped when the journal is next loaded
(:func:`drop_unmapped_chunks`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from relive.elf.constants import PAGE_SIZE
from relive.errors import ReliveError
from relive.patch.journal import ArenaChunk, ArenaKind, Journal, LoadedBlock, save_journal
from relive.patch.modules import RunningModule
from relive.patch.placement import iter_candidate_addresses, page_round, reach_bounds
from relive.process.procfs import Mapping, read_maps
from relive.process.remote import (
    MAP_ANONYMOUS,
    MAP_PRIVATE,
    PROT_EXEC,
    PROT_READ,
    PROT_WRITE,
    remote_munmap,
    try_remote_mmap_at,
)
from relive.process.threads import stop_one

#: Smallest chunk mapped at a time.  Untouched pages of an anonymous mapping
#: use no memory, but keep chunks modest all the same: a reload touches only
#: the pages it writes.
CHUNK = 256 * 1024
#: Room left free beside a new arena for it to grow into (other arenas keep out).
HEADROOM = 64 << 20

_PROT = {ArenaKind.CODE: PROT_READ | PROT_EXEC, ArenaKind.DATA: PROT_READ | PROT_WRITE}
_PERMS = {ArenaKind.CODE: "r-xp", ArenaKind.DATA: "rw-p"}

Range = tuple[int, int]  # [start, end)


def _spans(chunks: Iterable[ArenaChunk]) -> list[Range]:
    """Chunks merged into contiguous spans, in address order."""
    spans: list[Range] = []
    for chunk in sorted(chunks, key=lambda c: c.address):
        if spans and spans[-1][1] == chunk.address:
            spans[-1] = (spans[-1][0], chunk.address + chunk.size)
        else:
            spans.append((chunk.address, chunk.address + chunk.size))
    return spans


def block_ranges(block: LoadedBlock, kind: ArenaKind) -> list[Range]:
    """The parts of ``block`` in arenas of ``kind`` that are still in use."""
    if kind is ArenaKind.CODE:
        parts = [] if block.reclaimed else [block.code]
    else:
        parts = [block.data] if block.reclaimed else [block.data, block.own]
    return [(start, start + size) for start, size in parts if size]


def used_ranges(journal: Journal, module: str, kind: ArenaKind) -> list[Range]:
    """The ranges of ``module``'s arenas of ``kind`` that blocks use."""
    return sorted(r for b in journal.blocks if b.module == module for r in block_ranges(b, kind))


def free_ranges(
    journal: Journal, module: str, kind: ArenaKind, taken: Iterable[Range] = ()
) -> list[Range]:
    """Free space of ``module``'s arenas of ``kind``: the arenas minus what blocks use
    (and ``taken``, allocated by the reload under way)."""
    chunks = [c for c in journal.arenas if c.module == module and c.kind is kind]
    used = sorted([*used_ranges(journal, module, kind), *taken])
    free: list[Range] = []
    for start, end in _spans(chunks):
        cursor = start
        for lo, hi in used:
            if hi <= cursor or lo >= end:
                continue
            if lo > cursor:
                free.append((cursor, lo))
            cursor = max(cursor, hi)
        if cursor < end:
            free.append((cursor, end))
    return free


def _align(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


@dataclass
class ArenaAllocator:
    """Allocates one reload's code and data in a module's arenas, mapping chunks as needed.

    ``mapped`` lists the chunks this reload mapped: given back if it fails.
    """

    pid: int
    journal: Journal
    module: RunningModule
    reach: int
    low_memory: bool
    mapped: list[ArenaChunk] = field(default_factory=list)
    taken: list[tuple[ArenaKind, Range]] = field(default_factory=list)

    def allocate(self, kind: ArenaKind, size: int, alignment: int) -> int:
        """An address for ``size`` bytes of ``kind`` at ``alignment``, free until the
        reload commits or fails (mapping a chunk if no arena has room)."""
        alignment = max(alignment, 16)
        for _ in range(2):
            address = self._first_fit(kind, size, alignment)
            if address is not None:
                self.taken.append((kind, (address, address + size)))
                return address
            needed = page_round(max(size + alignment, CHUNK))
            if not self._grow(kind, needed):
                self._open(kind, needed)
        raise ReliveError(
            f"no room for {size} bytes of new {kind} near {self.module.name}",
            hint="the address space near the module is full; restart the program",
        )

    def _first_fit(self, kind: ArenaKind, size: int, alignment: int) -> int | None:
        taken = [r for k, r in self.taken if k is kind]
        for start, end in free_ranges(self.journal, self.module.path, kind, taken):
            address = _align(start, alignment)
            if address + size <= end:
                return address
        return None

    def _grow(self, kind: ArenaKind, size: int) -> bool:
        """Map ``size`` bytes right after (or before) an arena of ``kind``."""
        chunks = [c for c in self.journal.arenas if c.module == self.module.path and c.kind is kind]
        low, high = reach_bounds(self.module, size, self.reach, self.low_memory)
        for start, end in _spans(chunks):
            for address in (end, start - size):
                if low <= address <= high and self._map(kind, address, size):
                    return True
        return False

    def _open(self, kind: ArenaKind, size: int) -> None:
        """Map a new arena of ``kind`` in the nearest gap with room to grow."""
        maps = [*read_maps(self.pid), *_reserved(self.journal.arenas)]
        for window in (size + HEADROOM, size):
            for address in iter_candidate_addresses(
                maps, self.module, window, self.reach, self.low_memory
            ):
                # Below the module an arena grows down, above it grows up.
                start = address + window - size if address < self.module.start else address
                if self._map(kind, start, size):
                    return
        raise ReliveError(
            f"no free address within reach of {self.module.name} for {size} bytes of new {kind}",
            hint="the address space near the module is full; restart the program",
        )

    def _map(self, kind: ArenaKind, address: int, size: int) -> bool:
        """Record the chunk (write-ahead), then map it; False if the range is taken."""
        chunk = ArenaChunk(self.module.path, kind, address, size)
        self.journal.arenas.append(chunk)
        save_journal(self.journal)
        try:
            # One idle thread is enough: nothing refers to the chunk yet, and a
            # mapping the program makes meanwhile only makes this address fail.
            with stop_one(self.pid) as stopped:
                got = try_remote_mmap_at(
                    stopped, address, size, _PROT[kind], MAP_PRIVATE | MAP_ANONYMOUS
                )
        except BaseException:
            self.journal.arenas.remove(chunk)
            raise
        if got is None:
            self.journal.arenas.remove(chunk)
            return False
        self.mapped.append(chunk)
        return True

    def release_mapped(self) -> None:
        """Unmap the chunks this reload mapped (it failed); ReliveError if that fails."""
        if not self.mapped:
            return
        with stop_one(self.pid) as stopped:
            while self.mapped:
                chunk = self.mapped.pop()
                remote_munmap(stopped, chunk.address, chunk.size)
                if chunk in self.journal.arenas:
                    self.journal.arenas.remove(chunk)


def _reserved(chunks: Iterable[ArenaChunk]) -> Iterator[Mapping]:
    """Each arena with its headroom, as mappings the gap search keeps clear of."""
    for chunk in chunks:
        start = max(chunk.address - HEADROOM, PAGE_SIZE)
        yield Mapping(start, chunk.address + chunk.size + HEADROOM, "---p", 0, "", 0, "")


def drop_unmapped_chunks(journal: Journal, maps: list[Mapping] | None = None) -> bool:
    """Forget chunks that are not mapped as relive maps them (a relive killed between
    recording a chunk and mapping it, or the chunk unmapped); True if any was."""
    if not journal.arenas:
        return False
    maps = read_maps(journal.pid) if maps is None else maps
    kept = [c for c in journal.arenas if is_chunk_mapped(maps, c)]
    dropped = len(kept) != len(journal.arenas)
    journal.arenas = kept
    return dropped


def is_chunk_mapped(maps: list[Mapping], chunk: ArenaChunk) -> bool:
    """Whether ``chunk`` is mapped as relive maps it (anonymous, its protection)."""
    cursor, end = chunk.address, chunk.address + chunk.size
    for mapping in sorted(maps, key=lambda m: m.start):
        if mapping.end <= cursor or mapping.start > cursor:
            continue
        if mapping.perms != _PERMS[chunk.kind] or mapping.inode or mapping.path:
            return False
        cursor = mapping.end
        if cursor >= end:
            return True
    return False


def release_empty_arenas(pid: int, journal: Journal) -> list[ArenaChunk]:
    """Unmap every arena span no block uses any more (after an undo); the chunks
    unmapped.  The journal forgets them after they are gone (save it afterwards)."""
    empty: list[ArenaChunk] = []
    for module, kind in {(c.module, c.kind) for c in journal.arenas}:
        chunks = [c for c in journal.arenas if c.module == module and c.kind is kind]
        used = used_ranges(journal, module, kind)
        for start, end in _spans(chunks):
            if not any(lo < end and hi > start for lo, hi in used):
                empty.extend(c for c in chunks if start <= c.address < end)
    if not empty:
        return []
    with stop_one(pid) as stopped:
        for chunk in empty:
            remote_munmap(stopped, chunk.address, chunk.size)
            journal.arenas.remove(chunk)
    return empty

"""One ``SHT_RELA`` table read in place: an entry found by its offset, nothing decoded.

A ``-g`` object's ``.rela.debug_info`` holds a hundred thousand entries for a big
unit, of which a reload reads a few hundred (a static's address operand, a type
the layout check follows).  Both readers of those entries, the object's
(:mod:`relive.elf.objfile`: symbol and addend) and the DWARF reader's
(:mod:`relive.elf.dwarf_types`: the relocated value), look them up here: a binary
search over the table's own ``r_offset`` column (a strided view of the file's
bytes, not a copy), when the table is in offset order, as gcc and clang write
it.  A table out of order is the caller's to decode whole.
"""

from __future__ import annotations

import bisect
import itertools
import struct

#: One Elf64_Rela: r_offset, r_info, r_addend.
RELA = struct.Struct("<QQq")


class RelaTable:
    """The entries of one RELA table, over the bytes that hold it (not copied)."""

    def __init__(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self.count = len(view) // RELA.size
        self._view = view[: self.count * RELA.size]
        self._sorted: bool | None = None

    @property
    def offsets(self) -> memoryview:
        """``r_offset`` of every entry, in table order (a view)."""
        return self._view.cast("Q")[0::3]

    def in_order(self) -> bool:
        """The entries are in ``r_offset`` order (checked once: one pass at C speed
        per pair, a few milliseconds for a hundred thousand)."""
        if self._sorted is None:
            self._sorted = all(a <= b for a, b in itertools.pairwise(self.offsets))
        return self._sorted

    def find(self, offset: int) -> int:
        """The number of the entry at ``offset``, or -1; the table must be in order
        (:meth:`in_order`)."""
        offsets = self.offsets
        at = bisect.bisect_left(offsets, offset)
        return at if at < self.count and offsets[at] == offset else -1

    def entry(self, number: int) -> tuple[int, int, int]:
        """``(r_offset, r_info, r_addend)`` of entry ``number``."""
        offset, info, addend = RELA.unpack_from(self._view, number * RELA.size)
        return offset, info, addend

"""LEB128 numbers (DWARF, ``.eh_frame``, location expressions): the one decoder.

Each reader (``elf.dwarf`` sections, ``elf.cfi`` unwind tables, DWARF location
expressions elsewhere) calls these and turns :class:`Leb128Error` into its own
"malformed" error.  Positions are absolute in ``data``; ``end`` (default: its
length) is where the number must end by, so a window of a larger mapping is
read without copying it.
"""

from __future__ import annotations

import mmap

__all__ = ["Leb128Error", "read_sleb", "read_uleb", "signed"]


#: What the numbers are read from: a file's bytes, or a mapping of it.
Data = bytes | bytearray | mmap.mmap


class Leb128Error(ValueError):
    """A LEB128 number runs past the end of its data."""


def read_uleb(data: Data, pos: int, end: int | None = None) -> tuple[int, int]:
    """The unsigned LEB128 number at ``pos`` and the position after it."""
    limit = len(data) if end is None else end
    if pos >= limit:
        raise Leb128Error("a LEB128 number runs past the end of its data")
    byte = data[pos]
    if byte < 0x80:  # most numbers (abbreviation codes, forms, small sizes): one byte
        return byte, pos + 1
    result = byte & 0x7F
    shift = 7
    pos += 1
    while True:
        if pos >= limit:
            raise Leb128Error("a LEB128 number runs past the end of its data")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def read_sleb(data: Data, pos: int, end: int | None = None) -> tuple[int, int]:
    """The signed LEB128 number at ``pos`` and the position after it."""
    value, after = read_uleb(data, pos, end)
    return signed(value, after - pos), after


def signed(value: int, length: int) -> int:
    """A LEB128 number of ``length`` bytes, decoded unsigned, read as signed (for a
    reader that decoded it with its own ``uleb``)."""
    bits = 7 * length
    return value - (1 << bits) if value >> (bits - 1) & 1 else value

"""``.eh_frame`` of the new block: the unwind table of the code relive loads.

The compiler's ``.eh_frame`` describes every function of the translation unit;
relive loads only the changed and new ones.  The block's table keeps only the
records that describe loaded code: the FDE of each loaded function and the CIEs
those FDEs refer to, in their original order (an FDE finds its CIE by a
backward distance, which is recomputed for the new positions).  The relocations
of the kept records move with them, and the table is relocated like code (its
FDEs point at functions PC-relatively).  A 10,000-function unit's table is a few
hundred kilobytes; a one-function reload keeps a few dozen bytes of it, so long
sessions do not fill the data arena with descriptions of code that is not there.

Which FDE describes which code is read from the relocation of its start
address (``pc_begin``, 8 bytes into the record, whatever its encoding): an FDE
whose start is relocated against a loaded section is kept, any other dropped.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from relive.elf.objfile import ObjectFile, Relocation, Section
from relive.errors import BadObject, LinkError

#: The section's name in objects.
EH_FRAME = ".eh_frame"
#: A zero length word ends the table (crtend.o provides it in a linked program).
TERMINATOR = bytes(4)
#: Room for libgcc's ``struct object`` that ``__register_frame_info`` fills in
#: (seven pointer-sized words in GCC 12; kept generous for other versions).
UNWIND_OBJECT_SIZE = 128
#: Where an FDE's CIE pointer and start address are, from the record's start.
_CIE_POINTER = 4
_PC_BEGIN = 8


@dataclass(frozen=True)
class KeptRecord:
    """One record of the object's ``.eh_frame`` that the block's table keeps."""

    #: Where the record starts in the object's section and in the block's table.
    old: int
    new: int
    #: Bytes of the whole record (its length word included).
    size: int
    #: For an FDE, the old offset of its CIE; None for a CIE.
    cie: int | None


@dataclass(frozen=True)
class TrimmedTable:
    """The block's unwind table: which records of the object's ``.eh_frame`` it keeps."""

    #: Index of the object's ``.eh_frame`` section.
    section: int
    records: tuple[KeptRecord, ...]
    #: Bytes of the kept records (the terminator not included).
    size: int

    @property
    def fde_count(self) -> int:
        return sum(record.cie is not None for record in self.records)


def trim_eh_frame(obj: ObjectFile, section: Section, loaded: Iterable[int]) -> TrimmedTable | None:
    """The records of the object's ``.eh_frame`` (``section``) that describe code in
    the ``loaded`` sections, with their CIEs; None when no FDE does."""
    loaded = frozenset(loaded)
    starts = {
        reloc.offset - _PC_BEGIN
        for reloc in obj.relocations.get(section.index, ())
        if reloc.symbol.is_defined and reloc.symbol.shndx in loaded
    }
    every = list(_records(obj.path, section.content()))
    fdes: list[tuple[int, int, int]] = []  # (start, size, CIE start) of each kept FDE
    for start, size, cie_id in every:
        if cie_id and start in starts:
            fdes.append((start, size, start + _CIE_POINTER - cie_id))
    if not fdes:
        return None
    cies = {cie for _, _, cie in fdes}
    kept: list[tuple[int, int, int | None]] = [
        (start, size, None) for start, size, cie_id in every if start in cies and not cie_id
    ]
    if len(kept) != len(cies):
        raise BadObject(
            f"{obj.path} is corrupt: an .eh_frame FDE's CIE pointer leads to no CIE",
            hint="rebuild the object",
        )
    kept.extend(fdes)
    kept.sort(key=lambda record: record[0])
    records: list[KeptRecord] = []
    cursor = 0
    for start, size, cie in kept:
        records.append(KeptRecord(start, cursor, size, cie))
        cursor += size
    return TrimmedTable(section.index, tuple(records), cursor)


def build_table(data: bytes, table: TrimmedTable) -> bytes:
    """The kept records of ``data`` packed together, each FDE's CIE pointer recomputed
    (relocations not applied yet)."""
    out = bytearray(table.size)
    moved = {record.old: record.new for record in table.records}
    for record in table.records:
        out[record.new : record.new + record.size] = data[record.old : record.old + record.size]
        if record.cie is not None:
            pointer = record.new + _CIE_POINTER
            struct.pack_into("<I", out, pointer, pointer - moved[record.cie])
    return bytes(out)


def move_relocations(relocations: Sequence[Relocation], table: TrimmedTable) -> list[Relocation]:
    """The relocations of the kept records, at their offsets in the trimmed table."""
    spans = sorted((r.old, r.old + r.size, r.new - r.old) for r in table.records)
    moved: list[Relocation] = []
    for reloc in relocations:
        shift = _shift(spans, reloc.offset)
        if shift is not None:
            moved.append(reloc._replace(offset=reloc.offset + shift))
    return moved


def _shift(spans: list[tuple[int, int, int]], offset: int) -> int | None:
    low, high = 0, len(spans)
    while low < high:
        middle = (low + high) // 2
        if spans[middle][1] <= offset:
            low = middle + 1
        else:
            high = middle
    if low < len(spans) and spans[low][0] <= offset:
        return spans[low][2]
    return None


def _records(path: str, data: bytes) -> Iterable[tuple[int, int, int]]:
    """(start, size, CIE id) of every record; the CIE id is 0 for a CIE."""
    pos = 0
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        if length == 0:
            return
        if length == 0xFFFFFFFF:
            raise LinkError(
                "64-bit .eh_frame records are not supported", hint="please report the object"
            )
        if length < 4 or pos + 4 + length > len(data):
            raise BadObject(
                f"{path} is corrupt: the .eh_frame record at {pos:#x} runs past the end "
                "of its section",
                hint="rebuild the object",
            )
        (cie_id,) = struct.unpack_from("<I", data, pos + 4)
        yield pos, 4 + length, cie_id
        pos += 4 + length

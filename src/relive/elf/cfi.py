"""Call frame information (``.eh_frame``): where a frame's CFA and saved registers are.

relive rewrites return addresses on a thread's stack when it moves a frame
into new code, so it must know, not guess, which stack word is a return
address: it unwinds the stack with the same tables the C++ runtime uses.
This module decodes ``.eh_frame`` (CIEs, FDEs, pointer encodings), finds the
FDE of an address through ``.eh_frame_hdr`` (or by scanning), and runs the
CFA program up to an address to give one :class:`Row` of the unwind table.
It also evaluates the small DWARF expressions that signal frames use.

Everything here is pure: bytes in, rows out; registers are DWARF numbers.
"""

from __future__ import annotations

import bisect
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from relive.elf.filecache import FileIdentity, file_identity
from relive.elf.leb128 import Leb128Error, read_uleb, signed
from relive.elf.objfile import parse_elf_header, parse_section_headers, section_names
from relive.errors import ReliveError

#: Pointer encodings (DW_EH_PE_*): low nibble is the format, high nibble how it applies.
_PE_OMIT = 0xFF
_PE_PCREL = 0x10
_PE_DATAREL = 0x30
_PE_INDIRECT = 0x80
#: An ``.eh_frame_hdr`` as GNU ld, gold, lld and mold write it: version 1, the
#: ``.eh_frame`` pointer pc-relative sdata4, the count udata4, the table
#: datarel sdata4 (pairs of initial location and FDE address).
_USUAL_HDR = bytes((1, 0x1B, 0x03, 0x3B))
#: Fixed-size pointer formats: (bytes, signed).
_FIXED_FORMATS = {
    0x00: (8, False),
    0x02: (2, False),
    0x03: (4, False),
    0x04: (8, False),
    0x0A: (2, True),
    0x0B: (4, True),
    0x0C: (8, True),
}


class CfiError(Exception):
    """The unwind tables are malformed or use something this reader does not know."""


@dataclass(frozen=True)
class Rule:
    """How the caller's value of one register is found (DWARF register rules)."""

    kind: str  # "offset", "val_offset", "register", "expression", "val_expression", "same"
    value: int = 0  # offset from the CFA, or register number
    expression: bytes = b""


@dataclass(frozen=True)
class Row:
    """One row of the unwind table: the CFA and the register rules at an address."""

    cfa_register: int  # -1 when the CFA is an expression
    cfa_offset: int
    cfa_expression: bytes
    rules: dict[int, Rule]
    return_column: int
    signal_frame: bool  # the caller was interrupted, not calling: its PC is exact


@dataclass
class _Cie:
    code_align: int
    data_align: int
    return_column: int
    fde_encoding: int
    signal_frame: bool
    has_augmentation_data: bool
    initial: bytes


@dataclass
class _Reader:
    data: bytes
    pos: int = 0

    def u(self, size: int) -> int:
        value = int.from_bytes(self.data[self.pos : self.pos + size], "little")
        if self.pos + size > len(self.data):
            raise CfiError("unwind table ends early")
        self.pos += size
        return value

    def s(self, size: int) -> int:
        value = self.u(size)
        top = 1 << (size * 8 - 1)
        return value - (top << 1) if value & top else value

    def uleb(self) -> int:
        try:
            value, self.pos = read_uleb(self.data, self.pos)
        except Leb128Error as e:
            raise CfiError(str(e)) from None
        return value

    def sleb(self) -> int:
        start = self.pos
        return signed(self.uleb(), self.pos - start)

    def cstr(self) -> bytes:
        end = self.data.index(b"\0", self.pos)
        text = self.data[self.pos : end]
        self.pos = end + 1
        return text

    def pointer(self, encoding: int, base: int) -> int:
        """A DW_EH_PE-encoded pointer; ``base`` is the address of ``data[0]``."""
        if encoding == _PE_OMIT:
            return 0
        here = base + self.pos
        fmt = encoding & 0x0F
        if fmt in _FIXED_FORMATS:
            size, signed = _FIXED_FORMATS[fmt]
            value = self.s(size) if signed else self.u(size)
        elif fmt == 0x01:
            value = self.uleb()
        elif fmt == 0x09:
            value = self.sleb()
        else:
            raise CfiError(f"unknown pointer encoding {encoding:#x}")
        application = encoding & 0x70
        if application == _PE_PCREL:
            value += here
        elif application not in (0, _PE_DATAREL):
            raise CfiError(f"unsupported pointer application {encoding:#x}")
        if encoding & _PE_INDIRECT:
            raise CfiError("indirect pointers in an FDE")
        return value & 0xFFFFFFFFFFFFFFFF


#: Most rows a table remembers (a bound for a long session whose threads stop
#: anywhere: a row is a few hundred bytes).
_MOST_ROWS_KEPT = 4096


@dataclass
class FrameTable:
    """The ``.eh_frame`` of one file, with an index from addresses to FDEs.

    Addresses are link-time virtual addresses (subtract a module's bias first).
    """

    data: bytes
    address: int  # link-time address of data[0]
    #: Sorted FDE start addresses, their ends, and offsets into ``data``.  ``ends``
    #: is empty when the index came from ``.eh_frame_hdr`` (each FDE says its own).
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    _cies: dict[int, _Cie] = field(default_factory=dict)
    #: Rows worked out, by address: a table is kept per file (``load_frame_table``),
    #: so a long ``watch`` walking the same stacks at each reload decodes them once.
    _rows: dict[int, Row | None] = field(default_factory=dict)

    @classmethod
    def from_section(cls, data: bytes, address: int) -> FrameTable:
        """Index every FDE of an ``.eh_frame`` section loaded at ``address``."""
        table = cls(data, address)
        entries = []
        for offset, is_cie in _iter_entries(data):
            if is_cie:
                continue
            start, length, _, _ = table._fde_header(offset)
            entries.append((start, start + length, offset))
        entries.sort()
        table.starts = [e[0] for e in entries]
        table.ends = [e[1] for e in entries]
        table.offsets = [e[2] for e in entries]
        return table

    @classmethod
    def from_search_table(
        cls, data: bytes, address: int, header: bytes, header_address: int
    ) -> FrameTable | None:
        """Index the FDEs from the linker's sorted ``.eh_frame_hdr`` table, without
        reading them (a libc has thousands; an unwind needs a few).  None when the
        header uses encodings other than the usual ones (then read every FDE)."""
        if len(header) < 12 or header[:4] != _USUAL_HDR:
            return None
        (count,) = struct.unpack_from("<I", header, 8)
        if len(header) < 12 + 8 * count:
            return None
        pairs = struct.unpack_from(f"<{2 * count}i", header, 12)
        starts = [header_address + p for p in pairs[0::2]]
        offsets = [header_address + p - address for p in pairs[1::2]]
        if starts != sorted(starts) or (
            offsets and not 0 <= min(offsets) <= max(offsets) < len(data)
        ):
            return None  # not sorted, or outside .eh_frame: do not trust it
        return cls(data, address, starts, [], offsets)

    def find_row(self, address: int) -> Row | None:
        """The unwind row that applies at ``address``, or None if no FDE covers it."""
        if address in self._rows:
            return self._rows[address]
        row = self._find_row(address)
        if len(self._rows) >= _MOST_ROWS_KEPT:
            self._rows.clear()
        self._rows[address] = row
        return row

    def _find_row(self, address: int) -> Row | None:
        i = bisect.bisect_right(self.starts, address) - 1
        if i < 0:
            return None
        if self.ends:
            if address >= self.ends[i]:
                return None
        else:
            start, size, _, _ = self._fde_header(self.offsets[i])
            if not start <= address < start + size:
                return None
        return self.row_at(self.offsets[i], address)

    def row_at(self, fde_offset: int, address: int) -> Row:
        """Run the CIE's and the FDE's CFA programs up to ``address``."""
        start, _, cie, program = self._fde_header(fde_offset)
        state = _State(cie)
        state.run(cie.initial, start, address, self.address, initial=True)
        state.run(program, start, address, self.address, initial=False)
        return state.row()

    def _fde_header(self, offset: int) -> tuple[int, int, _Cie, bytes]:
        reader = _Reader(self.data, offset)
        length, body = _entry_length(reader)
        end = body + length
        cie_pointer_at = reader.pos
        cie_offset = cie_pointer_at - reader.u(4)
        cie = self._cie(cie_offset)
        start = reader.pointer(cie.fde_encoding, self.address)
        size = reader.pointer(cie.fde_encoding & 0x0F, 0)
        if cie.has_augmentation_data:
            reader.pos += reader.uleb()
        return start, size, cie, self.data[reader.pos : end]

    def _cie(self, offset: int) -> _Cie:
        cached = self._cies.get(offset)
        if cached is None:
            cached = self._cies[offset] = _parse_cie(self.data, offset, self.address)
        return cached


def _entry_length(reader: _Reader) -> tuple[int, int]:
    length = reader.u(4)
    if length == 0xFFFFFFFF:
        length = reader.u(8)
    return length, reader.pos


def _iter_entries(data: bytes) -> list[tuple[int, bool]]:
    """``(offset, is_cie)`` of every entry, up to the zero terminator."""
    found = []
    pos = 0
    while pos + 4 <= len(data):
        reader = _Reader(data, pos)
        length, body = _entry_length(reader)
        if length == 0:
            break
        found.append((pos, reader.u(4) == 0))
        pos = body + length
    return found


def _parse_cie(data: bytes, offset: int, address: int) -> _Cie:
    reader = _Reader(data, offset)
    length, body = _entry_length(reader)
    end = body + length
    if reader.u(4) != 0:
        raise CfiError("an FDE points at something that is not a CIE")
    version = reader.u(1)
    augmentation = reader.cstr()
    if b"eh" in augmentation:
        reader.u(8)
    code_align = reader.uleb()
    data_align = reader.sleb()
    return_column = reader.u(1) if version == 1 else reader.uleb()
    fde_encoding = 0
    signal_frame = False
    has_data = augmentation.startswith(b"z")
    if has_data:
        size = reader.uleb()
        data_end = reader.pos + size
        for letter in augmentation[1:]:
            if letter == ord("R"):
                fde_encoding = reader.u(1)
            elif letter == ord("P"):
                reader.pointer(reader.u(1) & 0x7F, address)
            elif letter == ord("L"):
                reader.u(1)
            elif letter == ord("S"):
                signal_frame = True
        reader.pos = data_end
    return _Cie(
        code_align,
        data_align,
        return_column,
        fde_encoding,
        signal_frame,
        has_data,
        data[reader.pos : end],
    )


class _State:
    """The CFA program's registers while it runs."""

    def __init__(self, cie: _Cie) -> None:
        self.cie = cie
        self.cfa_register = 7
        self.cfa_offset = 8
        self.cfa_expression = b""
        self.rules: dict[int, Rule] = {}
        self.initial_rules: dict[int, Rule] = {}
        self.stack: list[tuple[int, int, bytes, dict[int, Rule]]] = []

    def row(self) -> Row:
        return Row(
            self.cfa_register if not self.cfa_expression else -1,
            self.cfa_offset,
            self.cfa_expression,
            dict(self.rules),
            self.cie.return_column,
            self.cie.signal_frame,
        )

    def run(self, program: bytes, start: int, target: int, base: int, initial: bool) -> None:
        reader = _Reader(program)
        location = start
        align = self.cie.code_align
        data_align = self.cie.data_align
        while reader.pos < len(program):
            op = reader.u(1)
            high, low = op & 0xC0, op & 0x3F
            if high == 0x40:
                location += low * align
            elif high == 0x80:
                self.rules[low] = Rule("offset", reader.uleb() * data_align)
            elif high == 0xC0:
                self._restore(low)
            elif op in (0x02, 0x03, 0x04):
                location += reader.u({0x02: 1, 0x03: 2, 0x04: 4}[op]) * align
            elif op == 0x01:
                location = reader.pointer(self.cie.fde_encoding, base)
            else:
                self._other(op, reader, data_align)
            if location > target:
                break
        if initial:
            self.initial_rules = dict(self.rules)

    def _restore(self, register: int) -> None:
        if register in self.initial_rules:
            self.rules[register] = self.initial_rules[register]
        else:
            self.rules.pop(register, None)

    def _other(self, op: int, reader: _Reader, data_align: int) -> None:  # noqa: C901
        if op == 0x00:  # nop
            return
        if op == 0x05:  # offset_extended
            register = reader.uleb()
            self.rules[register] = Rule("offset", reader.uleb() * data_align)
        elif op == 0x11:  # offset_extended_sf
            register = reader.uleb()
            self.rules[register] = Rule("offset", reader.sleb() * data_align)
        elif op == 0x06:  # restore_extended
            self._restore(reader.uleb())
        elif op == 0x07:  # undefined
            self.rules[reader.uleb()] = Rule("undefined")
        elif op == 0x08:  # same_value
            self.rules[reader.uleb()] = Rule("same")
        elif op == 0x09:  # register
            register = reader.uleb()
            self.rules[register] = Rule("register", reader.uleb())
        elif op == 0x0A:  # remember_state
            state = (self.cfa_register, self.cfa_offset, self.cfa_expression, dict(self.rules))
            self.stack.append(state)
        elif op == 0x0B:  # restore_state
            if not self.stack:
                raise CfiError("restore_state without remember_state")
            self.cfa_register, self.cfa_offset, self.cfa_expression, self.rules = self.stack.pop()
        elif op == 0x0C:  # def_cfa
            self.cfa_register, self.cfa_offset, self.cfa_expression = (
                reader.uleb(),
                reader.uleb(),
                b"",
            )
        elif op == 0x12:  # def_cfa_sf
            self.cfa_register = reader.uleb()
            self.cfa_offset = reader.sleb() * data_align
            self.cfa_expression = b""
        elif op == 0x0D:  # def_cfa_register
            self.cfa_register = reader.uleb()
            self.cfa_expression = b""
        elif op == 0x0E:  # def_cfa_offset
            self.cfa_offset = reader.uleb()
        elif op == 0x13:  # def_cfa_offset_sf
            self.cfa_offset = reader.sleb() * data_align
        elif op == 0x0F:  # def_cfa_expression
            size = reader.uleb()
            self.cfa_expression = program_slice(reader, size)
        elif op in (0x10, 0x16):  # expression, val_expression
            register = reader.uleb()
            size = reader.uleb()
            kind = "expression" if op == 0x10 else "val_expression"
            self.rules[register] = Rule(kind, 0, program_slice(reader, size))
        elif op == 0x14:  # val_offset
            register = reader.uleb()
            self.rules[register] = Rule("val_offset", reader.uleb() * data_align)
        elif op == 0x15:  # val_offset_sf
            register = reader.uleb()
            self.rules[register] = Rule("val_offset", reader.sleb() * data_align)
        elif op == 0x2E:  # GNU_args_size
            reader.uleb()
        elif op == 0x2F:  # GNU_negative_offset_extended
            register = reader.uleb()
            self.rules[register] = Rule("offset", -reader.uleb() * data_align)
        else:
            raise CfiError(f"unknown CFA instruction {op:#x}")


def program_slice(reader: _Reader, size: int) -> bytes:
    """The next ``size`` bytes of a CFA program (an expression block)."""
    block = reader.data[reader.pos : reader.pos + size]
    reader.pos += size
    return block


def evaluate(
    expression: bytes,
    register: Callable[[int], int],
    read_word: Callable[[int], int],
    initial: int | None = None,
) -> int:
    """Evaluate a DWARF expression of the kinds unwind tables use.

    Supported: ``DW_OP_breg0..31``, ``lit0..31``, ``const*``, ``deref``,
    ``plus_uconst``, ``plus``, ``minus``; anything else raises :class:`CfiError`.
    """
    stack: list[int] = [] if initial is None else [initial]
    reader = _Reader(expression)
    mask = 0xFFFFFFFFFFFFFFFF
    while reader.pos < len(expression):
        op = reader.u(1)
        if 0x70 <= op <= 0x8F:
            stack.append((register(op - 0x70) + reader.sleb()) & mask)
        elif 0x30 <= op <= 0x4F:
            stack.append(op - 0x30)
        elif op == 0x06:
            stack.append(read_word(stack.pop()))
        elif op == 0x23:
            stack.append((stack.pop() + reader.uleb()) & mask)
        elif op in (0x08, 0x0A, 0x0C, 0x0E):
            stack.append(reader.u({0x08: 1, 0x0A: 2, 0x0C: 4, 0x0E: 8}[op]))
        elif op in (0x09, 0x0B, 0x0D, 0x0F):
            stack.append(reader.s({0x09: 1, 0x0B: 2, 0x0D: 4, 0x0F: 8}[op]) & mask)
        elif op == 0x10:
            stack.append(reader.uleb())
        elif op == 0x11:
            stack.append(reader.sleb() & mask)
        elif op == 0x22:
            right = stack.pop()
            stack.append((stack.pop() + right) & mask)
        elif op == 0x1C:
            right = stack.pop()
            stack.append((stack.pop() - right) & mask)
        else:
            raise CfiError(f"unsupported DWARF expression operator {op:#x}")
    if not stack:
        raise CfiError("empty DWARF expression")
    return stack[-1]


@lru_cache(maxsize=32)
def _load_file_table(path: str, identity: FileIdentity) -> FrameTable | None:
    del identity  # part of the cache key only
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        header = parse_elf_header(path, data, "executable or shared library")
        sections = parse_section_headers(path, data, header)
        found = {
            name: section
            for name, section in zip(
                section_names(path, data, header, sections), sections, strict=True
            )
            if name in (".eh_frame", ".eh_frame_hdr") and section.size
        }
        frames = found.get(".eh_frame")
        if frames is None:
            return None
        contents = bytes(data[frames.offset : frames.offset + frames.size])
        index = found.get(".eh_frame_hdr")
        if index is not None:
            table = FrameTable.from_search_table(
                contents,
                frames.addr,
                bytes(data[index.offset : index.offset + index.size]),
                index.addr,
            )
            if table is not None:
                return table
        return FrameTable.from_section(contents, frames.addr)


def load_frame_table(path: str) -> FrameTable | None:
    """The indexed ``.eh_frame`` of an executable or library (None if it has none)."""
    try:
        st = os.stat(path)
        return _load_file_table(path, file_identity(st))
    except (OSError, ValueError, CfiError, ReliveError):  # a malformed file: no table
        return None

"""Types, variables and functions of single DWARF compile units, read on demand.

The layout check (``relive.patch.layout_check``) compares what one source file
declared when the running program was built with what it declares now.  It
needs a handful of DIEs out of units that can hold hundreds of thousands, so
nothing is decoded up front: a unit is found by its top DIE, its top-level
children are indexed by name (skipping their subtrees through ``DW_AT_sibling``
where the producer gave one, gcc does; by walking them otherwise, as for
clang), and every other DIE is decoded only when a reference leads to it.

Uses the section and abbreviation machinery of :mod:`relive.elf.dwarf`; DWARF 2
to 5, 32- and 64-bit, relocatable objects and linked files alike.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, TypeVar

from relive.elf.constants import SHT_RELA
from relive.elf.dwarf import (
    _FIXED,
    _FORM_ADDR,
    _FORM_IMPLICIT_CONST,
    _FORM_INDIRECT,
    _FORM_LINE_STRP,
    _FORM_REF_ADDR,
    _FORM_STRING,
    _FORM_STRP,
    _FORM_STRX,
    _OFFSET,
    _ULEB,
    _Malformed,
    _Reader,
    _Section,
    _Unit,
)
from relive.elf.filecache import FileCache
from relive.elf.objfile import SectionHeader
from relive.elf.rela import RelaTable
from relive.errors import BadObject

__all__ = ["Die", "DwarfFile", "TypeUnit", "open_dwarf"]

# Tags (DWARF 5, 7.5.3).
TAG_ARRAY = 0x01
TAG_ENUM = 0x04
TAG_PARAMETER = 0x05
TAG_LEXICAL_BLOCK = 0x0B
TAG_INLINED_SUBROUTINE = 0x1D
TAG_MEMBER = 0x0D
TAG_POINTER = 0x0F
TAG_REFERENCE = 0x10
TAG_STRUCT = 0x13
TAG_SUBROUTINE_TYPE = 0x15
TAG_TYPEDEF = 0x16
TAG_UNION = 0x17
TAG_VARARGS = 0x18
TAG_SUBRANGE = 0x21
TAG_BASE = 0x24
TAG_CONST = 0x26
TAG_ENUMERATOR = 0x28
TAG_SUBPROGRAM = 0x2E
TAG_VARIABLE = 0x34
TAG_VOLATILE = 0x35
TAG_RESTRICT = 0x37
TAG_ATOMIC = 0x47
TAG_UNSPECIFIED = 0x3B

# Attributes.
AT_SIBLING = 0x01
AT_LOCATION = 0x02
AT_NAME = 0x03
AT_BYTE_SIZE = 0x0B
AT_BIT_OFFSET = 0x0C
AT_BIT_SIZE = 0x0D
AT_LOW_PC = 0x11
AT_HIGH_PC = 0x12
AT_FRAME_BASE = 0x40
AT_CONST_VALUE = 0x1C
AT_LOWER_BOUND = 0x22
AT_UPPER_BOUND = 0x2F
AT_COUNT = 0x37
AT_MEMBER_LOCATION = 0x38
AT_DECLARATION = 0x3C
AT_ENCODING = 0x3E
AT_EXTERNAL = 0x3F
AT_TYPE = 0x49
AT_RANGES = 0x55
AT_DATA_BIT_OFFSET = 0x6B
AT_ADDR_BASE = 0x73
AT_RNGLISTS_BASE = 0x74
AT_SPECIFICATION = 0x47
AT_ABSTRACT_ORIGIN = 0x31

#: Type entries whose children describe them (members, enumerators, bounds, parameters).
_TYPE_TAGS_WITH_CHILDREN = frozenset(
    {TAG_STRUCT, TAG_UNION, TAG_ENUM, TAG_ARRAY, TAG_SUBROUTINE_TYPE}
)
#: Top-level tags the index keeps, by name.
_INDEXED = frozenset({TAG_VARIABLE, TAG_SUBPROGRAM, TAG_STRUCT, TAG_UNION, TAG_ENUM, TAG_TYPEDEF})

_REF_FORMS = frozenset({0x11, 0x12, 0x13, 0x14, 0x15})  # unit-relative references
_FORM_REF_SIG8 = 0x20
_STRING_FORMS = frozenset({_FORM_STRP, _FORM_LINE_STRP, _FORM_STRING, *_FORM_STRX})
_FORM_ADDRX = frozenset({0x1B, 0x29, 0x2A, 0x2B, 0x2C})
_FORM_SDATA = 0x0D
_FORM_FLAG_PRESENT = 0x19
_BLOCK_FORMS = {0x03: 2, 0x04: 4, 0x0A: 1, 0x09: 0, 0x18: 0}

#: A decoded attribute value: an integer (constants, flags, section offsets of
#: references), a string, or the bytes of a block or expression.
Value = int | str | bytes
_K = TypeVar("_K", str, tuple[int, str])


class Die(NamedTuple):
    """One debugging information entry, its attributes decoded.

    References (``DW_AT_type``, ``DW_AT_sibling``...) are offsets in
    ``.debug_info``, comparable with :attr:`offset`.
    """

    offset: int
    tag: int
    attrs: dict[int, Value]
    #: Where its first child starts, or None when it has no children.
    children_at: int | None
    #: The form each attribute was given in (signed constants need it).
    forms: dict[int, int]
    #: Where the entry after it starts when it has no children (else its first child).
    end: int

    def name(self) -> str | None:
        """DW_AT_name, if any."""
        value = self.attrs.get(AT_NAME)
        return value if isinstance(value, str) else None

    def number(self, attr: int) -> int | None:
        """An integer attribute, or None when absent or not an integer."""
        value = self.attrs.get(attr)
        return value if isinstance(value, int) else None

    def ref(self, attr: int) -> int | None:
        """A reference attribute (a ``.debug_info`` offset), or None."""
        return self.number(attr)


class _Abbrev:
    """One abbreviation, with what a walk needs precomputed for the unit's sizes."""

    __slots__ = (
        "declared",
        "fixed_size",
        "has_children",
        "jump",
        "name",
        "ops",
        "prefix",
        "sibling",
        "specs",
        "tag",
        "to_sibling",
        "unpack",
        "widths",
    )

    def __init__(
        self, tag: int, has_children: bool, specs: list[tuple[int, int, int]], unit: TypeUnit
    ) -> None:
        self.tag = tag
        self.has_children = has_children
        self.specs = specs
        #: Offset of each attribute from the DIE's first attribute, while every
        #: attribute before it has a fixed size (None after the first that has not).
        self.prefix: list[int | None] = []
        #: Bytes of each attribute's value, None where it varies.
        self.widths = [unit.form_width(form) for _, form, _ in specs]
        offset: int | None = 0
        for width in self.widths:
            self.prefix.append(offset)
            offset = None if offset is None or width is None else offset + width
        #: Bytes of all its attributes, when every form has a fixed size.
        self.fixed_size = offset
        attrs = [attr for attr, _, _ in specs]
        #: Attribute index of DW_AT_name and DW_AT_sibling, or -1.
        self.name = attrs.index(AT_NAME) if AT_NAME in attrs else -1
        self.sibling = attrs.index(AT_SIBLING) if AT_SIBLING in attrs else -1
        if self.sibling >= 0 and specs[self.sibling][1] not in _REF_FORMS:
            self.sibling = -1
        self.declared = AT_DECLARATION in attrs
        #: Where DW_AT_sibling is (offset from the first attribute, width; 0 for
        #: ULEB128) when its position is fixed: a walk jumps over the subtree.
        self.jump: tuple[int, int] | None = None
        if self.sibling >= 0 and has_children:
            at = self.prefix[self.sibling]
            form = specs[self.sibling][1]
            if at is not None:
                self.jump = (at, 0 if form == 0x15 else _FIXED[form])
        self.ops = _skip_ops(specs, unit)
        #: Skip operations up to DW_AT_sibling when its position varies.
        self.to_sibling: tuple[int, ...] | None = None
        if self.sibling >= 0 and has_children and self.jump is None:
            self.to_sibling = _skip_ops(specs[: self.sibling], unit)
        #: How to read the wanted attributes in one ``struct`` call (None: sizes vary).
        self.unpack = _build_unpacker(self, unit.file.reader.relocatable)


#: The attributes the layout check reads; others are skipped when decoding.
_WANTED_ATTRS = frozenset(
    {
        AT_SIBLING, AT_LOCATION, AT_NAME, AT_BYTE_SIZE, AT_BIT_OFFSET, AT_BIT_SIZE,
        AT_LOW_PC, AT_HIGH_PC, AT_CONST_VALUE, AT_LOWER_BOUND, AT_UPPER_BOUND, AT_COUNT,
        AT_MEMBER_LOCATION, AT_DECLARATION, AT_ENCODING, AT_EXTERNAL, AT_TYPE, AT_RANGES,
        AT_DATA_BIT_OFFSET, AT_ADDR_BASE, AT_RNGLISTS_BASE, AT_SPECIFICATION,
        AT_ABSTRACT_ORIGIN,
    }
)  # fmt: skip
_STRUCT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
#: A ``struct`` layout of a DIE's attributes, and per wanted attribute: index in
#: the unpacked tuple (-1: a constant), attribute, form, offset, constant value.
_Unpacker = tuple[struct.Struct, list[tuple[int, int, int, int, int, int]]]


def _build_unpacker(abbrev: _Abbrev, relocatable: bool) -> _Unpacker | None:
    if abbrev.fixed_size is None:
        return None
    fmt = "<"
    wanted: list[tuple[int, int, int, int, int, int]] = []
    index = 0
    for (attr, form, implicit), width, offset in zip(
        abbrev.specs, abbrev.widths, abbrev.prefix, strict=True
    ):
        assert width is not None and offset is not None
        if attr not in _WANTED_ATTRS:
            fmt += f"{width}x" if width else ""
        elif width == 0:
            constant = 1 if form == _FORM_FLAG_PRESENT else implicit
            wanted.append((-1, attr, form, offset, constant, _KIND_CONSTANT))
        elif width in _STRUCT_CODES:
            fmt += _STRUCT_CODES[width]
            if form in _REF_FORMS:
                kind = _KIND_REF
            elif form == _FORM_STRP:
                kind = _KIND_STRP
            elif form in _STRING_FORMS or (relocatable and (form in _OFFSET or form == _FORM_ADDR)):
                kind = _KIND_DECODE
            else:
                kind = _KIND_RAW
            wanted.append((index, attr, form, offset, implicit, kind))
            index += 1
        else:
            return None  # three-byte forms
    return struct.Struct(fmt), wanted


_KIND_RAW, _KIND_REF, _KIND_STRP, _KIND_CONSTANT, _KIND_DECODE = range(5)


#: Skip operations: a non-negative number skips that many bytes; these skip a value.
_OP_LEB = -1
_OP_STRING = -2
_OP_BLOCK_LEB = -3
_OP_BLOCK = {0x0A: -4, 0x03: -5, 0x04: -6}  # block1, block2, block4
_OP_WIDTH = {-4: 1, -5: 2, -6: 4}


def _skip_ops(specs: list[tuple[int, int, int]], unit: TypeUnit) -> tuple[int, ...] | None:
    """How to skip a DIE's attributes quickly; None if a form needs full decoding."""
    ops: list[int] = []
    fixed = 0
    for _, form, _ in specs:
        width = unit.form_width(form)
        if width is not None:
            fixed += width
            continue
        if fixed:
            ops.append(fixed)
            fixed = 0
        if form in _ULEB or form == _FORM_SDATA or form == 0x15:
            ops.append(_OP_LEB)
        elif form == _FORM_STRING:
            ops.append(_OP_STRING)
        elif form in (0x18, 0x09):  # exprloc, block
            ops.append(_OP_BLOCK_LEB)
        elif form in _OP_BLOCK:
            ops.append(_OP_BLOCK[form])
        else:
            return None
    if fixed:
        ops.append(fixed)
    return tuple(ops)


@dataclass
class TypeUnit:
    """One compile unit: its top-level names, and its DIEs decoded on demand."""

    file: DwarfFile
    #: Offset of the unit header in .debug_info (references are relative to it).
    start: int
    end: int
    top: int
    abbrev_offset: int
    unit: _Unit
    name: str
    comp_dir: str | None
    variables: dict[str, int] = field(default_factory=dict)
    functions: dict[str, int] = field(default_factory=dict)
    #: (tag, name) -> offset; typedefs under TAG_TYPEDEF.
    types: dict[tuple[int, str], int] = field(default_factory=dict)
    _dies: dict[int, Die] = field(default_factory=dict)
    _abbrevs: dict[int, _Abbrev] = field(default_factory=dict)
    #: Where indexing goes on (-1: not started; None: done).
    _next: int | None = -1
    _declarations: set[int] = field(default_factory=set)

    @property
    def path(self) -> str:
        """The unit's source as an absolute path (when the unit says where it was built)."""
        if os.path.isabs(self.name) or self.comp_dir is None:
            return os.path.normpath(self.name)
        return os.path.normpath(os.path.join(self.comp_dir, self.name))

    # -- decoding -----------------------------------------------------------------

    def die(self, offset: int) -> Die:
        """The DIE at ``offset`` (a .debug_info offset inside this unit)."""
        found = self._dies.get(offset)
        if found is None:
            if not self.start < offset < self.end:
                raise _Malformed(f"a reference leads out of its unit ({offset:#x})")
            found = self._decode(offset)[0]
            self._dies[offset] = found
        return found

    def top_die(self) -> Die:
        """The unit's own DIE (name, ranges, bases)."""
        return self.die(self.top)

    def children(
        self, die: Die, tags: frozenset[int] | None = None, keep: bool = True
    ) -> Iterator[Die]:
        """The children of ``die``, in order (only those with one of ``tags``).

        ``keep=False`` for a walk over the whole unit that reads each DIE once
        (every function's statics): its DIEs are not kept for later lookups, so
        a big unit's walk does not hold them all in memory."""
        pos = die.children_at
        if pos is None:
            return
        info = self.file.reader.info
        while True:
            code, _ = info.uleb(pos)
            if code == 0:
                return
            if tags is not None and (self._abbrevs.get(code) or self._abbrev(code)).tag not in tags:
                pos = self._skip(pos)
                continue
            child = self._dies.get(pos)
            if child is None:
                child, _ = self._decode(pos)
                if keep:
                    self._dies[pos] = child
            yield child
            pos = child.end if child.children_at is None else self._skip(pos)

    def _abbrev(self, code: int) -> _Abbrev:
        found = self._abbrevs.get(code)
        if found is None:
            table = self.file.abbrev_table(self.abbrev_offset)
            entry = table.get(code)
            if entry is None:
                raise _Malformed(f"abbreviation {code} missing at {self.abbrev_offset:#x}")
            found = _Abbrev(*entry, self)
            self._abbrevs[code] = found
        return found

    def form_width(self, form: int) -> int | None:
        """Bytes of a value of ``form`` in this unit; None when it varies."""
        if form in _OFFSET:
            return self.unit.offset_size
        if form == _FORM_ADDR:
            return self.unit.address_size
        if form == _FORM_REF_ADDR:
            return self.unit.address_size if self.unit.version == 2 else self.unit.offset_size
        if form == _FORM_IMPLICIT_CONST:
            return 0
        return _FIXED.get(form)

    def _decode(self, pos: int) -> tuple[Die, int]:
        """The DIE at ``pos`` and the position just past its attributes."""
        info = self.file.reader.info
        code, at = info.uleb(pos)
        if code == 0:
            raise _Malformed(f"a reference leads to a null entry ({pos:#x})")
        abbrev = self._abbrevs.get(code) or self._abbrev(code)
        if pos != self.top:
            fast = abbrev.unpack
            if fast is not None:
                return self._decode_fixed(pos, at, abbrev, fast)
        attrs: dict[int, Value] = {}
        forms: dict[int, int] = {}
        for attr, form, implicit in abbrev.specs:
            value, at, form = self._value(at, form, implicit)
            if value is not None:
                attrs[attr] = value
                forms[attr] = form
        return Die(pos, abbrev.tag, attrs, at if abbrev.has_children else None, forms, at), at

    def _decode_fixed(self, pos: int, at: int, abbrev: _Abbrev, fast: _Unpacker) -> tuple[Die, int]:
        """A DIE whose attributes all have fixed sizes: one unpack, wanted values only."""
        layout, wanted = fast
        info = self.file.reader.info
        end = at + layout.size
        if end > info.size:
            raise _Malformed("a DIE runs past the end of .debug_info")
        values = layout.unpack_from(info.buf, info.base + at)
        attrs: dict[int, Value] = {}
        forms: dict[int, int] = {}
        for index, attr, form, offset, constant, kind in wanted:
            value: Value | None
            if kind == _KIND_RAW:
                value = values[index]
            elif kind == _KIND_REF:
                value = self.start + values[index]
            elif kind == _KIND_STRP:
                value = self.file.debug_string(info.relocs.get(at + offset, values[index]))
            elif kind == _KIND_CONSTANT:
                value = constant
            else:  # other strings, relocated addresses and offsets
                value = self._value(at + offset, form, constant)[0]
            if value is not None:
                attrs[attr] = value
                forms[attr] = form
        children = end if abbrev.has_children else None
        return Die(pos, abbrev.tag, attrs, children, forms, end), end

    def _value(self, pos: int, form: int, implicit: int) -> tuple[Value | None, int, int]:
        info = self.file.reader.info
        unit = self.unit
        while form == _FORM_INDIRECT:
            form, pos = info.uleb(pos)
        if form in _REF_FORMS or form == _FORM_REF_ADDR:
            return self._reference(pos, form)
        if form in _STRING_FORMS:
            return self._string(pos, form, implicit)
        if form == _FORM_ADDR:
            return info.uint(pos, unit.address_size), pos + unit.address_size, form
        if form == _FORM_SDATA:
            value, pos = info.sleb(pos)
            return value, pos, form
        if form == _FORM_IMPLICIT_CONST:
            return implicit, pos, form
        if form == _FORM_FLAG_PRESENT:
            return 1, pos, form
        if form == _FORM_REF_SIG8:
            return None, pos + 8, form  # a type unit: not followed
        if form in _BLOCK_FORMS:
            return self._block(pos, form)
        if form in _OFFSET:
            return info.uint(pos, unit.offset_size), pos + unit.offset_size, form
        if form in _ULEB:
            value, pos = info.uleb(pos)
            return value, pos, form
        width = _FIXED.get(form)
        if width is None:
            raise _Malformed(f"unknown attribute form {form:#x}")
        return info.uint(pos, width), pos + width, form

    def _reference(self, pos: int, form: int) -> tuple[int, int, int]:
        """A reference as a .debug_info offset (unit-relative ones made absolute)."""
        info = self.file.reader.info
        if form == 0x15:  # ref_udata
            value, pos = info.uleb(pos)
            return self.start + value, pos, form
        if form == _FORM_REF_ADDR:
            unit = self.unit
            size = unit.address_size if unit.version == 2 else unit.offset_size
            return info.uint(pos, size), pos + size, form
        # Unit-relative: never relocated (the assembler resolves a difference of two
        # labels of one section), so read without looking for a relocation there,
        # as _decode_fixed does.
        size = _FIXED[form]
        if pos < 0 or pos + size > info.size:
            raise _Malformed("a value runs past the end of its section")
        start = info.base + pos
        value = int.from_bytes(info.buf[start : start + size], "little")
        return self.start + value, pos + size, form

    def _block(self, pos: int, form: int) -> tuple[bytes, int, int]:
        info = self.file.reader.info
        length_size = _BLOCK_FORMS[form]
        if length_size:
            length = info.uint(pos, length_size)
            pos += length_size
        else:
            length, pos = info.uleb(pos)
        if pos + length > info.size:
            raise _Malformed("a block runs past the end of .debug_info")
        start = info.base + pos
        return bytes(info.buf[start : start + length]), pos + length, form

    def _string(self, pos: int, form: int, implicit: int) -> tuple[str | None, int, int]:
        if form == _FORM_STRING:
            text, pos = self.file.reader.info.cstr(pos)
            return text.decode("utf-8", "replace"), pos, form
        reader = self.file.reader
        raw, pos, form = reader._read_form(pos, form, implicit, self.unit)
        assert isinstance(raw, int)
        found = reader._string(form, raw, self.file.str_offsets_base(self), self.unit)
        return (None if found is None else found.decode("utf-8", "replace")), pos, form

    # -- walking ----------------------------------------------------------------

    def _skip(self, pos: int) -> int:  # noqa: C901 (the hot loop, kept in one piece)
        """The position of the DIE after the one at ``pos`` and all its children.

        The hot loop of the index: one pass, no recursion, values skipped by
        precomputed operations, subtrees jumped over through DW_AT_sibling.
        """
        info = self.file.reader.info
        buf, base, limit = info.buf, info.base, info.base + info.size
        abbrevs = self._abbrevs
        depth = 0
        while True:
            if base + pos >= limit:
                raise _Malformed("a DIE runs past the end of .debug_info")
            code = buf[base + pos]
            if code >= 0x80:
                code, pos = info.uleb(pos)
            else:
                pos += 1
            if code == 0:
                depth -= 1
                if depth <= 0:
                    return pos
                continue
            abbrev = abbrevs.get(code) or self._abbrev(code)
            jump = abbrev.jump
            if jump is not None or abbrev.to_sibling is not None:
                pos = self._sibling(abbrev, pos)
                if depth == 0:
                    return pos
                continue
            ops = abbrev.ops
            if ops is None:
                pos = self._attribute_position(abbrev, pos, len(abbrev.specs))
            elif len(ops) == 1 and ops[0] >= 0:
                pos += ops[0]  # all fixed: the common case, without a call
            else:
                for op in ops:
                    if op >= 0:
                        pos += op
                    elif op == _OP_LEB:
                        while buf[base + pos] & 0x80:
                            pos += 1
                        pos += 1
                    else:
                        pos = self._run_ops((op,), pos)
            if abbrev.has_children:
                depth += 1
            elif depth == 0:
                return pos

    def _sibling(self, abbrev: _Abbrev, pos: int) -> int:
        """The DW_AT_sibling of a DIE whose attributes start at ``pos``."""
        info = self.file.reader.info
        if abbrev.jump is not None:
            at, width = abbrev.jump
            if width:
                start = info.base + pos + at
                return self.start + int.from_bytes(info.buf[start : start + width], "little")
            return self.start + info.uleb(pos + at)[0]
        assert abbrev.to_sibling is not None
        at = self._run_ops(abbrev.to_sibling, pos)
        return self._reference(at, abbrev.specs[abbrev.sibling][1])[0]

    def _run_ops(self, ops: tuple[int, ...], pos: int) -> int:
        """Apply skip operations from ``pos``; the position after the values."""
        info = self.file.reader.info
        buf, base, limit = info.buf, info.base, info.base + info.size
        for op in ops:
            if op >= 0:
                pos += op
            elif op == _OP_LEB:
                while buf[base + pos] & 0x80:
                    pos += 1
                pos += 1
            elif op == _OP_BLOCK_LEB:
                length, pos = info.uleb(pos)
                pos += length
            elif op == _OP_STRING:
                pos = buf.find(b"\0", base + pos, limit) - base + 1
                if pos <= 0:
                    raise _Malformed("a string is not terminated")
            else:
                width = _OP_WIDTH[op]
                pos += width + info.uint(pos, width)
        return pos

    def block_at(self, die: Die, attr: int) -> int | None:
        """Where the bytes of ``die``'s block or expression ``attr`` start in
        ``.debug_info`` (past its length), or None when it has no such attribute:
        a relocatable object's relocations are found by that position."""
        code, at = self.file.reader.info.uleb(die.offset)
        abbrev = self._abbrevs.get(code) or self._abbrev(code)
        for index, (name, form, _) in enumerate(abbrev.specs):
            if name == attr:
                if form not in _BLOCK_FORMS:
                    return None  # not a block, or DW_FORM_indirect (never used for one)
                block, end, _ = self._block(self._attribute_position(abbrev, at, index), form)
                return end - len(block)
        return None

    def _attribute_position(self, abbrev: _Abbrev, at: int, index: int) -> int:
        """Where attribute ``index`` of a DIE whose attributes start at ``at`` begins."""
        info = self.file.reader.info
        buf, base = info.buf, info.base
        for (_, form, implicit), width in zip(abbrev.specs[:index], abbrev.widths, strict=False):
            if width is not None:
                at += width
            elif form == _FORM_STRING:
                end = buf.find(b"\0", base + at, base + info.size)
                if end < 0:
                    raise _Malformed("a string is not terminated")
                at = end - base + 1
            elif form in _ULEB or form == _FORM_SDATA:
                while buf[base + at] & 0x80:
                    at += 1
                at += 1
            else:
                at = self._value(at, form, implicit)[1]
        return at

    def index(self) -> None:
        """Index all of the unit's top-level variables, functions and named types."""
        self._index_until(None, None, False)

    def _index_until(self, table: dict[_K, int] | None, key: _K | None, any_kind: bool) -> None:
        """Index top-level entries until ``table`` has ``key`` (a definition unless
        ``any_kind``), or to the end.  Lookups stop early: a large unit's new code is
        usually found long before its end."""
        pos = self._next
        if pos is None:
            return
        if pos < 0:
            pos = self.top_die().children_at
            if pos is None:
                self._next = None
                return
        info = self.file.reader.info
        buf, base = info.buf, info.base
        abbrevs = self._abbrevs
        variables, functions, types = self.variables, self.functions, self.types
        while pos < self.end:
            code = buf[base + pos]
            at = pos + 1
            if code >= 0x80:
                code, at = info.uleb(pos)
            if code == 0:
                break
            abbrev = abbrevs.get(code) or self._abbrev(code)
            tag = abbrev.tag
            found = False
            if tag in _INDEXED and abbrev.name >= 0:
                name = self._name_at(abbrev, at)
                if name is not None:
                    if tag == TAG_VARIABLE:
                        self._keep(variables, name, pos, abbrev.declared)
                    elif tag == TAG_SUBPROGRAM:
                        self._keep(functions, name, pos, abbrev.declared)
                    else:
                        self._keep(types, (tag, name), pos, abbrev.declared)
                    found = table is not None and self._has(table, key, any_kind)
            pos = self._next_top(pos, at, abbrev)
            if found:
                self._next = pos
                return
        self._next = None

    def _next_top(self, pos: int, at: int, abbrev: _Abbrev) -> int:
        """The DIE after the top-level one at ``pos`` (attributes from ``at``): its
        DW_AT_sibling, or just past its attributes when it has no children, read
        here; ``_skip`` (a walk) otherwise."""
        if abbrev.jump is not None or abbrev.to_sibling is not None:
            after = self._sibling(abbrev, at)
            if after <= pos:
                raise _Malformed(f"a DW_AT_sibling leads backwards ({pos:#x})")
            return after
        ops = abbrev.ops
        if not abbrev.has_children and ops is not None and len(ops) == 1 and ops[0] >= 0:
            return at + ops[0]
        return self._skip(pos)

    def _has(self, table: dict[_K, int], key: _K | None, any_kind: bool) -> bool:
        offset = table.get(key) if key is not None else None
        return offset is not None and (any_kind or offset not in self._declarations)

    def _lookup(self, table: dict[_K, int], key: _K, any_kind: bool) -> Die | None:
        if not self._has(table, key, any_kind):
            self._index_until(table, key, any_kind)
        offset = table.get(key)
        return None if offset is None else self.die(offset)

    def _name_at(self, abbrev: _Abbrev, at: int) -> str | None:
        offset = abbrev.prefix[abbrev.name]
        pos = (
            at + offset if offset is not None else self._attribute_position(abbrev, at, abbrev.name)
        )
        _, form, implicit = abbrev.specs[abbrev.name]
        info = self.file.reader.info
        if form == _FORM_STRP and self.unit.offset_size == 4 and pos + 4 <= info.size:
            start = info.base + pos
            raw = int.from_bytes(info.buf[start : start + 4], "little")
            return self.file.debug_string(info.relocs.get(pos, raw))
        if form == _FORM_STRP:
            return self.file.debug_string(info.uint(pos, self.unit.offset_size))
        return self._string(pos, form, implicit)[0]

    def _keep(self, table: dict[_K, int], key: _K, offset: int, declared: bool) -> None:
        """Keep the first definition; a declaration only until a definition comes."""
        if key not in table or (not declared and table[key] in self._declarations):
            table[key] = offset
            if declared:
                self._declarations.add(offset)

    def preload(self) -> None:
        """Index the unit and decode every type its named types reach.

        Meant for a background thread while the compiler runs: afterwards the
        running program's side of a comparison costs dictionary lookups only.
        """
        self.index()
        pending = list(self.types.values())
        seen: set[int] = set()
        while pending:
            offset = pending.pop()
            if offset in seen:
                continue
            seen.add(offset)
            die = self.die(offset)
            ref = die.ref(AT_TYPE)
            if ref is not None:
                pending.append(ref)
            if die.tag in _TYPE_TAGS_WITH_CHILDREN:
                pending.extend(child.offset for child in self.children(die))

    def find_variable(self, name: str) -> Die | None:
        """The top-level variable ``name``: the first entry found, definition or declaration."""
        return self._lookup(self.variables, name, True)

    def find_function(self, name: str) -> Die | None:
        """The top-level function ``name`` (its definition, else its declaration)."""
        return self._lookup(self.functions, name, False)

    def find_type(self, tag: int, name: str) -> Die | None:
        """The named struct, union, enum or typedef (a complete one if there is one)."""
        return self._lookup(self.types, (tag, name), False)

    # -- address ranges -----------------------------------------------------------

    def ranges(self) -> list[tuple[int, int]]:
        """The code address ranges of the unit ([start, end) link-time addresses)."""
        top = self.top_die()
        low = self._address(top, AT_LOW_PC)
        length = top.number(AT_HIGH_PC)
        if low is not None and length is not None:
            if top.forms[AT_HIGH_PC] in (_FORM_ADDR, *_FORM_ADDRX):
                high = self._address(top, AT_HIGH_PC) or 0
            else:
                high = low + length  # DWARF 4+: an offset from low_pc
            if high > low:
                return [(low, high)]
        offset = top.number(AT_RANGES)
        if offset is None:
            return []
        if self.unit.version >= 5:
            return self.file.rnglist(self, top, offset, top.forms[AT_RANGES], low or 0)
        return self.file.legacy_ranges(offset, low or 0)

    def _address(self, die: Die, attr: int) -> int | None:
        value = die.number(attr)
        if value is None or die.forms.get(attr) not in _FORM_ADDRX:
            return value
        return self.file.address_entry(self, value)


class DwarfFile:
    """The DWARF of one ELF file, its units found by their source."""

    def __init__(self, path: str, data: mmap.mmap | bytes) -> None:
        self.path = path
        self.data = data
        try:
            self.reader = _FastReader(path, data)
            self.units = self._read_units()
        except _Malformed as e:
            raise _bad(path, e) from e
        self._abbrev_tables: dict[int, dict[int, tuple[int, bool, list[tuple[int, int, int]]]]] = {}
        self.debug_addr: _Section | None = None
        self._strings: dict[int, str] = {}

    def _read_units(self) -> list[TypeUnit]:
        reader = self.reader
        units: list[TypeUnit] = []
        for start, header_at, offset_size, end in reader.iter_unit_extents():
            header = reader._unit_header(header_at, offset_size)
            if header is None:
                continue
            top, abbrev_offset, unit = header
            found = reader._top_die(top, abbrev_offset, unit)
            if found is not None:
                units.append(
                    TypeUnit(self, start, end, top, abbrev_offset, unit, found.name, found.comp_dir)
                )
        return units

    def info_relocation(self, offset: int) -> tuple[int, int] | None:
        """(symbol index, addend) of a relocatable object's ``.debug_info`` relocation
        at ``offset``, from the table the reader already looks values up in; None when
        it cannot tell (no such relocation, or a table it does not bisect: ask the
        object's own relocations then)."""
        relocs = self.reader.info.relocs
        return relocs.symbol_at(offset) if isinstance(relocs, _SortedRelocations) else None

    def debug_string(self, offset: int) -> str:
        """The .debug_str string at ``offset`` (names repeat: decoded once)."""
        found = self._strings.get(offset)
        if found is None:
            found = self.reader.str.cstr(offset)[0].decode("utf-8", "replace")
            self._strings[offset] = found
        return found

    def abbrev_table(self, offset: int) -> dict[int, tuple[int, bool, list[tuple[int, int, int]]]]:
        """The abbreviation table at ``offset``: code -> (tag, has children, specs)."""
        table = self._abbrev_tables.get(offset)
        if table is not None:
            return table
        table = {}
        section = self.reader.abbrev
        pos = offset
        while True:
            code, pos = section.uleb(pos)
            if code == 0:
                break
            tag, pos = section.uleb(pos)
            children = section.uint(pos, 1) == 1
            specs, pos = section.attribute_specs(pos + 1)
            table[code] = (tag, children, specs)
        self._abbrev_tables[offset] = table
        return table

    def str_offsets_base(self, unit: TypeUnit) -> int:
        """DW_AT_str_offsets_base of ``unit`` (read without decoding strings)."""
        cached = _STR_BASES.get((id(self), unit.start))
        if cached is not None:
            return cached
        reader = self.reader
        code, pos = reader.info.uleb(unit.top)
        _, specs = reader._find_abbrev(unit.abbrev_offset, code)
        base = 2 * unit.unit.offset_size
        for attr, form, implicit in specs:
            value, pos, _ = reader._read_form(pos, form, implicit, unit.unit)
            if attr == 0x72 and isinstance(value, int):
                base = value
        _STR_BASES[(id(self), unit.start)] = base
        return base

    def address_entry(self, unit: TypeUnit, index: int) -> int:
        """Entry ``index`` of the unit's .debug_addr table (DW_FORM_addrx)."""
        if self.debug_addr is None:
            self.debug_addr = self.reader.section(".debug_addr")
        base = unit.top_die().number(AT_ADDR_BASE) or 8
        size = unit.unit.address_size
        return self.debug_addr.uint(base + index * size, size)

    def rnglist(
        self, unit: TypeUnit, top: Die, value: int, form: int, base: int
    ) -> list[tuple[int, int]]:
        """DWARF 5 range list (DW_AT_ranges as an offset or a DW_FORM_rnglistx index)."""
        section = self.reader.section(".debug_rnglists")
        if form == 0x23:  # rnglistx
            lists_base = top.number(AT_RNGLISTS_BASE) or 12
            value = lists_base + section.uint(
                lists_base + value * unit.unit.offset_size, unit.unit.offset_size
            )
        out: list[tuple[int, int]] = []
        pos = value
        size = unit.unit.address_size
        while True:
            kind = section.uint(pos, 1)
            pos += 1
            if kind == 0:  # end_of_list
                return out
            if kind == 1:  # base_addressx
                index, pos = section.uleb(pos)
                base = self.address_entry(unit, index)
            elif kind == 2:  # startx_endx
                a, pos = section.uleb(pos)
                b, pos = section.uleb(pos)
                out.append((self.address_entry(unit, a), self.address_entry(unit, b)))
            elif kind == 3:  # startx_length
                a, pos = section.uleb(pos)
                length, pos = section.uleb(pos)
                start = self.address_entry(unit, a)
                out.append((start, start + length))
            elif kind == 4:  # offset_pair
                a, pos = section.uleb(pos)
                b, pos = section.uleb(pos)
                out.append((base + a, base + b))
            elif kind == 5:  # base_address
                base = section.uint(pos, size)
                pos += size
            elif kind == 6:  # start_end
                out.append((section.uint(pos, size), section.uint(pos + size, size)))
                pos += 2 * size
            elif kind == 7:  # start_length
                start = section.uint(pos, size)
                length, pos = section.uleb(pos + size)
                out.append((start, start + length))
            else:
                raise _Malformed(f"unknown range list entry {kind}")

    def legacy_ranges(self, offset: int, base: int) -> list[tuple[int, int]]:
        """DWARF 2-4 .debug_ranges pairs."""
        section = self.reader.section(".debug_ranges")
        out: list[tuple[int, int]] = []
        pos = offset
        while True:
            start, end = section.uint(pos, 8), section.uint(pos + 8, 8)
            pos += 16
            if start == 0 and end == 0:
                return out
            if start == (1 << 64) - 1:
                base = end
                continue
            out.append((base + start, base + end))

    def find_unit(self, source: str | None = None) -> TypeUnit | None:
        """The unit built from ``source`` (an absolute path); the only unit when None.

        Matches like :func:`relive.elf.dwarf.find_compile_unit`: the absolute path,
        then symlinks resolved, then a basename no other unit shares.
        """
        if source is None:
            return self.units[0] if len(self.units) == 1 else None
        wanted = os.path.normpath(os.path.abspath(source))
        real = os.path.realpath(source)
        for unit in self.units:
            if (os.path.isabs(unit.name) or unit.comp_dir) and (
                unit.path == wanted or os.path.realpath(unit.path) == real
            ):
                return unit
        same = {
            u.path: u for u in self.units if os.path.basename(u.name) == os.path.basename(wanted)
        }
        return next(iter(same.values())) if len(same) == 1 else None

    def unit_at(self, address: int) -> TypeUnit | None:
        """The unit whose code covers the link-time ``address``."""
        for unit in self.units:
            try:
                spans = unit.ranges()
            except _Malformed:
                continue
            if any(start <= address < end for start, end in spans):
                return unit
        return None


_STR_BASES: dict[tuple[int, int], int] = {}


class _FastReader(_Reader):
    """The shared reader; relocations of a large object looked up, not all decoded."""

    #: The RELA tables of each debug section, found in one pass over the section
    #: headers (an object built with -ffunction-sections has tens of thousands).
    _debug_tables: dict[int, list[SectionHeader]] | None = None

    def _relocations(self, target: int) -> dict[int, int]:
        if self._debug_tables is None:
            debug = {i for name, i in self.index.items() if name.startswith((".debug", ".zdebug"))}
            found: dict[int, list[SectionHeader]] = {}
            count = len(self.shdrs)
            for shdr in self.shdrs:
                if shdr.type == SHT_RELA and shdr.info in debug and shdr.link < count:
                    found.setdefault(shdr.info, []).append(shdr)
            self._debug_tables = found
        tables = self._debug_tables.get(target, [])
        if len(tables) != 1:
            return super()._relocations(target) if tables else {}
        return _SortedRelocations(self, tables[0])


class _SortedRelocations(dict[int, int]):
    """The relocated values of one debug section, found by binary search
    (:class:`relive.elf.rela.RelaTable`, over the file's bytes: nothing copied).

    gcc writes ``.rela.debug_info`` in offset order, a hundred thousand entries for
    a large unit, of which a check reads a few hundred: decoding them all would
    cost more than the check.  Out-of-order tables are decoded into the dict.
    """

    def __init__(self, reader: _Reader, rela: SectionHeader) -> None:
        super().__init__()
        self._table = RelaTable(memoryview(reader.data)[rela.offset : rela.offset + rela.size])
        self._symtab = reader.shdrs[rela.link]
        self._data = reader.data
        self._sorted = self._table.in_order()
        if not self._sorted:
            for i in range(self._table.count):
                dict.__setitem__(self, self._table.entry(i)[0], self._value(i))

    def _value(self, i: int) -> int:
        _, info, addend = self._table.entry(i)
        symbol = info >> 32
        value = 0
        at = self._symtab.offset + symbol * 24 + 8
        if symbol and at + 8 <= self._symtab.offset + self._symtab.size:
            value = int.from_bytes(self._data[at : at + 8], "little")
        return value + addend

    def symbol_at(self, offset: int) -> tuple[int, int] | None:
        """(symbol index, addend) of the relocation at ``offset``; None when there is
        none, or when the table is out of order (only its values were kept)."""
        if not self._sorted:
            return None
        i = self._table.find(offset)
        if i < 0:
            return None
        _, info, addend = self._table.entry(i)
        return info >> 32, addend

    def get(self, offset: int, default: int | None = None) -> int | None:  # type: ignore[override]
        if not self._sorted:
            return dict.get(self, offset, default)
        i = self._table.find(offset)
        return default if i < 0 else self._value(i)

    def __contains__(self, offset: object) -> bool:
        if not self._sorted:
            return dict.__contains__(self, offset)
        return isinstance(offset, int) and self._table.find(offset) >= 0

    def __getitem__(self, offset: int) -> int:
        if not self._sorted:
            return dict.__getitem__(self, offset)
        i = self._table.find(offset)
        if i < 0:
            raise KeyError(offset)
        return self._value(i)


def _bad(path: str, error: Exception) -> BadObject:
    return BadObject(
        f"{path} has unreadable DWARF: {error}", "rebuild it with a current gcc or clang"
    )


# One process of `relive watch` checks the same executable on every save.
_cache: FileCache[DwarfFile] = FileCache(8)


def open_dwarf(path: str | Path) -> DwarfFile:
    """The DWARF of the ELF file at ``path`` (kept for a few files: content-keyed)."""
    return _cache.get(path, _map_dwarf, "check that the file still exists")


def _map_dwarf(name: str, fd: int, st: os.stat_result) -> DwarfFile:
    data: mmap.mmap | bytes = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if st.st_size else b""
    return DwarfFile(name, data)


def malformed_as_bad_object(path: str, error: Exception) -> BadObject:
    """A reader error met while walking a unit, as the error users see."""
    return _bad(path, error)


Malformed = _Malformed

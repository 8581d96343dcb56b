"""Compile units of an ELF file's DWARF: which sources it was built from, and how.

Only the top DIE of each compile unit is read (name, compilation directory,
producer, language): that is enough to find the translation unit a source file
became and the compiler switches gcc recorded for it.

The reader is a small one of our own over a memory mapping of the file: it walks
the unit headers of ``.debug_info`` (each gives the next unit's offset), decodes
one abbreviation per unit and the attributes of the top DIE, and touches nothing
else, so the cost grows with the number of units, not the size of the DWARF.
(pyelftools took about 100 ms to import and as much again to set up its section
and relocation objects, on every reload of a .c file.)  DWARF 2 to 5, 32- and
64-bit DWARF, strings in ``.debug_str``, ``.debug_line_str`` or behind
``.debug_str_offsets``, compressed sections (zlib), and relocatable objects
(whose ``.debug_info`` offsets live in relocations) are understood.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from relive.elf.constants import ET_REL, SHT_NOBITS, SHT_RELA
from relive.elf.filecache import FileCache
from relive.elf.leb128 import Leb128Error, read_uleb, signed
from relive.elf.objfile import (
    SYM_SIZE,
    Buffer,
    SectionHeader,
    parse_elf_header,
    parse_section_headers,
    section_names,
)
from relive.errors import BadObject

__all__ = ["CompileUnit", "find_compile_unit", "iter_compile_units"]


@dataclass(frozen=True)
class CompileUnit:
    """The top DIE of one DWARF compile unit.

    ``name`` is DW_AT_name exactly as recorded: usually the source path as it was
    passed to the compiler, relative to ``comp_dir`` (DW_AT_comp_dir).
    ``producer`` is DW_AT_producer (compiler identity and, for gcc, its switches);
    ``language`` is the DW_LANG_* code.
    """

    name: str
    comp_dir: str | None
    producer: str | None
    language: int | None

    @property
    def path(self) -> str:
        """The source's absolute, normalised path (or ``name`` if that cannot be known)."""
        if os.path.isabs(self.name) or self.comp_dir is None:
            return os.path.normpath(self.name)
        return os.path.normpath(os.path.join(self.comp_dir, self.name))


_cache: FileCache[tuple[CompileUnit, ...]] = FileCache(16)


def iter_compile_units(path: str | Path) -> Iterator[CompileUnit]:
    """Yield the compile units of the ELF file at ``path``; nothing if it has no DWARF.

    Works for executables, shared objects and relocatable objects, DWARF 2 to 5
    (strings may live in .debug_str, .debug_line_str or behind .debug_str_offsets).
    Raises BadObject if the file cannot be read, is not ELF or its DWARF is malformed.
    """
    yield from _read_units(Path(path))


def find_compile_unit(path: str | Path, source: Path) -> CompileUnit | None:
    """Return the compile unit of ``path`` built from ``source``, or None.

    A unit matches when its absolute source path (comp_dir joined with name)
    is the source's path, symlinks resolved.  Failing that (the tree was moved,
    or built with -fdebug-prefix-map), a unit whose name has the same basename
    matches if it is the only such source; two different sources with that
    basename are ambiguous and give None.
    """
    units = _read_units(Path(path))
    wanted_abs = os.path.normpath(os.path.abspath(source))
    wanted_real: str | None = None
    for unit in units:
        if not (os.path.isabs(unit.name) or unit.comp_dir):
            continue
        candidate = unit.path
        if candidate == wanted_abs:
            return unit
        if wanted_real is None:
            wanted_real = os.path.realpath(source)
        if os.path.realpath(candidate) == wanted_real:
            return unit

    by_path: dict[str, CompileUnit] = {}
    for unit in units:
        if os.path.basename(unit.name) == source.name:
            # The same source may appear in several units (built twice); that is
            # still one file, so only distinct paths count as ambiguity.
            by_path.setdefault(unit.path, unit)
    if len(by_path) == 1:
        return next(iter(by_path.values()))
    return None


def _read_units(path: Path) -> tuple[CompileUnit, ...]:
    return _cache.get(path, _parse_file, "check that the program's file still exists")


def _parse_file(name: str, fd: int, st: os.stat_result) -> tuple[CompileUnit, ...]:
    if st.st_size == 0:
        parse_elf_header(name, b"", "ELF")
    with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as data:
        return _parse_units(name, data)


# -- the reader ---------------------------------------------------------------------

_SHF_COMPRESSED = 0x800
_ELFCOMPRESS_ZLIB = 1
_CHDR = struct.Struct("<IIQQ")

# DWARF constants (DWARF 5, section 7).
_DW_TAG_COMPILE_UNIT = 0x11
_DW_TAG_SKELETON_UNIT = 0x4A
# Tags whose top DIE describes a translation unit.  Partial units (dwz) and type
# units carry no source of their own, so they are skipped.
_UNIT_TAGS = frozenset({_DW_TAG_COMPILE_UNIT, _DW_TAG_SKELETON_UNIT})
_DW_AT_NAME = 0x03
_DW_AT_LANGUAGE = 0x13
_DW_AT_COMP_DIR = 0x1B
_DW_AT_PRODUCER = 0x25
_DW_AT_STR_OFFSETS_BASE = 0x72
_WANTED = frozenset(
    {_DW_AT_NAME, _DW_AT_LANGUAGE, _DW_AT_COMP_DIR, _DW_AT_PRODUCER, _DW_AT_STR_OFFSETS_BASE}
)
_DW_UT_TYPE = 0x02
_DW_UT_SKELETON = 0x04
_DW_UT_SPLIT_COMPILE = 0x05
_DW_UT_SPLIT_TYPE = 0x06

_FORM_ADDR = 0x01
_FORM_STRING = 0x08
_FORM_INDIRECT = 0x16
_FORM_STRP = 0x0E
_FORM_LINE_STRP = 0x1F
_FORM_IMPLICIT_CONST = 0x21
_FORM_STRX = (0x1A, 0x25, 0x26, 0x27, 0x28)
_FORM_REF_ADDR = 0x10
#: Forms of a fixed size in bytes.
_FIXED = {
    0x05: 2, 0x06: 4, 0x07: 8, 0x0B: 1, 0x0C: 1, 0x11: 1, 0x12: 2, 0x13: 4, 0x14: 8,
    0x19: 0, 0x1C: 4, 0x1E: 16, 0x20: 8, 0x24: 8, 0x25: 1, 0x26: 2, 0x27: 3, 0x28: 4,
    0x29: 1, 0x2A: 2, 0x2B: 3, 0x2C: 4,
}  # fmt: skip
#: Forms holding one offset into another section (4 or 8 bytes by DWARF format).
_OFFSET = frozenset({0x0E, 0x17, 0x1D, 0x1F, 0x1F20, 0x1F21})
#: Forms holding one ULEB128.
_ULEB = frozenset({0x0F, 0x15, 0x1A, 0x1B, 0x22, 0x23, 0x1F01, 0x1F02})
#: Forms holding a length, then that many bytes.
_BLOCK = {0x03: 2, 0x04: 4, 0x0A: 1, 0x09: 0, 0x18: 0}  # 0: ULEB128 length
#: Integer forms whose value we may want (DW_AT_language).
_DATA = frozenset({0x05, 0x06, 0x07, 0x0B, 0x0F, 0x0D})


class _Malformed(Exception):
    """Raised inside the reader; turned into BadObject with the file's name."""


class _Section(NamedTuple):
    """The bytes of one debug section: a window of the mapping, or decompressed bytes."""

    buf: Buffer
    base: int
    size: int
    #: Relocatable objects: offset -> relocated value of the field there.
    relocs: dict[int, int]

    def uint(self, pos: int, size: int) -> int:
        if pos < 0 or pos + size > self.size:
            raise _Malformed("a value runs past the end of its section")
        if pos in self.relocs:
            return self.relocs[pos] & ((1 << (8 * size)) - 1)
        start = self.base + pos
        return int.from_bytes(self.buf[start : start + size], "little")

    def uleb(self, pos: int) -> tuple[int, int]:
        base = self.base
        try:
            value, end = read_uleb(self.buf, base + pos, base + self.size)
        except Leb128Error:
            raise _Malformed("a LEB128 number runs past the end of its section") from None
        return value, end - base

    def sleb(self, pos: int) -> tuple[int, int]:
        value, end = self.uleb(pos)
        return signed(value, end - pos), end

    def cstr(self, pos: int) -> tuple[bytes, int]:
        if not 0 <= pos < self.size:
            raise _Malformed("a string offset points past the end of its section")
        start = self.base + pos
        end = self.buf.find(b"\0", start, self.base + self.size)
        if end < 0:
            raise _Malformed("a string is not terminated")
        return bytes(self.buf[start:end]), end - self.base + 1

    def attribute_specs(self, pos: int) -> tuple[list[tuple[int, int, int]], int]:
        """The (attribute, form, implicit constant) triples of the abbreviation whose
        list starts at ``pos`` (it ends with a (0, 0) pair), and the position after it."""
        specs: list[tuple[int, int, int]] = []
        while True:
            attr, pos = self.uleb(pos)
            form, pos = self.uleb(pos)
            if attr == 0 and form == 0:
                return specs, pos
            implicit = 0
            if form == _FORM_IMPLICIT_CONST:
                implicit, pos = self.sleb(pos)
            specs.append((attr, form, implicit))


_EMPTY = _Section(b"", 0, 0, {})

#: One abbreviation: tag and (attribute, form, implicit constant) triples.
_Abbrev = tuple[int, list[tuple[int, int, int]]]


class _Unit(NamedTuple):
    offset_size: int
    address_size: int
    version: int


#: The sections this reader reads: DWARF, and its old zlib-compressed form.
_DEBUG_PREFIXES = (".debug", ".zdebug")
#: Stands for every section header the reader does not keep.
_NOT_KEPT = SectionHeader(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def _debug_headers(shdrs: list[SectionHeader], debug: set[int]) -> list[SectionHeader]:
    """The headers of the ``debug`` sections, of the relocation tables that apply to
    them and of those tables' symbol tables, at their index; :data:`_NOT_KEPT`
    (``SHT_NULL``) for the others.  An object built with -ffunction-sections has tens
    of thousands of sections, whose headers (some 10 MB of tuples) the reader, which
    lives as long as its file's DWARF is needed, would keep for nothing."""
    keep = set(debug)
    for index, shdr in enumerate(shdrs):
        if shdr.type == SHT_RELA and shdr.info in debug:
            keep.update((index, shdr.link))
    return [shdr if index in keep else _NOT_KEPT for index, shdr in enumerate(shdrs)]


class _Reader:
    """The debug sections of one file and the unit-level walk over them."""

    def __init__(self, path: str, data: Buffer) -> None:
        self.path = path
        header = parse_elf_header(path, data, "ELF")
        shdrs = parse_section_headers(path, data, header)
        names = section_names(path, data, header, shdrs)
        self.data = data
        self.index = {name: i for i, name in enumerate(names) if name.startswith(_DEBUG_PREFIXES)}
        self.shdrs = _debug_headers(shdrs, set(self.index.values()))
        self.relocatable = header.e_type == ET_REL
        self.info = self.section(".debug_info")
        self.abbrev = self.section(".debug_abbrev")
        self.str = self.section(".debug_str")
        self.line_str = self.section(".debug_line_str")
        self.str_offsets = self.section(".debug_str_offsets")
        self._abbrevs: dict[int, dict[int, _Abbrev]] = {}
        self._abbrev_ends: dict[int, int] = {}

    # -- sections ---------------------------------------------------------------

    def section(self, name: str) -> _Section:
        index = self.index.get(name)
        legacy = index is None and name.startswith(".debug_")
        if legacy:  # .zdebug_info: the GNU compression of old binutils
            index = self.index.get(".z" + name[1:])
        if index is None:
            return _EMPTY
        shdr = self.shdrs[index]
        if shdr.type == SHT_NOBITS:
            return _EMPTY
        if shdr.offset + shdr.size > len(self.data):
            raise _Malformed(f"{name} runs past the end of the file")
        relocs = self._relocations(index) if self.relocatable else {}
        if legacy or shdr.flags & _SHF_COMPRESSED:
            raw = self._unzip_legacy(shdr) if legacy else self._unzip(shdr, name)
            return _Section(raw, 0, len(raw), relocs)
        return _Section(self.data, shdr.offset, shdr.size, relocs)

    def _unzip(self, shdr: SectionHeader, name: str) -> bytes:
        raw = bytes(self.data[shdr.offset : shdr.offset + shdr.size])
        if len(raw) < _CHDR.size:
            raise _Malformed(f"{name} has a truncated compression header")
        ch_type, _, ch_size, _ = _CHDR.unpack_from(raw)
        if ch_type != _ELFCOMPRESS_ZLIB:
            raise BadObject(
                f"{self.path}: {name} is compressed with a method relive cannot read "
                f"(ELFCOMPRESS type {ch_type}, e.g. zstd)",
                "rebuild with -gz=zlib or without -gz",
            )
        return _inflate(raw[_CHDR.size :], ch_size)

    def _unzip_legacy(self, shdr: SectionHeader) -> bytes:
        raw = bytes(self.data[shdr.offset : shdr.offset + shdr.size])
        if raw[:4] != b"ZLIB" or len(raw) < 12:
            raise _Malformed("a .zdebug section lacks its ZLIB header")
        return _inflate(raw[12:], int.from_bytes(raw[4:12], "big"))

    def _relocations(self, target: int) -> dict[int, int]:
        """Relocated values of a relocatable object's debug section: S + A per field."""
        relocs: dict[int, int] = {}
        for shdr in self.shdrs:
            if shdr.type != SHT_RELA or shdr.info != target or shdr.link >= len(self.shdrs):
                continue
            symtab = self.shdrs[shdr.link]
            table = bytes(self.data[shdr.offset : shdr.offset + shdr.size])
            usable = len(table) - len(table) % 24
            for offset, info, addend in struct.iter_unpack("<QQq", table[:usable]):
                symbol = info >> 32
                value = 0
                at = symtab.offset + symbol * SYM_SIZE + 8
                if symbol and at + 8 <= symtab.offset + symtab.size:
                    value = int.from_bytes(self.data[at : at + 8], "little")
                relocs[offset] = value + addend
        return relocs

    # -- units --------------------------------------------------------------------

    def iter_units(self) -> Iterator[CompileUnit]:
        for _, header_at, offset_size, _ in self.iter_unit_extents():
            unit = self._unit_header(header_at, offset_size)
            if unit is not None:
                found = self._top_die(*unit)
                if found is not None:
                    yield found

    def iter_unit_extents(self) -> Iterator[tuple[int, int, int, int]]:
        """``(start, header, offset size, end)`` of each unit of ``.debug_info``:
        where its length field is, where its header follows, 4 or 8 (32- or
        64-bit DWARF), and where the next unit starts."""
        info = self.info
        pos = 0
        while pos < info.size:
            start = pos
            length = info.uint(pos, 4)
            pos += 4
            offset_size = 4
            if length == 0xFFFFFFFF:
                length = info.uint(pos, 8)
                pos += 8
                offset_size = 8
            elif length >= 0xFFFFFFF0:
                raise _Malformed(f"reserved unit length {length:#x}")
            end = pos + length
            if end > info.size:
                raise _Malformed("a unit runs past the end of .debug_info")
            yield start, pos, offset_size, end
            pos = end

    def _unit_header(self, pos: int, offset_size: int) -> tuple[int, int, _Unit] | None:
        """(position of the top DIE, abbreviation table offset, unit) or None to skip."""
        info = self.info
        version = info.uint(pos, 2)
        pos += 2
        if version >= 5:
            unit_type = info.uint(pos, 1)
            address_size = info.uint(pos + 1, 1)
            abbrev_offset = info.uint(pos + 2, offset_size)
            pos += 2 + offset_size
            if unit_type in (_DW_UT_SKELETON, _DW_UT_SPLIT_COMPILE):
                pos += 8  # dwo_id
            elif unit_type in (_DW_UT_TYPE, _DW_UT_SPLIT_TYPE):
                return None
        elif version >= 2:
            abbrev_offset = info.uint(pos, offset_size)
            address_size = info.uint(pos + offset_size, 1)
            pos += offset_size + 1
        else:
            raise _Malformed(f"unsupported DWARF version {version}")
        if version > 5:
            raise _Malformed(f"unsupported DWARF version {version}")
        return pos, abbrev_offset, _Unit(offset_size, address_size, version)

    def _top_die(self, pos: int, abbrev_offset: int, unit: _Unit) -> CompileUnit | None:
        code, pos = self.info.uleb(pos)
        if code == 0:
            return None
        tag, specs = self._find_abbrev(abbrev_offset, code)
        if tag not in _UNIT_TAGS:
            return None
        values: dict[int, tuple[int, int | bytes]] = {}
        for attr, form, implicit in specs:
            value, pos, form = self._read_form(pos, form, implicit, unit)
            if attr in _WANTED and value is not None:
                values[attr] = (form, value)
        base_entry = values.get(_DW_AT_STR_OFFSETS_BASE)
        # Without DW_AT_str_offsets_base: just past the table's 8- or 16-byte header.
        base = 2 * unit.offset_size
        if base_entry is not None and isinstance(base_entry[1], int):
            base = base_entry[1]
        strings = {
            attr: self._string(form, value, base, unit)
            for attr, (form, value) in values.items()
            if attr in (_DW_AT_NAME, _DW_AT_COMP_DIR, _DW_AT_PRODUCER)
        }
        name = strings.get(_DW_AT_NAME)
        if name is None:
            return None
        comp_dir = strings.get(_DW_AT_COMP_DIR)
        producer = strings.get(_DW_AT_PRODUCER)
        language = values.get(_DW_AT_LANGUAGE)
        return CompileUnit(
            name=os.fsdecode(name),
            comp_dir=None if comp_dir is None else os.fsdecode(comp_dir),
            producer=None if producer is None else producer.decode("utf-8", "replace"),
            language=language[1] if language and isinstance(language[1], int) else None,
        )

    def _find_abbrev(self, offset: int, code: int) -> _Abbrev:
        """The abbreviation ``code`` of the table at ``offset``, decoding only up to it."""
        table = self._abbrevs.setdefault(offset, {})
        pos = self._abbrev_ends.get(offset, offset)
        section = self.abbrev
        while code not in table:
            if pos < 0:
                raise _Malformed(f"abbreviation {code} missing at {offset:#x}")
            entry, pos = section.uleb(pos)
            if entry == 0:
                pos = -1
                continue
            tag, pos = section.uleb(pos)
            specs, pos = section.attribute_specs(pos + 1)  # after DW_CHILDREN_yes/no
            table[entry] = (tag, specs)
        self._abbrev_ends[offset] = pos
        return table[code]

    def _read_form(
        self, pos: int, form: int, implicit: int, unit: _Unit
    ) -> tuple[int | bytes | None, int, int]:
        """(value or None when not decoded, position after it, form after DW_FORM_indirect)."""
        info = self.info
        while form == _FORM_INDIRECT:
            form, pos = info.uleb(pos)
        if form in _OFFSET:
            return info.uint(pos, unit.offset_size), pos + unit.offset_size, form
        if form in _ULEB:
            value, pos = info.uleb(pos)
            return value, pos, form
        size = _FIXED.get(form)
        if size is not None:
            return (info.uint(pos, size) if size else 1), pos + size, form
        if form == _FORM_STRING:
            text, pos = info.cstr(pos)
            return text, pos, form
        if form == 0x0D:  # sdata
            value, pos = info.sleb(pos)
            return value, pos, form
        if form == _FORM_IMPLICIT_CONST:
            return implicit, pos, form
        if form == _FORM_ADDR:
            return None, pos + unit.address_size, form
        if form == _FORM_REF_ADDR:
            return None, pos + (unit.address_size if unit.version == 2 else unit.offset_size), form
        length_size = _BLOCK.get(form)
        if length_size is None:
            raise _Malformed(f"unknown attribute form {form:#x}")
        if length_size:
            length = info.uint(pos, length_size)
            pos += length_size
        else:
            length, pos = info.uleb(pos)
        return None, pos + length, form

    def _string(self, form: int, value: int | bytes, base: int, unit: _Unit) -> bytes | None:
        if isinstance(value, bytes):
            return value
        if form == _FORM_STRP:
            return self.str.cstr(value)[0]
        if form == _FORM_LINE_STRP:
            return self.line_str.cstr(value)[0]
        if form in _FORM_STRX:
            offset = self.str_offsets.uint(base + value * unit.offset_size, unit.offset_size)
            return self.str.cstr(offset)[0]
        return None  # in a .dwo or an alternate (dwz) file: not ours to read


def _inflate(data: bytes, expected: int) -> bytes:
    import zlib  # only compressed DWARF needs it

    try:
        out = zlib.decompress(data)
    except zlib.error as e:
        raise _Malformed(f"a compressed debug section is corrupt: {e}") from e
    if len(out) != expected:
        raise _Malformed("a compressed debug section has the wrong size")
    return out


def _parse_units(path: str, data: Buffer) -> tuple[CompileUnit, ...]:
    try:
        reader = _Reader(path, data)
        if not reader.info.size:
            return ()
        return tuple(reader.iter_units())
    except _Malformed as e:
        raise BadObject(
            f"{path} has unreadable DWARF: {e}", "rebuild it with a current gcc or clang"
        ) from e

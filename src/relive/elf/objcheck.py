"""Every field of a relocatable object that relive uses, checked before it is used.

An object is input: a corrupt one (a half-written build, a flipped bit, a file
made to break relive) must be refused with the field that is wrong, never
crash relive, and above all never be loaded into a process, where a huge
alignment or a relocation past its section would write where nothing should.
Sizes and alignments are bounded by what relive can place within reach of a
module, not by what the ELF format can express.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from relive.elf.constants import (
    SHF_MERGE,
    SHN_ABS,
    SHN_COMMON,
    SHN_UNDEF,
    SHT_NOBITS,
    SHT_NULL,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    STT_FILE,
    STT_SECTION,
)
from relive.errors import BadObject

__all__ = [
    "ENTRY_SIZE",
    "MAX_ALIGN",
    "MAX_SIZE",
    "bad_field",
    "check_relocation_table",
    "check_section_headers",
    "check_shstrndx",
    "check_symbol",
]

#: Largest section alignment relive places (a 1 MiB-aligned buffer is already rare).
MAX_ALIGN = 1 << 20
#: Largest section or variable: new memory must lie within ±2 GiB of the module.
MAX_SIZE = 1 << 31
#: Largest entity of a mergeable section (strings of wide characters, .rodata.cst64).
MAX_ENTITY = 256
#: Size of one Elf64_Sym and of one Elf64_Rela.
ENTRY_SIZE = 24

_RELA = struct.Struct("<QQq")


class _Header(Protocol):
    """What is checked of a section header (``objfile.SectionHeader``)."""

    @property
    def type(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def link(self) -> int: ...
    @property
    def info(self) -> int: ...
    @property
    def addralign(self) -> int: ...
    @property
    def flags(self) -> int: ...
    @property
    def entsize(self) -> int: ...


class _Target(NamedTuple):
    """A section relocations apply to: its name and size, for checks and messages."""

    name: str
    size: int


def bad_field(path: str, where: str, field: str, value: int, why: str) -> BadObject:
    """The refusal of a corrupt object: which field of what, its value, and why."""
    return BadObject(
        f"{path} is corrupt: {where} has {field} {value:#x} ({why})",
        hint="rebuild the object; if a build is still writing it, wait for it to finish",
    )


def check_shstrndx(path: str, index: int, headers: Sequence[_Header], raw: int) -> None:
    """The section-name table index names a string table.

    ELF allows an object without section names; compilers never write one, and
    relive tells sections apart by name (.eh_frame, .note.*, ...).
    """
    if index == SHN_UNDEF:
        raise bad_field(path, "the ELF header", "e_shstrndx", raw, "no section names")
    if index >= len(headers):
        raise bad_field(path, "the ELF header", "e_shstrndx", raw, f"only {len(headers)} sections")
    if headers[index].type != SHT_STRTAB:
        raise bad_field(path, "the ELF header", "e_shstrndx", raw, "not a string table")


def check_section_headers(
    path: str, headers: Sequence[_Header], names: Sequence[str], file_size: int
) -> None:
    """Alignment, extent, entry size and links of every section header."""
    count = len(headers)
    for index, header in enumerate(headers):
        if index == 0:
            continue  # section 0 holds the extended counts, read elsewhere
        where = f"section {index} ({names[index] or 'unnamed'})"
        _check_extent(path, where, header, file_size)
        align = header.addralign
        if align > MAX_ALIGN or align & (align - 1):
            raise bad_field(path, where, "sh_addralign", align, "not a power of two up to 1 MiB")
        if header.type in (SHT_SYMTAB, SHT_RELA):
            _check_table(path, where, header, headers)
        elif header.flags & SHF_MERGE:
            entsize = header.entsize
            if not 0 < entsize <= MAX_ENTITY or entsize & (entsize - 1):
                raise bad_field(path, where, "sh_entsize", entsize, "not a mergeable entity size")
        elif header.type == SHT_SYMTAB_SHNDX and not 0 < header.link < count:
            raise bad_field(path, where, "sh_link", header.link, f"only {count} sections")


def _check_extent(path: str, where: str, header: _Header, file_size: int) -> None:
    if header.type == SHT_NOBITS:
        if header.size > MAX_SIZE:
            raise bad_field(path, where, "sh_size", header.size, "larger than 2 GiB")
        return
    if header.type == SHT_NULL:
        return
    if header.offset > file_size:
        raise bad_field(path, where, "sh_offset", header.offset, "past the end of the file")
    if header.size > file_size - header.offset:
        raise bad_field(path, where, "sh_size", header.size, "runs past the end of the file")


def _check_table(path: str, where: str, header: _Header, headers: Sequence[_Header]) -> None:
    count = len(headers)
    if header.entsize != ENTRY_SIZE:
        raise bad_field(path, where, "sh_entsize", header.entsize, f"not {ENTRY_SIZE}")
    if header.size % ENTRY_SIZE:
        raise bad_field(path, where, "sh_size", header.size, f"not a multiple of {ENTRY_SIZE}")
    wanted = SHT_STRTAB if header.type == SHT_SYMTAB else SHT_SYMTAB
    if not 0 < header.link < count or headers[header.link].type != wanted:
        kind = "string table" if wanted == SHT_STRTAB else "symbol table"
        raise bad_field(path, where, "sh_link", header.link, f"not the index of a {kind}")
    if header.type == SHT_RELA and not 0 < header.info < count:
        raise bad_field(path, where, "sh_info", header.info, f"only {count} sections")


def check_symbol(
    path: str,
    index: int,
    name: str,
    st_type: int,
    shndx: int,
    value: int,
    size: int,
    section_sizes: Sequence[int],
) -> None:
    """A symbol's section index, and its extent inside that section."""
    where = f"symbol {index} ({name or 'unnamed'})"
    if shndx in (SHN_UNDEF, SHN_ABS):
        return
    if shndx == SHN_COMMON:
        # A tentative definition: st_value is its alignment.
        if value > MAX_ALIGN or value & (value - 1):
            raise bad_field(path, where, "st_value", value, "not an alignment up to 1 MiB")
        if size > MAX_SIZE:
            raise bad_field(path, where, "st_size", size, "larger than 2 GiB")
        return
    if shndx >= len(section_sizes):
        raise bad_field(
            path, where, "st_shndx", shndx, f"not a section: there are {len(section_sizes)}"
        )
    if st_type in (STT_SECTION, STT_FILE):
        return
    room = section_sizes[shndx]
    if value > room:
        raise bad_field(path, where, "st_value", value, f"past the end of its {room}-byte section")
    if size > room - value:
        raise bad_field(path, where, "st_size", size, f"runs past its {room}-byte section")


def check_relocation_table(
    path: str, where: str, data: bytes | memoryview, symbol_count: int, target: _Target
) -> None:
    """Every relocation names a symbol that exists and a place inside its section."""
    entries = list(_RELA.iter_unpack(data))
    # The common case in two passes over tuples; the slow loop only names the culprit.
    if not entries or (
        max(info for _, info, _ in entries) >> 32 < symbol_count
        and max(offset for offset, _, _ in entries) < target.size
    ):
        return
    for number, (offset, info, _) in enumerate(entries):
        if info >> 32 >= symbol_count:
            raise bad_field(
                path,
                f"relocation {number} of {where}",
                "r_info",
                info,
                f"symbol {info >> 32} of {symbol_count}",
            )
        if offset >= target.size:
            raise bad_field(
                path,
                f"relocation {number} of {where}",
                "r_offset",
                offset,
                f"past the end of {target.name} ({target.size} bytes)",
            )


def target_of(name: str, size: int) -> _Target:
    """Describe a relocated section for :func:`check_relocation_table`."""
    return _Target(name, size)

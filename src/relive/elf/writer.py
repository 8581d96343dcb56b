"""Write a small ELF64 file whose sections sit at given addresses.

relive writes one such file per reload (its *debug object*) so that gdb,
``readelf`` and perf can read the new code where it lives in the target: its
code and data at their runtime addresses, its symbols, its ``.eh_frame`` and
its DWARF relocated to those addresses.  The file is an ``ET_EXEC`` with no
program headers: debuggers place sections by ``sh_addr``, which is all that is
needed (the code itself is loaded by relive, not by a loader).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from relive.elf.constants import (
    ET_EXEC,
    SHN_ABS,
    SHT_NOBITS,
    SHT_PROGBITS,
    SHT_STRTAB,
    SHT_SYMTAB,
    STB_GLOBAL,
    STB_LOCAL,
    STT_FILE,
    STT_FUNC,
    STT_OBJECT,
)

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
_SYM = struct.Struct("<IBBHQQ")
_IDENT = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little-endian, SysV


@dataclass(frozen=True)
class OutSection:
    """One section of the file: its name, contents and where it lives at run time."""

    name: str
    data: bytes
    address: int = 0
    flags: int = 0
    type: int = SHT_PROGBITS
    align: int = 1
    #: For SHT_NOBITS: the size in memory (``data`` is empty).
    nobits_size: int = 0


@dataclass(frozen=True)
class OutSymbol:
    """A symbol at an absolute address (``section``: index in the section list, or -1)."""

    name: str
    address: int
    size: int
    section: int = -1
    is_function: bool = True
    is_global: bool = True


def write_elf(
    machine: int,
    sections: Sequence[OutSection],
    symbols: Sequence[OutSymbol],
    source_name: str = "",
) -> bytes:
    """The bytes of an ELF64 ``ET_EXEC`` holding ``sections`` and a symbol table."""
    all_sections = list(sections)
    strtab = _StringTable()
    symtab = bytearray(_SYM.size)  # entry 0 is the null symbol
    locals_end = 1
    if source_name:
        symtab += _SYM.pack(strtab.add(source_name), STT_FILE | STB_LOCAL << 4, 0, SHN_ABS, 0, 0)
        locals_end = 2
    ordered = sorted(symbols, key=lambda s: s.is_global)  # locals first, as ELF requires
    for symbol in ordered:
        kind = STT_FUNC if symbol.is_function else STT_OBJECT
        bind = STB_GLOBAL if symbol.is_global else STB_LOCAL
        shndx = symbol.section + 1 if 0 <= symbol.section < len(sections) else SHN_ABS
        symtab += _SYM.pack(
            strtab.add(symbol.name), kind | bind << 4, 0, shndx, symbol.address, symbol.size
        )
        if not symbol.is_global:
            locals_end += 1
    symtab_index = len(all_sections) + 1
    all_sections.append(OutSection(".symtab", bytes(symtab), type=SHT_SYMTAB, align=8))
    all_sections.append(OutSection(".strtab", strtab.data(), type=SHT_STRTAB))
    names = _StringTable()
    name_offsets = [names.add(s.name) for s in all_sections]
    shstr_offset = names.add(".shstrtab")
    all_sections.append(OutSection(".shstrtab", b"", type=SHT_STRTAB))
    shstrtab = names.data()
    all_sections[-1] = OutSection(".shstrtab", shstrtab, type=SHT_STRTAB)
    name_offsets.append(shstr_offset)

    body = bytearray(_EHDR.size)
    headers = [bytes(_SHDR.size)]
    for section, name in zip(all_sections, name_offsets, strict=True):
        align = max(section.align, 1)
        body += bytes(-len(body) % align)
        offset = len(body)
        body += section.data
        size = section.nobits_size if section.type == SHT_NOBITS else len(section.data)
        link, info, entsize = 0, 0, 0
        if section.type == SHT_SYMTAB:
            link, info, entsize = symtab_index + 1, locals_end, _SYM.size
        headers.append(
            _SHDR.pack(
                name,
                section.type,
                section.flags,
                section.address,
                offset,
                size,
                link,
                info,
                align,
                entsize,
            )
        )
    body += bytes(-len(body) % 8)
    shoff = len(body)
    for header in headers:
        body += header
    shnum = len(headers)
    body[: _EHDR.size] = _EHDR.pack(
        _IDENT, ET_EXEC, machine, 1, 0, 0, shoff, 0, _EHDR.size, 0, 0, _SHDR.size, shnum, shnum - 1
    )
    return bytes(body)


class _StringTable:
    def __init__(self) -> None:
        self._data = bytearray(b"\0")
        self._offsets: dict[str, int] = {"": 0}

    def add(self, text: str) -> int:
        offset = self._offsets.get(text)
        if offset is None:
            offset = self._offsets[text] = len(self._data)
            self._data += text.encode() + b"\0"
        return offset

    def data(self) -> bytes:
        return bytes(self._data)

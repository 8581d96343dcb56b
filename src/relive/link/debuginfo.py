"""The debug object of a reload: the new block as debuggers and profilers must see it.

The object file the compiler produced describes the new code at address 0 of
each section.  A debugger needs it at the addresses where relive placed it:
this module relocates the sections relive does not load into the target
(``.debug_*``, ``.eh_frame``) the same way the linker relocated the code, and
packs the result with the code, data and symbols into one ELF file
(:func:`relive.elf.writer.write_elf`).  Pure: a linked image in, bytes out.

Sections of the object that were not loaded (functions that did not change)
resolve to address 0: DWARF consumers treat code at 0 as discarded, exactly as
for a linker's ``--gc-sections``, so gdb keeps using the program's own
description of the unchanged functions.  The ``.eh_frame`` is the block's own
table, which holds only the entries of the loaded code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from relive.elf.constants import SHF_ALLOC
from relive.elf.objfile import ObjSymbol, Section
from relive.elf.writer import OutSection, OutSymbol, write_elf
from relive.link.ehframe import EH_FRAME
from relive.link.linker import relocate_detached
from relive.link.model import LinkedImage


@dataclass(frozen=True)
class FunctionSpan:
    """A function of the new block: for symbol maps such as perf's."""

    name: str
    address: int
    size: int


def is_debug_section(section: Section) -> bool:
    """DWARF sections (``.debug_*``), which only tools read."""
    return section.name.startswith(".debug_") and not section.is_alloc


def iter_function_spans(image: LinkedImage) -> Iterator[FunctionSpan]:
    """Every function defined in the block, with its runtime address and size."""
    for symbol in image.layout.request.obj.symbols:
        if symbol.is_function and symbol.shndx in image.layout.section_offsets:
            yield FunctionSpan(symbol.name, image.get_symbol_address(symbol), symbol.size)


def debug_relocation_count(image: LinkedImage) -> int:
    """How many relocations the object's DWARF has: what building its debug object costs."""
    obj = image.layout.request.obj
    return sum(
        obj.relocation_count(section.index) for section in obj.sections if is_debug_section(section)
    )


def build_debug_object(image: LinkedImage, source_name: str) -> bytes:
    """The ELF bytes of the debug object for ``image``."""
    obj = image.layout.request.obj
    sections: list[OutSection] = []
    position: dict[int, int] = {}
    for index, offset in sorted(image.layout.section_offsets.items(), key=lambda kv: kv[1]):
        section = obj.sections[index]
        position[index] = len(sections)
        start = offset
        data = b"" if section.is_nobits else image.data[start : start + section.size]
        sections.append(
            OutSection(
                section.name,
                data,
                address=image.address_of(offset),
                flags=section.flags,
                type=section.type,
                align=section.align,
                nobits_size=section.size if section.is_nobits else 0,
            )
        )
    eh_frame = _eh_frame_of(image)
    if eh_frame is not None:
        sections.append(eh_frame)
    for section in obj.sections:
        if is_debug_section(section):
            data, _ = relocate_detached(image, section.index, 0)
            sections.append(OutSection(section.name, data, align=max(section.align, 1)))
    symbols = [
        OutSymbol(
            symbol.name,
            image.get_symbol_address(symbol),
            symbol.size,
            section=position[symbol.shndx],
            is_function=symbol.is_function,
            is_global=not symbol.is_local,
        )
        for symbol in _named_symbols(obj.symbols)
        if symbol.shndx in position
    ]
    return write_elf(image.layout.request.arch.elf_machine, sections, symbols, source_name)


def _named_symbols(symbols: list[ObjSymbol]) -> Iterator[ObjSymbol]:
    for symbol in symbols:
        if symbol.name and symbol.is_defined and not symbol.is_section and not symbol.is_absolute:
            yield symbol


def _eh_frame_of(image: LinkedImage) -> OutSection | None:
    """The unwind table as loaded in the block (the linker relocated it there)."""
    address, offset, table = (
        image.eh_frame_address,
        image.layout.eh_frame_offset,
        image.layout.eh_frame,
    )
    if address is None or offset is None or table is None:
        return None
    data = image.data[offset : offset + table.size]
    return OutSection(EH_FRAME, data, address=address, flags=SHF_ALLOC, align=8)

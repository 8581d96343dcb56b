"""Place the loaded sections, GOT slots and stubs of a new block, as a linker would."""

from __future__ import annotations

from relive.arch.base import Need
from relive.elf.objfile import ObjectFile, ObjSymbol, Section
from relive.errors import LinkError
from relive.link.ehframe import EH_FRAME, TERMINATOR, UNWIND_OBJECT_SIZE, trim_eh_frame
from relive.link.model import GotKey, Layout, LinkRequest

#: Bytes of the GOT entry each GOT-using relocation needs.
_GOT_SIZE = {
    Need.GOT_SLOT: 8,
    Need.GOT_TPOFF: 8,
    Need.GOT_TLS_PAIR: 16,
    Need.GOT_TLS_MODULE: 16,
}


def _align(value: int, alignment: int) -> int:
    alignment = max(alignment, 1)
    return (value + alignment - 1) // alignment * alignment


def plan_layout(request: LinkRequest) -> Layout:
    """Lay out code sections, then far stubs, then data sections, then the GOT.

    Data starts on a fresh page, so that the code pages can be made read+execute
    and the data pages stay read+write: no page of the block is ever both.

    Every call target outside the block gets a stub slot up front: whether it is
    in reach of a 32-bit displacement is only known once the block has an
    address, and 14 bytes per target is cheap.
    """
    obj = request.obj
    for index in request.load:
        if obj.sections[index].is_tls:
            raise LinkError(
                f"{obj.path}: new thread-local variable in {obj.sections[index].name}",
                hint="relive cannot grow the static TLS block of a running process; "
                "keep the __thread variables the program started with",
            )
    code = sorted(i for i in request.load if obj.sections[i].is_exec)
    data = sorted(i for i in request.load if not obj.sections[i].is_exec)
    offsets: dict[int, int] = {}
    cursor = _place(obj, code, offsets, 0)
    stubs, got_needs = _collect_needs(request)
    stub_offsets: dict[int, int] = {}
    for symbol_index in sorted(stubs):
        cursor = _align(cursor, 16)
        stub_offsets[symbol_index] = cursor
        cursor += request.arch.far_stub_size
    code_size = cursor
    data_offset = _align(cursor, request.arch.page_size)
    cursor = _place(obj, data, offsets, data_offset)
    eh_frame_offset = unwind_object_offset = None
    eh_frame = _find_eh_frame(obj)
    table = None if eh_frame is None or not code else trim_eh_frame(obj, eh_frame, code)
    if table is not None:
        eh_frame_offset = _align(cursor, 16)  # relive's own part starts aligned
        unwind_object_offset = _align(eh_frame_offset + table.size + len(TERMINATOR), 16)
        cursor = unwind_object_offset + UNWIND_OBJECT_SIZE
    got_base = _align(cursor, 16)
    got_offsets: dict[GotKey, int] = {}
    cursor = got_base
    for key, size in sorted(
        got_needs.items(), key=lambda kv: (kv[0].kind.value, kv[0].symbol_index)
    ):
        got_offsets[key] = cursor
        cursor += size
    return Layout(
        request=request,
        section_offsets=offsets,
        got_offsets=got_offsets,
        got_base=got_base,
        stub_offsets=stub_offsets,
        size=max(cursor, 1),
        code_size=code_size,
        alignment=max([16, *(obj.sections[i].align for i in request.load)]),
        eh_frame=table,
        eh_frame_offset=eh_frame_offset,
        unwind_object_offset=unwind_object_offset,
        data_offset=data_offset,
        own_offset=eh_frame_offset if eh_frame_offset is not None else got_base,
    )


def _find_eh_frame(obj: ObjectFile) -> Section | None:
    for section in obj.sections:
        if section.name == EH_FRAME and section.size and not section.is_nobits:
            return section
    return None


#: Room every loaded code section gets at least, so that a later reload can put
#: an entry jump (plus a kept landing pad) at the start of any new function.
MIN_CODE_ROOM = 16


def _place(obj: ObjectFile, indices: list[int], offsets: dict[int, int], cursor: int) -> int:
    """Append sections at their alignment; return the end offset."""
    for index in indices:
        section = obj.sections[index]
        cursor = _align(cursor, section.align)
        offsets[index] = cursor
        cursor += max(section.size, MIN_CODE_ROOM) if section.is_exec else section.size
    return cursor


def _collect_needs(request: LinkRequest) -> tuple[set[int], dict[GotKey, int]]:
    """Which symbols need a far stub, and which GOT entries the relocations use."""
    obj = request.obj
    stubs: set[int] = set()
    got: dict[GotKey, int] = {}
    for index in request.load:
        for reloc in obj.relocations.get(index, ()):
            rtype = request.arch.relocations.get(reloc.type)
            if rtype is None:
                continue  # reported with full context when relocating
            if rtype.need is Need.CALL and not _is_loaded(request, reloc.symbol):
                stubs.add(reloc.symbol.index)
            if rtype.need in _GOT_SIZE:
                symbol_index = 0 if rtype.need is Need.GOT_TLS_MODULE else reloc.symbol.index
                got[GotKey(rtype.need, symbol_index)] = _GOT_SIZE[rtype.need]
    return stubs, got


def _is_loaded(request: LinkRequest, symbol: ObjSymbol) -> bool:
    return symbol.is_defined and not symbol.is_absolute and symbol.shndx in request.load

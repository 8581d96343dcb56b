"""Relocate a laid-out block at its final address.  Pure: bytes in, bytes out."""

from __future__ import annotations

import struct
from collections.abc import Iterable

from relive.arch.base import Need, Operands, RelocationType, fits
from relive.elf.objfile import ObjSymbol, Relocation, Section
from relive.errors import BadObject, LinkError
from relive.link.ehframe import build_table, move_relocations
from relive.link.model import Bound, GotKey, Layout, LinkedImage, place

#: The linker-defined symbol that names the GOT (psABI); for new code, relive's GOT.
GOT_SYMBOL = "_GLOBAL_OFFSET_TABLE_"

_TLS_NEEDS = (Need.TPOFF, Need.DTPOFF, Need.GOT_TPOFF, Need.GOT_TLS_PAIR)


def link(
    layout: Layout, base: int, data_base: int | None = None, own_base: int | None = None
) -> LinkedImage:
    """Copy every loaded section to its offset, apply its relocations, fill GOT and stubs.

    The code part goes at ``base``, the object's data at ``data_base``, relive's
    own data (unwind table, GOT) at ``own_base`` (by default each right after the
    part before, as laid out).
    """
    linker = _Linker(layout, base, data_base, own_base)
    data = linker.run()
    return LinkedImage(
        base, data, layout, data_base, own_base, takes_own_code=linker.takes_own_code
    )


class _Linker:
    def __init__(
        self,
        layout: Layout,
        base: int,
        data_base: int | None = None,
        own_base: int | None = None,
    ) -> None:
        self.layout = layout
        self.request = layout.request
        self.obj = layout.request.obj
        self.base = base
        self.data_base = data_base
        self.own_base = own_base
        self.image = bytearray(layout.size)
        self.got_values: dict[GotKey, bytes] = {}
        #: Addresses of existing functions taken by new code are their original entries.
        self.takes_identity = bool(layout.request.original_entries)
        #: Whether a relocation takes the address of the block's own code (not a branch).
        self.takes_own_code = False

    def run(self) -> bytes:
        for index, offset in self.layout.section_offsets.items():
            section = self.obj.sections[index]
            if not section.is_nobits:
                self.image[offset : offset + section.size] = section.data
            for reloc in self.obj.relocations.get(index, ()):
                self._apply(section, offset, reloc)
        self._write_stubs()
        self._write_eh_frame()
        self.takes_own_code |= self._loads_own_address()
        for key, offset in self.layout.got_offsets.items():
            value = self.got_values.get(key)
            if value is not None:
                self.image[offset : offset + len(value)] = value
        return bytes(self.image)

    def _at(self, offset: int) -> int:
        """The runtime address of byte ``offset`` of the layout."""
        return place(self.layout, offset, self.base, self.data_base, self.own_base)

    # -- one relocation -------------------------------------------------------

    def _apply(self, section: Section, section_offset: int, reloc: Relocation) -> None:
        place = self._at(section_offset) + reloc.offset
        encoded = self._encode_field(section, place, reloc)
        field = section_offset + reloc.offset
        self.image[field : field + len(encoded)] = encoded

    def _encode_field(self, section: Section, place: int, reloc: Relocation) -> bytes:
        """The bytes a relocation puts at runtime address ``place`` (none for R_*_NONE)."""
        if reloc.type == 0:  # R_*_NONE
            return b""
        rtype = self.request.arch.relocations.get(reloc.type)
        if rtype is None:
            raise LinkError(
                f"unsupported relocation {self._type_name(reloc.type)} against "
                f"{_describe(self.obj.sections, reloc.symbol)} in {section.name}",
                hint="relive handles what gcc and clang emit for -O0..-O3, PIE and -fPIC; "
                "please report this object",
            )
        if reloc.offset + rtype.width > section.size:
            # The object's own checks bound r_offset by the section; the field's
            # width is only known here.  Past the end would write into the next
            # section (or beyond the block).
            raise BadObject(
                f"{self.obj.path} is corrupt: a {rtype.name} relocation at r_offset "
                f"{reloc.offset:#x} runs past the end of {section.name} ({section.size} bytes)",
                hint="rebuild the object",
            )
        operands = self._operands(rtype, reloc, place, section)
        value = rtype.compute(operands)
        if not fits(value, rtype.width, rtype.range):
            raise LinkError(
                f"{rtype.name} against {_describe(self.obj.sections, reloc.symbol)} in "
                f"{section.name}: value {value:#x} does not fit {rtype.width * 8} bits",
                hint="the new code is too far from what it references; "
                "rebuild the program as PIE or with -mcmodel=large",
            )
        return _encode(value, rtype.width)

    def _type_name(self, number: int) -> str:
        name = self.request.arch.unsupported_relocations.get(number)
        return f"{name} ({number})" if name else f"type {number}"

    def _operands(
        self, rtype: RelocationType, reloc: Relocation, place: int, section: Section
    ) -> Operands:
        symbol, need = reloc.symbol, rtype.need
        got_base = self._at(self.layout.got_base)
        if need in _TLS_NEEDS or need is Need.GOT_TLS_MODULE:
            return self._tls_operands(rtype, reloc, place, got_base)
        target = self._symbol_address(symbol)
        branch: bool | None = None
        if self.takes_identity:
            branch = self._is_branch(rtype, reloc, section)
            if not branch:
                target = self._identity_address(rtype, reloc, target)
        if (section.is_exec or section.is_write) and self._in_own_code(target):
            if branch is None:
                branch = self._is_branch(rtype, reloc, section)
            self.takes_own_code |= not branch
        if need is Need.CALL and not fits(target + reloc.addend - place, rtype.width, rtype.range):
            stub = self.layout.stub_offsets.get(symbol.index)
            if stub is None:
                raise LinkError(
                    f"{rtype.name} against {_describe(self.obj.sections, symbol)}: "
                    "the call is out of reach and has no stub",
                    hint="the object's call targets are inconsistent; rebuild it",
                )
            target = self._at(stub)
        slot = 0
        if need is Need.GOT_SLOT:
            slot = self._got_slot(GotKey(Need.GOT_SLOT, symbol.index), struct.pack("<Q", target))
        return Operands(
            S=target, A=reloc.addend, P=place, G=slot, GOT=got_base, Z=self._symbol_size(symbol)
        )

    def _loads_own_address(self) -> bool:
        """Whether loaded code computes an address inside its own section with no
        relocation (``lea label(%rip)``, resolved by the assembler)."""
        find = self.request.arch.find_address_loads
        for index, offset in self.layout.section_offsets.items():
            section = self.obj.sections[index]
            if not section.is_exec or section.is_nobits:
                continue
            if find is None:
                return True
            start = self._at(offset)
            relocated = {r.offset for r in self.obj.relocations.get(index, ())}
            for field, target in find(section.content(), start):
                if field not in relocated and start <= target < start + section.size:
                    return True
        return False

    def _in_own_code(self, address: int) -> bool:
        return self.base <= address < self.base + self.layout.code_size

    def _is_branch(self, rtype: RelocationType, reloc: Relocation, section: Section) -> bool:
        """A direct call or jump (not an address being taken)."""
        return (
            section.is_exec
            and rtype.pc_relative
            and self.request.arch.is_branch_field(section.content(), reloc.offset)
        )

    def _identity_address(self, rtype: RelocationType, reloc: Relocation, target: int) -> int:
        """For an address-taking reference to a replaced function: its original entry."""
        symbol = reloc.symbol
        if not symbol.is_defined:
            return target
        entries = self.request.original_entries
        if not symbol.is_section:
            entry = entries.get((symbol.shndx, symbol.value))
            return target if entry is None else entry
        if rtype.need is not Need.NOTHING:
            return target
        # gas refers to static functions as section+offset; a PC-relative field
        # is the last 4 bytes of its instruction, so the addend is offset - width.
        offset = reloc.addend + (rtype.width if rtype.pc_relative else 0)
        entry = entries.get((symbol.shndx, offset))
        return target if entry is None else entry - offset

    def _symbol_size(self, symbol: ObjSymbol) -> int:
        if symbol.is_defined or symbol.size:
            return symbol.size
        bound = self.request.externals.get(symbol.name)  # an undefined symbol has st_size 0
        return bound.size or 0 if bound is not None else 0

    def _tls_operands(
        self, rtype: RelocationType, reloc: Relocation, place: int, got_base: int
    ) -> Operands:
        symbol, need = reloc.symbol, rtype.need
        bound = self._tls_binding(symbol, rtype)
        offset = 0 if symbol.is_section or not symbol.is_defined else symbol.value
        tpoff = None if bound.tpoff is None else bound.tpoff + offset
        dtpoff = None if bound.tls_offset is None else bound.tls_offset + offset
        slot = 0
        if need is Need.GOT_TPOFF:
            value = _require(tpoff, rtype, symbol, "its thread-pointer offset")
            slot = self._got_slot(GotKey(Need.GOT_TPOFF, symbol.index), struct.pack("<q", value))
        elif need is Need.GOT_TLS_PAIR:
            module = _require(bound.tls_module_id, rtype, symbol, "its TLS module id")
            value = _require(dtpoff, rtype, symbol, "its offset in the TLS block")
            slot = self._got_slot(
                GotKey(Need.GOT_TLS_PAIR, symbol.index), struct.pack("<Qq", module, value)
            )
        elif need is Need.GOT_TLS_MODULE:
            module = _require(bound.tls_module_id, rtype, symbol, "its TLS module id")
            slot = self._got_slot(GotKey(Need.GOT_TLS_MODULE, 0), struct.pack("<QQ", module, 0))
        return Operands(
            A=reloc.addend,
            P=place,
            G=slot,
            GOT=got_base,
            T=_require(tpoff, rtype, symbol, "its thread-pointer offset")
            if need is Need.TPOFF
            else 0,
            D=_require(dtpoff, rtype, symbol, "its offset in the TLS block")
            if need is Need.DTPOFF
            else 0,
        )

    def _got_slot(self, key: GotKey, value: bytes) -> int:
        offset = self.layout.got_offsets.get(key)
        if offset is None:
            # Only relocations of loaded sections were planned for; one elsewhere
            # (.eh_frame) that wants a GOT entry is not what a compiler writes.
            raise LinkError(
                f"{self.obj.path}: a relocation outside the loaded code needs a GOT entry "
                f"({key.kind} of symbol #{key.symbol_index})",
                hint="the object is not what gcc or clang write; rebuild it",
            )
        self.got_values[key] = value
        return self._at(offset)

    # -- symbols ---------------------------------------------------------------

    def _symbol_address(self, symbol: ObjSymbol) -> int:
        if symbol.is_absolute:
            return symbol.value
        if symbol.name == GOT_SYMBOL and not symbol.is_defined:
            return self._at(self.layout.got_base)  # the new code's GOT is ours
        if not symbol.is_defined or symbol.is_common:
            return self._external(symbol).address or 0
        offset = self.layout.section_offsets.get(symbol.shndx)
        if offset is not None:
            return self._at(offset) + symbol.value
        bound = self.request.bound_sections.get(symbol.shndx)
        if bound is not None and bound.address is not None:
            return bound.address + symbol.value
        raise LinkError(
            f"{_describe(self.obj.sections, symbol)} is neither loaded nor bound to the program",
            hint="this is a relive bug: please report it with the object file",
        )

    def _external(self, symbol: ObjSymbol) -> Bound:
        bound = self.request.externals.get(symbol.name)
        if bound is None:
            raise LinkError(
                f"undefined symbol {symbol.name}: the new code needs it but the process has no "
                "definition of it",
                hint="define it in the reloaded file, or link the library that provides it "
                "into the program and restart it",
            )
        return bound

    def _tls_binding(self, symbol: ObjSymbol, rtype: RelocationType) -> Bound:
        if not symbol.is_defined or symbol.is_common:
            return self._external(symbol)
        bound = self.request.bound_sections.get(symbol.shndx)
        if bound is None:
            raise LinkError(
                f"{rtype.name} against {_describe(self.obj.sections, symbol)}: a thread-local "
                "variable the running program does not have",
                hint="relive cannot add __thread variables to a running process",
            )
        return bound

    def _write_eh_frame(self) -> None:
        """The unwind table of the loaded functions, for the program's unwinder."""
        offset = self.layout.eh_frame_offset
        if offset is None:
            return
        table = relocate_eh_frame(
            self.layout, self.base, self._at(offset), self.data_base, self.own_base
        )
        self.image[offset : offset + len(table)] = table

    def _write_stubs(self) -> None:
        for symbol_index, offset in self.layout.stub_offsets.items():
            target = self._symbol_address(self.obj.symbols[symbol_index])
            stub = self.request.arch.encode_far_stub(self._at(offset), target)
            self.image[offset : offset + len(stub)] = stub


def _require(value: int | None, rtype: RelocationType, symbol: ObjSymbol, what: str) -> int:
    if value is None:
        raise LinkError(
            f"{rtype.name} against {symbol.name or 'a TLS section'}: relive cannot find {what} "
            "in the running process",
            hint="access the variable from code of the module that defines it",
        )
    return value


def _encode(value: int, width: int) -> bytes:
    return (value & ((1 << (width * 8)) - 1)).to_bytes(width, "little")


def _describe(sections: list[Section], symbol: ObjSymbol) -> str:
    if symbol.is_section and 0 < symbol.shndx < len(sections):
        return f"section {sections[symbol.shndx].name}"
    return symbol.name or f"symbol #{symbol.index}"


def relocate_eh_frame(
    layout: Layout,
    base: int,
    address: int,
    data_base: int | None = None,
    own_base: int | None = None,
) -> bytes:
    """The block's unwind table (the kept records of the object's ``.eh_frame``,
    ``layout.eh_frame``) relocated to ``address``."""
    table = layout.eh_frame
    if table is None:
        return b""
    obj = layout.request.obj
    section = obj.sections[table.section]
    data = build_table(section.content(), table)
    relocations = move_relocations(obj.relocations.get(table.section, ()), table)
    linker = _DetachedLinker(layout, base, data_base, own_base)
    return linker.relocate_contents(
        section._replace(data=data, size=len(data)), relocations, address
    )


def relocate_detached(image: LinkedImage, index: int, address: int) -> tuple[bytes, list[int]]:
    """Section ``index`` of the image's object relocated as if it lived at ``address``.

    For the sections relive does not load (DWARF, ``.eh_frame``), which tools
    read from the reload's debug object.  A symbol in a section that is neither
    loaded nor bound resolves to 0 (code that did not change, or another debug
    section, where 0 plus the addend is the right offset); the offsets of
    fields relocated against unloaded code are returned so callers can mark
    what they describe as discarded.  A field that cannot be computed (a TLS
    offset the process does not have) is left 0.
    """
    linker = _DetachedLinker(image.layout, image.base, image.data_base, image.own_base)
    return linker.relocate(index, address), linker.unresolved


class _DetachedLinker(_Linker):
    def __init__(
        self,
        layout: Layout,
        base: int,
        data_base: int | None = None,
        own_base: int | None = None,
    ) -> None:
        super().__init__(layout, base, data_base, own_base)
        # Debug info and unwind tables describe the new code where it is.
        self.takes_identity = False
        self.unresolved: list[int] = []
        self._field = 0

    def relocate(self, index: int, address: int) -> bytes:
        section = self.obj.sections[index]
        return self.relocate_contents(section, self.obj.relocations.get(index, ()), address)

    def relocate_contents(
        self, section: Section, relocations: Iterable[Relocation], address: int
    ) -> bytes:
        """``section``'s contents with ``relocations`` applied, as if at ``address``."""
        out = bytearray(section.data)
        types = self.request.arch.relocations
        targets: dict[int, int | None] = {}
        for reloc in relocations:
            self._field = reloc.offset
            rtype = types.get(reloc.type)
            if (
                rtype is not None
                and rtype.need is Need.NOTHING
                and reloc.offset + rtype.width <= section.size
            ):
                encoded = self._plain_field(rtype, reloc, address, targets)
                if encoded is None:
                    self.unresolved.append(reloc.offset)
                else:
                    out[reloc.offset : reloc.offset + len(encoded)] = encoded
                continue
            try:
                encoded = self._encode_field(section, address + reloc.offset, reloc)
            except (LinkError, BadObject):
                self.unresolved.append(reloc.offset)
                continue
            out[reloc.offset : reloc.offset + len(encoded)] = encoded
        return bytes(out)

    def _plain_field(
        self,
        rtype: RelocationType,
        reloc: Relocation,
        address: int,
        targets: dict[int, int | None],
    ) -> bytes | None:
        """A field that needs no GOT, stub or TLS: what :meth:`_encode_field` computes,
        with each symbol's address looked up once per section (a big unit's DWARF
        holds a quarter of a million such fields); None where it cannot be computed."""
        symbol = reloc.symbol
        if symbol.index not in targets:
            unresolved = len(self.unresolved)
            try:
                target: int | None = self._symbol_address(symbol)
            except (LinkError, BadObject):
                target = None
            if len(self.unresolved) != unresolved:
                del self.unresolved[unresolved:]  # unloaded code: the caller records it
                target = None
            targets[symbol.index] = target
        target = targets[symbol.index]
        if target is None:
            return None
        place = address + reloc.offset
        operands = Operands(
            S=target, A=reloc.addend, P=place, G=0, GOT=0, Z=self._symbol_size(symbol)
        )
        value = rtype.compute(operands)
        return _encode(value, rtype.width) if fits(value, rtype.width, rtype.range) else None

    def _symbol_address(self, symbol: ObjSymbol) -> int:
        if symbol.is_defined and not symbol.is_absolute and not symbol.is_common:
            loaded = symbol.shndx in self.layout.section_offsets
            section = self.obj.sections[symbol.shndx]
            bound = self.request.bound_sections.get(symbol.shndx)
            if section.is_exec and not loaded:
                # Unchanged code: the program's own debug info describes it.
                self.unresolved.append(self._field)
                return 0
            if not loaded and (bound is None or bound.address is None):
                return 0 if symbol.is_section else symbol.value
        return super()._symbol_address(symbol)

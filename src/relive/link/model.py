"""What the linker is given and what it produces.  Pure data, no process access."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from relive.arch.base import Arch, Need
from relive.elf.objfile import ObjectFile, ObjSymbol
from relive.link.ehframe import TrimmedTable


@dataclass(frozen=True, slots=True)
class Bound:
    """Where an existing definition lives in the running process.

    A section or symbol of the new object that is *bound* is not loaded: every
    reference to it resolves to the old storage, so its value is kept.
    """

    address: int | None = None  # runtime address (None for thread-local storage)
    size: int | None = None
    tpoff: int | None = None  # TLS: offset from the thread pointer (static TLS)
    tls_offset: int | None = None  # TLS: offset inside the module's TLS block
    tls_module_id: int | None = None  # TLS: the module id __tls_get_addr takes


@dataclass(frozen=True)
class LinkRequest:
    """An object file and the decisions that bind it to a running program.

    ``load`` are the section indices placed in new memory (changed and new
    functions, new variables, constants and strings).  ``bound_sections`` map
    sections that already exist in the process to their storage.  ``externals``
    map undefined (and common) symbol names to their running definitions.
    """

    obj: ObjectFile
    arch: Arch
    load: frozenset[int]
    bound_sections: Mapping[int, Bound] = field(default_factory=dict)
    externals: Mapping[str, Bound] = field(default_factory=dict)
    #: Loaded functions that replace running ones, keyed by (section index, offset
    #: in it): their original entry.  Taking such a function's address gives the
    #: original entry (which jumps to the new body), so ``&f`` is the same in old
    #: and new code; only direct calls and jumps go straight to the new body.
    original_entries: Mapping[tuple[int, int], int] = field(default_factory=dict)


@dataclass(frozen=True)
class GotKey:
    """One GOT entry the new code needs: what it holds, for which symbol."""

    #: What the entry holds: Need.GOT_SLOT (an address), GOT_TPOFF, GOT_TLS_PAIR or
    #: GOT_TLS_MODULE (the one module-id pair of local-dynamic code).
    kind: Need
    symbol_index: int


@dataclass(frozen=True)
class Layout:
    """Offsets of everything inside the new block, decided before its address is known."""

    request: LinkRequest
    section_offsets: Mapping[int, int]
    got_offsets: Mapping[GotKey, int]
    got_base: int
    stub_offsets: Mapping[int, int]  # symbol index of a call target -> its far stub
    size: int
    #: Bytes [0, code_size) hold code and stubs; data starts at ``data_offset`` (the
    #: next page), so code and data can live apart (see ``LinkedImage.data_base``).
    code_size: int
    #: The block's address must be a multiple of this (the largest section alignment).
    alignment: int = 16
    #: The records of the object's ``.eh_frame`` that describe the loaded code (None:
    #: no FDE does), and where they go, relocated and followed by a terminator;
    #: libgcc's registration record follows them at ``unwind_object_offset``.
    eh_frame: TrimmedTable | None = None
    eh_frame_offset: int | None = None
    unwind_object_offset: int | None = None
    #: Where the data part begins (a page boundary at or after ``code_size``).
    data_offset: int = 0
    #: Where relive's own part of the data begins (unwind table, its registration
    #: record, GOT: only the block's code and the unwinder use it), which may live
    #: apart from the object's data; None: the data part runs to the end.
    own_offset: int | None = None


def place(
    layout: Layout, offset: int, base: int, data_base: int | None, own_base: int | None
) -> int:
    """The runtime address of byte ``offset`` of ``layout``: code and stubs at ``base``,
    the object's data at ``data_base``, relive's own data at ``own_base`` (each, when
    None, right after the part before it, as laid out)."""
    if offset < layout.data_offset:
        return base + offset
    data = base + layout.data_offset if data_base is None else data_base
    own = layout.own_offset
    if own is None or offset < own:
        return data + offset - layout.data_offset
    start = data + own - layout.data_offset if own_base is None else own_base
    return start + offset - own


@dataclass(frozen=True)
class LinkedImage:
    """The relocated bytes of the new block and where its symbols ended up.

    ``data`` is laid out as the layout says: code and stubs in
    ``[0, code_size)``, the object's data from ``data_offset``, relive's own data
    from ``own_offset``.  The parts live at ``base``, ``data_base`` and
    ``own_base`` (each right after the one before when None), so that code and
    data come from separate arenas, and relive's own data, freed with the code,
    from space of its own.
    """

    base: int
    data: bytes
    layout: Layout
    data_base: int | None = None
    own_base: int | None = None
    #: A relocation of the loaded code or writable data takes the address of this
    #: block's own code other than as a direct call or jump: that address may be
    #: stored anywhere, so the code must never be reclaimed (``patch.reclaim``).
    takes_own_code: bool = False

    def address_of(self, offset: int) -> int:
        """The runtime address of byte ``offset`` of the layout."""
        return place(self.layout, offset, self.base, self.data_base, self.own_base)

    @property
    def _own_offset(self) -> int:
        own = self.layout.own_offset
        end = len(self.data)
        return end if own is None else max(min(own, end), min(self.layout.data_offset, end))

    def _parts(self) -> list[tuple[int, int]]:
        """[start, end) in the layout of the code, the object's data and relive's own."""
        data, own, end = (
            min(self.layout.data_offset, len(self.data)),
            self._own_offset,
            len(self.data),
        )
        return [(0, min(self.layout.code_size, end)), (data, own), (own, end)]

    def _range(self, part: int) -> tuple[int, int]:
        start, end = self._parts()[part]
        return self.address_of(start), end - start

    @property
    def code_range(self) -> tuple[int, int]:
        """(address, size) of the code and stubs (size 0: no code)."""
        return self._range(0)

    @property
    def data_range(self) -> tuple[int, int]:
        """(address, size) of the object's data (size 0: none)."""
        return self._range(1)

    @property
    def own_range(self) -> tuple[int, int]:
        """(address, size) of relive's own data: unwind table, its record, GOT."""
        return self._range(2)

    def part_bytes(self) -> list[tuple[int, bytes]]:
        """(address, bytes) of each part to write (empty parts left out)."""
        return [
            (self.address_of(start), self.data[start:end])
            for start, end in self._parts()
            if end > start
        ]

    def read(self, address: int, size: int) -> bytes | None:
        """The image's bytes at runtime ``address`` (None: not all inside one part)."""
        for start, end in self._parts():
            at = self.address_of(start)
            if at <= address and address + size <= at + end - start:
                return self.data[start + address - at : start + address - at + size]
        return None

    def find_section_address(self, index: int) -> int | None:
        """The runtime address of a loaded section, or None if it was not loaded."""
        offset = self.layout.section_offsets.get(index)
        return None if offset is None else self.address_of(offset)

    @property
    def eh_frame_address(self) -> int | None:
        """Where the block's unwind table lives in the target (None: it has none)."""
        offset = self.layout.eh_frame_offset
        return None if offset is None else self.address_of(offset)

    @property
    def unwind_object_address(self) -> int | None:
        """Where libgcc's registration record for the unwind table goes."""
        offset = self.layout.unwind_object_offset
        return None if offset is None else self.address_of(offset)

    def get_symbol_address(self, symbol: ObjSymbol) -> int:
        """The runtime address of a symbol defined in a loaded section."""
        section = self.find_section_address(symbol.shndx)
        if section is None:
            raise KeyError(symbol.name)
        return section + symbol.value

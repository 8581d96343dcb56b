"""Which functions of a new object differ from the code they would replace.

A function is *unchanged* when its bytes are equal outside relocated fields
and every relocated field refers to the same thing.  The first reload of a
file compares with the code running in the process (decoding what each field
points to); later reloads compare fingerprints recorded at the previous one.
Whatever cannot be verified counts as changed: redirecting is the safe default.
"""

from __future__ import annotations

import copy
import hashlib
import struct
from collections.abc import Callable, Mapping

from relive.arch.base import Need, Range, RelocationType
from relive.elf.constants import SHF_STRINGS
from relive.elf.objfile import ObjectFile, ObjSymbol, Relocation
from relive.errors import ReliveError
from relive.patch.binder import MemoryReader

#: Where a symbol of the new object is in the running process (None: new memory).
AddressOf = Callable[[ObjSymbol], int | None]

_MAX_CONTENT = 4096
#: x86-64 RIP-relative fields are mostly the last 4 bytes of the instruction;
#: the same assumption is made on both sides, so a wrong guess only makes a
#: function look changed, never unchanged.
_PC_BIAS = 4


def iter_function_relocations(obj: ObjectFile, symbol: ObjSymbol) -> list[Relocation]:
    """Relocations whose field lies inside the function's bytes."""
    end = symbol.value + symbol.size
    return [r for r in obj.relocations.get(symbol.shndx, ()) if symbol.value <= r.offset < end]


def function_bytes(obj: ObjectFile, symbol: ObjSymbol) -> bytes:
    """The function's bytes in the object."""
    return obj.sections[symbol.shndx].data[symbol.value : symbol.value + symbol.size]


def _masked(code: bytes, start: int, relocs: list[Relocation], widths: dict[int, int]) -> bytes:
    out = bytearray(code)
    for r in relocs:
        off = r.offset - start
        out[off : off + widths.get(r.type, 4)] = bytes(widths.get(r.type, 4))
    return bytes(out)


class FunctionComparer:
    """Compares functions of one object with the running code or a fingerprint."""

    def __init__(
        self,
        obj: ObjectFile,
        relocations: Mapping[int, RelocationType],
        address_of: AddressOf,
        read_memory: MemoryReader,
        module_got_slot: Callable[[str], int | None],
        find_plt_slot: Callable[[bytes, int], int | None],
        undo_got_relaxation: Callable[[bytes, bytearray, int], bool],
    ) -> None:
        self.obj = obj
        self.types = relocations
        self.widths = {k: v.width for k, v in relocations.items()}
        self.address_of = address_of
        self.read_memory = read_memory
        self.module_got_slot = module_got_slot
        self.find_plt_slot = find_plt_slot
        self.undo_got_relaxation = undo_got_relaxation

    def reading(self, read_memory: MemoryReader) -> FunctionComparer:
        """The same comparer, reading the old side with ``read_memory``."""
        other = copy.copy(self)
        other.read_memory = read_memory
        return other

    # -- fingerprints -------------------------------------------------------------

    def fingerprint(self, symbol: ObjSymbol) -> str:
        """A digest of the code and of what every relocated field refers to."""
        relocs = iter_function_relocations(self.obj, symbol)
        digest = hashlib.sha1(
            _masked(function_bytes(self.obj, symbol), symbol.value, relocs, self.widths)
        )
        for r in relocs:
            digest.update(f"|{r.offset - symbol.value}:{r.type}:{r.addend}:".encode())
            digest.update(self._identity(r.symbol, r.addend).encode())
        return digest.hexdigest()

    def _identity(self, symbol: ObjSymbol, addend: int, depth: int = 0) -> str:
        if not symbol.is_defined or symbol.is_common:
            return f"ext:{symbol.name}"
        section = self.obj.sections[symbol.shndx] if symbol.shndx < len(self.obj.sections) else None
        if section is None:
            return f"abs:{symbol.value}"
        if section.is_exec:
            return f"code:{section.name}:{symbol.name}"
        if self.address_of(symbol) is not None:
            return f"var:{section.name}:{symbol.name}"
        content = hashlib.sha1(section.data)
        for r in self.obj.relocations.get(symbol.shndx, ()):
            content.update(f"{r.offset}:{r.type}:{r.addend}:".encode())
            # What a table's entries point at counts too (e.g. strings of a CSWTCH).
            inner = "deep" if depth else self._identity(r.symbol, r.addend, depth + 1)
            content.update(inner.encode())
        return f"data:{content.hexdigest()}:{symbol.value}"

    # -- comparison with the running code ------------------------------------------

    def matches_running(self, symbol: ObjSymbol, old_address: int, old_size: int) -> bool:
        """Whether the running function at ``old_address`` is this one, field for field."""
        if old_size != symbol.size:
            return False
        new = function_bytes(self.obj, symbol)
        old = bytearray(self.read_memory(old_address, old_size))
        relocs = iter_function_relocations(self.obj, symbol)
        relaxed = {
            r.offset
            for r in relocs
            if self._needs(r, Need.GOT_SLOT)
            and self.undo_got_relaxation(new, old, r.offset - symbol.value)
        }
        if _masked(new, symbol.value, relocs, self.widths) != _masked(
            bytes(old), symbol.value, relocs, self.widths
        ):
            return False
        return all(
            self._same_target(
                r,
                bytes(old),
                old_address + r.offset - symbol.value,
                r.offset - symbol.value,
                direct=r.offset in relaxed,
            )
            for r in relocs
        )

    def matches_data(self, index: int, address: int) -> bool:
        """Whether data section ``index`` holds what ``address`` holds (as this
        comparer reads it), its relocated fields pointing at the same things."""
        section = self.obj.sections[index]
        new = bytes(section.size) if section.is_nobits else section.data
        try:
            old = self.read_memory(address, len(new))
        except ReliveError:
            return False
        relocs = list(self.obj.relocations.get(index, ()))
        if _masked(new, 0, relocs, self.widths) != _masked(old, 0, relocs, self.widths):
            return False
        return all(self._same_target(r, old, address + r.offset, r.offset, 1) for r in relocs)

    def _needs(self, reloc: Relocation, need: Need) -> bool:
        rtype = self.types.get(reloc.type)
        return rtype is not None and rtype.need is need

    def _same_target(
        self,
        reloc: Relocation,
        old: bytes,
        place: int,
        offset: int,
        depth: int = 0,
        direct: bool = False,
    ) -> bool:
        rtype = self.types.get(reloc.type)
        if rtype is None:
            return False
        width, rng, need = rtype.width, rtype.range, rtype.need
        if need not in (Need.NOTHING, Need.CALL, Need.GOT_SLOT) or width not in (4, 8):
            return False  # TLS and GOT-base forms: not worth decoding, assume changed
        raw = old[offset : offset + width]
        signed = rng is not Range.UNSIGNED
        value = int.from_bytes(raw, "little", signed=signed)
        pc_relative = rtype.pc_relative
        old_target = (place + value if pc_relative else value) - reloc.addend
        if need is Need.GOT_SLOT and not direct:
            # G + A - P was stored: the slot is at field + P - A and holds S.
            try:
                held = struct.unpack("<Q", self.read_memory(old_target, 8))[0]
            except Exception:
                return False
            return bool(held == self.address_of(reloc.symbol))
        expected = self.address_of(reloc.symbol)
        if expected is None:
            return self._same_content(reloc, old_target, pc_relative, depth)
        if old_target == expected:
            return True
        return need is Need.CALL and self._is_plt_entry_for(old_target, reloc.symbol.name)

    def _same_content(
        self, reloc: Relocation, old_target: int, pc_relative: bool, depth: int
    ) -> bool:
        """For new-memory data (strings, constants, jump tables): compare what both
        sides point at, and what the data's own relocated fields point at (a jump
        table's entries, a table of string pointers), one level deep."""
        symbol = reloc.symbol
        section = self.obj.sections[symbol.shndx]
        bias = _PC_BIAS if pc_relative else 0
        start = symbol.value + reloc.addend + bias
        if not 0 <= start <= len(section.data) or depth > 1:
            return False
        if section.flags & SHF_STRINGS:  # string literals: compare up to the NUL
            end = section.data.find(b"\0", start)
            length = (len(section.data) if end < 0 else end + 1) - start
        elif section.entsize:
            length = section.entsize
        else:
            length = len(section.data) - start
        length = min(length, _MAX_CONTENT)
        address = old_target + reloc.addend + bias
        try:
            old = self.read_memory(address, length)
        except Exception:
            return False
        inner = [
            r
            for r in self.obj.relocations.get(symbol.shndx, ())
            if start <= r.offset < start + length
        ]
        new = section.data[start : start + length]
        if _masked(new, start, inner, self.widths) != _masked(old, start, inner, self.widths):
            return False
        return all(
            self._same_target(r, old, address + r.offset - start, r.offset - start, depth + 1)
            for r in inner
        )

    def _is_plt_entry_for(self, address: int, name: str) -> bool:
        """Whether ``address`` is a PLT entry jumping through the module's GOT slot for ``name``."""
        slot = self.module_got_slot(name)
        if slot is None:
            return False
        try:
            code = self.read_memory(address, 16)
        except Exception:
            return False
        return self.find_plt_slot(code, address) == slot

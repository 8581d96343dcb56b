"""Which functions of a new object differ from the code they would replace.

A function is *unchanged* when its bytes are equal outside relocated fields
and every relocated field refers to the same thing.  The first reload of a
file compares with the code running in the process (decoding what each field
points to); later reloads compare fingerprints recorded at the previous one.
Whatever cannot be verified counts as changed: redirecting is the safe default.
"""

from __future__ import annotations

import bisect
import copy
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from relive import digests
from relive.arch.base import Instruction, Need, Range, RelocationType
from relive.elf.constants import SHF_STRINGS
from relive.elf.objfile import ObjectFile, ObjSymbol, Relocation, Section
from relive.errors import ReliveError
from relive.patch.binder import MemoryReader
from relive.patch.constants import is_constant_section

#: Where a symbol of the new object is in the running process (None: new memory).
AddressOf = Callable[[ObjSymbol], int | None]

_MAX_CONTENT = 4096
#: Bytes decoded past the last field whose instruction's end is needed (more than
#: any instruction's length; if not, the whole function is decoded).
_DECODE_BEYOND = 64


def function_relocations(obj: ObjectFile, symbol: ObjSymbol) -> list[Relocation]:
    """Relocations whose field lies inside the function's bytes."""
    relocs: list[Relocation] = obj.relocations.get(symbol.shndx, [])
    start, end = symbol.value, symbol.value + symbol.size
    if start == 0 and end == obj.sections[symbol.shndx].size:
        return relocs  # the function is its section (-ffunction-sections): all of them
    return [r for r in relocs if start <= r.offset < end]


def function_bytes(obj: ObjectFile, symbol: ObjSymbol) -> bytes:
    """The function's bytes in the object."""
    return obj.sections[symbol.shndx].content()[symbol.value : symbol.value + symbol.size]


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
        decode: Callable[[bytes, int], list[Instruction]],
    ) -> None:
        self.obj = obj
        self.types = relocations
        self.widths = {k: v.width for k, v in relocations.items()}
        self.address_of = address_of
        self.read_memory = read_memory
        self.module_got_slot = module_got_slot
        self.find_plt_slot = find_plt_slot
        self.undo_got_relaxation = undo_got_relaxation
        self.decode = decode
        #: The function being compared (its jump tables point into it).
        self._current: _Compared | None = None
        self._referred: dict[int, list[int]] | None = None
        self._identities: dict[tuple[int, str, int], str] = {}

    def reading(self, read_memory: MemoryReader) -> FunctionComparer:
        """The same comparer, reading the old side with ``read_memory``."""
        other = copy.copy(self)
        other.read_memory = read_memory
        return other

    # -- fingerprints -------------------------------------------------------------

    def fingerprint(self, symbol: ObjSymbol) -> str:
        """A digest of the code and of what every relocated field refers to."""
        relocs = function_relocations(self.obj, symbol)
        base = symbol.value
        digest = digests.sha1(_masked(function_bytes(self.obj, symbol), base, relocs, self.widths))
        identity = self._identity
        digest.update(
            "".join(
                f"|{r.offset - base}:{r.type}:{r.addend}:{identity(r.symbol)}" for r in relocs
            ).encode()
        )
        return digest.hexdigest()

    def _identity(self, symbol: ObjSymbol, depth: int = 0) -> str:
        """What a relocation to ``symbol`` refers to, by name or by content;
        remembered (a string table or a callee is referred to many times)."""
        key = (symbol.index, symbol.name, depth)
        try:
            return self._identities[key]
        except KeyError:
            found = self._identities[key] = self._find_identity(symbol, depth)
            return found

    def _find_identity(self, symbol: ObjSymbol, depth: int) -> str:
        if not symbol.is_defined or symbol.is_common:
            return f"ext:{symbol.name}"
        section = self.obj.sections[symbol.shndx] if symbol.shndx < len(self.obj.sections) else None
        if section is None:
            return f"abs:{symbol.value}"
        if section.is_exec:
            return f"code:{section.name}:{symbol.name}"
        if not is_constant_section(section) and self.address_of(symbol) is not None:
            return f"var:{section.name}:{symbol.name}"
        # New memory or a constant: what it holds (a constant bound to an equal
        # running copy has the same identity as a new copy of it).
        # A string is the one its label names, not the file's whole string
        # section: a string added elsewhere changes no other function's fingerprint.
        if _names_a_string(self.obj, symbol):
            return _string_identity(section, symbol.value)
        content = digests.sha1(section.data)
        for r in self.obj.relocations.get(symbol.shndx, ()):
            # What a table's entries point at counts too (e.g. strings of a CSWTCH);
            # a pointer to a string by its place in the string section is that string.
            target = r.symbol
            if _in_string_section(self.obj, target):
                inner = _string_identity(self.obj.sections[target.shndx], target.value + r.addend)
                content.update(f"{r.offset}:{r.type}:".encode())
            else:
                inner = "deep" if depth else self._identity(target, depth + 1)
                content.update(f"{r.offset}:{r.type}:{r.addend}:".encode())
            content.update(inner.encode())
        return f"data:{content.hexdigest()}:{symbol.value}"

    # -- comparison with the running code ------------------------------------------

    def matches_running(self, symbol: ObjSymbol, old_address: int, old_size: int) -> bool:
        """Whether the running function at ``old_address`` does what this one does.

        Both are decoded and compared instruction by instruction, NOPs (alignment
        padding) left out: a direct branch must go to the same place (a short and
        a near jump alike, inside the function by instruction index), every other
        instruction must have the same bytes outside relocated fields, and each
        relocated field must refer to the same thing.
        """
        new_code = function_bytes(self.obj, symbol)
        old_code = self.read_memory(old_address, old_size)
        if self._same_bytes_and_targets(symbol, new_code, old_code, old_address):
            return True
        new = _Listing(self.decode(new_code, symbol.value), new_code, symbol.value)
        old = _Listing(self.decode(old_code, old_address), old_code, old_address)
        if not (new.complete and old.complete) or len(new.real) != len(old.real):
            return False
        relocs = function_relocations(self.obj, symbol)
        starts = [i.address for i in new.real]
        inside: dict[int, list[Relocation]] = {}
        for r in relocs:
            at = bisect.bisect_right(starts, r.offset) - 1
            if at < 0 or r.offset >= new.real[at].end:
                return False  # a relocated field in padding: nothing to compare it with
            inside.setdefault(at, []).append(r)
        self._current = _Compared(symbol.shndx, new, old)
        try:
            return all(
                self._same_instruction(n, o, new, old, inside.get(k, []))
                for k, (n, o) in enumerate(zip(new.real, old.real, strict=True))
            )
        finally:
            self._current = None

    def _same_bytes_and_targets(
        self,
        symbol: ObjSymbol,
        new_code: bytes,
        old_code: bytes,
        old_address: int,
    ) -> bool:
        """The common case without decoding: equally long, the same bytes outside
        relocated fields, each field referring to the same thing.

        Most functions of a big file are unchanged, and decoding both sides costs
        about 1 ms a function (10 s for sqlite3.c).  Equal bytes mean equal
        instruction boundaries, so nothing the decoder would tell matters, except
        where a PC-relative field points relative to its instruction's end into
        new memory (a string, a constant table): then the new side alone is decoded
        for where those instructions end (equal bytes, equal ends), as the caller
        would, which decodes both sides.
        """
        if len(new_code) != len(old_code):
            return False
        relocs = function_relocations(self.obj, symbol)
        base = symbol.value
        widths = self.widths
        relaxed = self._undo_relaxations(new_code, old_code, base, relocs)
        if relaxed is not None:
            old_code = bytes(relaxed[0])
        if _masked(new_code, base, relocs, widths) != _masked(old_code, base, relocs, widths):
            return False
        direct = relaxed[1] if relaxed is not None else set()
        tails: dict[int, int] | None = None
        for r in relocs:
            place, offset = old_address + r.offset - base, r.offset - base
            if self._same_target(r, old_code, place, offset, direct=r.offset in direct):
                continue
            if not self._needs_tail(r):
                return False
            if tails is None:
                tails = self._instruction_tails(new_code, base, relocs)
            tail = tails.get(r.offset)
            if tail is None or not self._same_target(
                r, old_code, place, offset, tail=tail, direct=r.offset in direct
            ):
                return False
        return True

    def _instruction_tails(
        self, code: bytes, base: int, relocs: list[Relocation]
    ) -> dict[int, int]:
        """Where the instructions of the fields that need it end (see
        :func:`_instruction_tails`), decoding the new code only as far as the
        last of those fields (and a little beyond, for its instruction's end);
        the whole code if that was not far enough."""
        needed = [r.offset for r in relocs if self._needs_tail(r)]
        if not needed:
            return {}
        limit = max(needed) - base + _DECODE_BEYOND
        if limit < len(code):
            tails = _instruction_tails(self.decode(code[:limit], base), relocs)
            if all(offset in tails for offset in needed):
                return tails
        return _instruction_tails(self.decode(code, base), relocs)

    def _needs_tail(self, reloc: Relocation) -> bool:
        """A PC-relative field into new memory: what it refers to depends on where
        its instruction ends (not for a string its label names: that string, as
        :meth:`_same_target` compares it without the instruction)."""
        rtype = self.types.get(reloc.type)
        return (
            rtype is not None
            and rtype.pc_relative
            and self.address_of(reloc.symbol) is None
            and not _names_a_string(self.obj, reloc.symbol)
        )

    def _undo_relaxations(
        self, new_code: bytes, old_code: bytes, base: int, relocs: list[Relocation]
    ) -> tuple[bytearray, set[int]] | None:
        """The running code with the GOT loads the linker relaxed into direct
        references given their GOT form back (as the decoding comparison does per
        instruction: the opcode bytes just before the field), and the offsets of
        those fields; None when there are none (a shared library's code has many:
        without this its functions were all decoded)."""
        old: bytearray | None = None
        direct: set[int] = set()
        for r in relocs:
            if not self._needs(r, Need.GOT_SLOT):
                continue
            if old is None:
                old = bytearray(old_code)
            if self.undo_got_relaxation(new_code, old, r.offset - base):
                direct.add(r.offset)
        return None if not direct or old is None else (old, direct)

    def _same_instruction(
        self,
        n: Instruction,
        o: Instruction,
        new: _Listing,
        old: _Listing,
        relocs: list[Relocation],
    ) -> bool:
        if n.branch_target is not None and o.branch_target is not None:
            if n.operation != o.operation or len(relocs) > 1:
                return False
            if relocs:
                return self._same_branch_target(relocs[0], n, o.branch_target)
            here = new.index_of(n.branch_target)
            return here is not None and here == old.index_of(o.branch_target)
        # Anything else (a GOT call the linker relaxed into a direct one included)
        # is compared by its bytes and by what its relocated fields refer to.
        if n.size != o.size:
            return False
        new_bytes = new.bytes_of(n)
        old_bytes = bytearray(old.bytes_of(o))
        relaxed = {
            r.offset
            for r in relocs
            if self._needs(r, Need.GOT_SLOT)
            and self.undo_got_relaxation(new_bytes, old_bytes, r.offset - n.address)
        }
        if _masked(new_bytes, n.address, relocs, self.widths) != _masked(
            bytes(old_bytes), n.address, relocs, self.widths
        ):
            return False
        return all(
            self._same_target(
                r,
                bytes(old_bytes),
                o.address + r.offset - n.address,
                r.offset - n.address,
                tail=n.end - r.offset,
                direct=r.offset in relaxed,
            )
            for r in relocs
        )

    def matches_data(self, index: int, address: int) -> bool:
        """Whether data section ``index`` holds what ``address`` holds (as this
        comparer reads it), its relocated fields pointing at the same things."""
        section = self.obj.sections[index]
        new = bytes(section.size) if section.is_nobits else section.content()
        try:
            old = self.read_memory(address, len(new))
        except ReliveError:
            return False
        relocs = list(self.obj.relocations.get(index, ()))
        if _masked(new, 0, relocs, self.widths) != _masked(old, 0, relocs, self.widths):
            return False
        return all(self._same_target(r, old, address + r.offset, r.offset, 1) for r in relocs)

    def _same_branch_target(self, reloc: Relocation, n: Instruction, old_target: int) -> bool:
        """A relocated direct branch: the old one goes where the new one's symbol is."""
        rtype = self.types.get(reloc.type)
        if rtype is None or not rtype.pc_relative or rtype.need not in (Need.NOTHING, Need.CALL):
            return False
        expected = self.address_of(reloc.symbol)
        if expected is None:
            return False
        if old_target == expected + reloc.addend + n.end - reloc.offset:
            return True
        return self._is_plt_entry_for(old_target, reloc.symbol.name)

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
        tail: int | None = None,
        table: tuple[int, int] | None = None,
    ) -> bool:
        """Whether the old field at ``place`` refers to what ``reloc`` refers to.

        ``tail`` is the distance from the field to the end of its instruction,
        which a PC-relative reference is relative to (None: unknown, in data).
        ``table`` is, for a field inside data, where that data was referred to
        (new section offset, old address): a jump table's entries are relative
        to it.
        """
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
        current = self._current
        if table is not None and current is not None and reloc.symbol.shndx == current.shndx:
            return self._same_code_position(reloc, value, pc_relative, table)
        old_target = (place + value if pc_relative else value) - reloc.addend
        if need is Need.GOT_SLOT and not direct:
            # G + A - P was stored: the slot is at field + P - A and holds S.
            try:
                held = struct.unpack("<Q", self.read_memory(old_target, 8))[0]
            except ReliveError:
                return False
            expected = self.address_of(reloc.symbol)
            if expected is None and reloc.symbol.is_defined and not reloc.symbol.is_common:
                # New-memory data the program reached through its GOT: compare it.
                return self._same_content(reloc.symbol, reloc.symbol.value, held, depth, True)
            return bool(held == expected)
        expected = self.address_of(reloc.symbol)
        if expected is None:
            if (
                pc_relative
                and tail is None
                and not (depth == 0 and _names_a_string(self.obj, reloc.symbol))
            ):
                return False  # relative to an unknown base: cannot tell what it means
            shift = reloc.addend + (tail or 0)
            referred = reloc.symbol.value + shift
            return self._same_content(
                reloc.symbol, referred, old_target + shift, depth, exact=depth > 0
            )
        if old_target == expected:
            return True
        return need is Need.CALL and self._is_plt_entry_for(old_target, reloc.symbol.name)

    def _next_referred(self, shndx: int, start: int) -> int | None:
        """The first offset past ``start`` in section ``shndx`` that a relocation of
        the loaded sections (code and data) points at: where the next table begins.

        Built once, sorted: a big unit's tables are looked up thousands of times.
        Debug sections' relocations are left out (a hundred thousand in sqlite3.c,
        decoded for nothing): with -fdata-sections, which relive compiles with,
        what they point at starts a section of its own."""
        if self._referred is None:
            found: dict[int, list[int]] = {}
            sections = self.obj.sections
            for index in self.obj.relocations:
                if index >= len(sections) or not sections[index].is_alloc:
                    continue
                for r in self.obj.relocations[index]:
                    rtype = self.types.get(r.type)
                    bias = rtype.width if rtype is not None and rtype.pc_relative else 0
                    found.setdefault(r.symbol.shndx, []).append(r.symbol.value + r.addend + bias)
            for offsets in found.values():
                offsets.sort()
            self._referred = found
        offsets = self._referred.get(shndx, [])
        at = bisect.bisect_right(offsets, start)
        return offsets[at] if at < len(offsets) else None

    def _same_code_position(
        self,
        reloc: Relocation,
        value: int,
        pc_relative: bool,
        table: tuple[int, int],
    ) -> bool:
        """A table entry pointing into the function being compared (a jump table):
        both must reach the same instruction, whatever the encodings before it.

        PC-relative entries (``.long .L5-.L4``) are relative to the table's start,
        the point the code referred to; absolute ones hold the address.
        """
        current = self._current
        assert current is not None
        new_base, old_base = table
        field = reloc.offset
        if pc_relative:
            new_offset = reloc.symbol.value + reloc.addend - (field - new_base)
            old_address = old_base + value
        else:
            new_offset = reloc.symbol.value + reloc.addend
            old_address = value
        here = current.new.index_of(new_offset)
        return here is not None and here == current.old.index_of(old_address)

    def _same_content(
        self, symbol: ObjSymbol, referred: int, old_referred: int, depth: int, exact: bool = False
    ) -> bool:
        """For new-memory data (strings, constants, jump tables): compare what both
        sides point at (``referred`` in the new section, ``old_referred`` in the
        process), within the extent of the object referred to, and what the
        data's own relocated fields point at (a jump table's entries, a table of
        string pointers), one level deep.  ``exact``: the offset is the object's
        own (a data relocation), not an instruction's view of it."""
        section = self.obj.sections[symbol.shndx]
        extent = _extent(section, symbol, referred, exact)
        if extent is None or depth > 1:
            return False
        start, end = extent
        if symbol.is_section and not section.entsize:
            # Several tables in one section: this one ends where the next one
            # another reference points at begins.
            following = self._next_referred(symbol.shndx, start)
            if following is not None:
                end = min(end, following)
        address = old_referred + start - referred
        try:
            old = self.read_memory(address, end - start)
        except ReliveError:
            return False
        inner = [r for r in self.obj.relocations.get(symbol.shndx, ()) if start <= r.offset < end]
        new = section.content()[start:end]
        if _masked(new, start, inner, self.widths) != _masked(old, start, inner, self.widths):
            return False
        return all(
            self._same_target(
                r,
                old,
                address + r.offset - start,
                r.offset - start,
                depth + 1,
                table=(referred, old_referred),
            )
            for r in inner
        )

    def _is_plt_entry_for(self, address: int, name: str) -> bool:
        """Whether ``address`` is a PLT entry jumping through the module's GOT slot for ``name``."""
        slot = self.module_got_slot(name)
        if slot is None:
            return False
        try:
            code = self.read_memory(address, 16)
        except ReliveError:
            return False
        return self.find_plt_slot(code, address) == slot


@dataclass(frozen=True)
class _Compared:
    """The function ``matches_running`` is comparing: its section and both listings."""

    shndx: int
    new: _Listing
    old: _Listing


def _instruction_tails(instructions: list[Instruction], relocs: list[Relocation]) -> dict[int, int]:
    """Field offset -> bytes from the field to the end of its instruction, for the
    fields in instructions the decoding comparison compares by bytes and targets:
    not padding (nothing to compare) and not direct branches (compared by where
    they go).  Others are left out (their comparison needs both sides decoded), as
    are fields the decoded instructions do not reach.  Equal bytes make equal
    instructions: what follows the last field needed does not change its end."""
    starts = [i.address for i in instructions]
    tails: dict[int, int] = {}
    for r in relocs:
        at = bisect.bisect_right(starts, r.offset) - 1
        if at < 0:
            continue
        found = instructions[at]
        if r.offset < found.end and not found.is_padding and found.branch_target is None:
            tails[r.offset] = found.end - r.offset
    return tails


class _Listing:
    """One side's decoded function: its instructions, and which are not padding."""

    def __init__(self, instructions: list[Instruction], code: bytes, base: int) -> None:
        self.code = code
        self.base = base
        self.complete = sum(i.size for i in instructions) == len(code)
        self.real = [i for i in instructions if not i.is_padding]
        #: Each instruction boundary (padding included) -> index of the next real one.
        self._index: dict[int, int] = {}
        pending: list[int] = []
        count = 0
        for i in instructions:
            pending.append(i.address)
            if not i.is_padding:
                for address in pending:
                    self._index[address] = count
                pending.clear()
                count += 1
        for address in pending:
            self._index[address] = count
        self._index[base + len(code)] = count

    def index_of(self, address: int) -> int | None:
        """Which real instruction a branch to ``address`` reaches (None: not a boundary)."""
        return self._index.get(address)

    def bytes_of(self, instruction: Instruction) -> bytes:
        """The instruction's bytes."""
        at = instruction.address - self.base
        return self.code[at : at + instruction.size]


def _in_string_section(obj: ObjectFile, symbol: ObjSymbol) -> bool:
    """Whether ``symbol`` (a label or the section's own symbol) is in a string section."""
    if not symbol.is_defined or not 0 < symbol.shndx < len(obj.sections):
        return False
    return bool(obj.sections[symbol.shndx].flags & SHF_STRINGS)


def _string_identity(section: Section, offset: int) -> str:
    """The string at ``offset`` of a string section, to its terminator, as an identity."""
    data = section.content()
    end = _find_terminator(data, offset, max(section.entsize, 1)) if offset >= 0 else 0
    return f"str:{digests.sha1(data[max(offset, 0) : end]).hexdigest()}"


def _names_a_string(obj: ObjectFile, symbol: ObjSymbol) -> bool:
    """A label of a string (``.LC0``): what a reference to it is about does not
    depend on where its instruction ends (see :func:`_extent`)."""
    if symbol.is_section or not 0 < symbol.shndx < len(obj.sections):
        return False
    return bool(obj.sections[symbol.shndx].flags & SHF_STRINGS)


def _extent(
    section: Section, symbol: ObjSymbol, referred: int, exact: bool = False
) -> tuple[int, int] | None:
    """The bytes of ``section`` that a reference to offset ``referred`` is about.

    A string is compared to its terminator: the one its label names (``lea
    .LC47-1(%rip)`` is about .LC47), or, through a section symbol, the one
    the offset falls in (a terminator there: the string that follows); a constant of
    a mergeable section (``.rodata.cst16``) is its whole entry; a named object
    is its symbol's extent; anything else runs to the end of its section.
    ``exact``: ``referred`` is the string's own offset (a pointer held in data).
    """
    data = section.content()
    size = len(data)
    if section.flags & SHF_STRINGS:
        step = max(section.entsize, 1)
        if exact:
            start = referred  # a pointer in data: the string it holds, even ""
        elif not symbol.is_section:
            start = symbol.value  # the string the label names, whatever the addend
        elif referred < 0:
            start = 0
        elif data[referred : referred + step] == bytes(step):
            # A terminator: ``s - 1`` of the string after it (an empty string
            # is then compared with its neighbour: at worst a needless redirect).
            start = referred + step
        else:
            start = referred
        if start >= size:
            return None
        end = _find_terminator(data, start, step)
        return start, min(end, start + _MAX_CONTENT)
    if section.entsize:
        if not 0 <= referred < size:
            return None
        start = referred - referred % section.entsize
        return start, min(start + section.entsize, size)
    if (
        not symbol.is_section
        and symbol.size
        and symbol.value <= referred < symbol.value + symbol.size
    ):
        return symbol.value, symbol.value + min(symbol.size, _MAX_CONTENT)
    start = max(referred, 0)
    if start > size:
        return None
    return start, min(size, start + _MAX_CONTENT)


def _find_terminator(data: bytes, start: int, step: int) -> int:
    """The end (past the terminator) of the string starting at ``start``."""
    if step == 1:
        end = data.find(0, start)
        return len(data) if end < 0 else end + 1
    at = start
    nul = bytes(step)
    while at < len(data):
        if data[at : at + step] == nul:
            return at + step
        at += step
    return len(data)

"""One ELF symbol table (``.symtab`` or ``.dynsym``), queried without decoding it.

A reload asks a handful of questions (where is ``compute``, what follows it), so
those are answered by :meth:`bytes.find` over the raw string and symbol tables,
without decoding 100,000 names (about 100 ms); only queries over all symbols, or
many lookups, decode whole columns.  :class:`relive.elf.image.ElfImage` holds one
:class:`SymbolTable` per table.
"""

from __future__ import annotations

import array
import bisect
import os
import struct
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from functools import cached_property
from itertools import compress
from typing import NamedTuple

from relive.elf.constants import (
    SHN_LORESERVE,
    SHN_UNDEF,
    STB_GLOBAL,
    STB_GNU_UNIQUE,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_GNU_IFUNC,
    STT_NOTYPE,
    STT_OBJECT,
)
from relive.elf.objfile import SYM_FORMAT, SYM_SIZE, read_cstr, resolve_xindex

__all__ = ["VERSYM_HIDDEN", "ImageSymbol", "StringTable", "SymbolTable"]

#: The ``.gnu.version`` bit that marks a non-default (hidden) symbol version.
VERSYM_HIDDEN = 0x8000


class ImageSymbol(NamedTuple):
    """One symbol of a linked image; ``value`` is a link-time vaddr (TLS: an offset).

    A named tuple: lookups in a big unit's thousands of statics build one per
    answer, and a tuple is built several times faster than a frozen dataclass.
    """

    name: str
    value: int
    size: int
    type: int
    bind: int
    shndx: int
    #: The ``STT_FILE`` group a local symbol belongs to; None for globals.
    file: str | None

    @property
    def is_defined(self) -> bool:
        """Defined in this image rather than imported."""
        return self.shndx != SHN_UNDEF

    @property
    def is_function(self) -> bool:
        """A function, including GNU indirect functions."""
        return self.type in (STT_FUNC, STT_GNU_IFUNC)

    @property
    def is_local(self) -> bool:
        """Bound locally (``static``)."""
        return self.bind == STB_LOCAL


def _strip_version(name: str) -> tuple[str, bool]:
    """``memcpy@GLIBC_2.2.5`` -> ("memcpy", True): the base name and whether the
    name carries a non-default version (one ``@``; ``@@`` marks the default)."""
    base, at, version = name.partition("@")
    return base, bool(at) and not version.startswith("@")


def _column(data: bytes, code: str, start: int, step: int) -> list[int]:
    """Every ``step``-th little-endian item of type ``code`` from ``start``: one field
    of all symbols at C speed, instead of a Python tuple per symbol."""
    items = array.array(code, data)
    if sys.byteorder != "little":
        items.byteswap()
    return items[start::step].tolist()


def _byte_map(accept: Callable[[int], bool]) -> bytes:
    """A :meth:`bytes.translate` table mapping each byte value to 1 or 0."""
    return bytes(1 if accept(i) else 0 for i in range(256))


def _and_masks(*masks: bytes) -> bytes:
    """Byte-wise AND of equally long 0/1 masks, at C speed (through big integers)."""
    value = int.from_bytes(masks[0], "little")
    for mask in masks[1:]:
        value &= int.from_bytes(mask, "little")
    return value.to_bytes(len(masks[0]), "little")


#: st_info whose type may start a function's neighbour (see find_next_symbol_address).
_STARTS_KIND = _byte_map(lambda i: i & 0xF in (STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_GNU_IFUNC))
_NONZERO = _byte_map(lambda i: i != 0)
_NOT_FF = _byte_map(lambda i: i != 0xFF)

#: Up to this many names, a lookup searches the raw tables instead of decoding them all.
_DIRECT_LOOKUPS = 16
#: A table this small is decoded whole at once (a few milliseconds at most).
_SMALL_TABLE = 4096
#: More candidate string positions than this: decode the whole table instead.
_MAX_CANDIDATES = 64
#: Up to this many successor queries search address blocks instead of sorting them all.
_DIRECT_NEXT_QUERIES = 8


class StringTable:
    """A string table, decoded (once, on first use) when it is plain ASCII, the usual case."""

    def __init__(self, table: bytes) -> None:
        self.table = table

    @cached_property
    def text(self) -> str | None:
        """The whole table as text, or None if it is not ASCII."""
        return self.table.decode("ascii") if self.table.isascii() else None

    def get(self, offset: int) -> str:
        """The string at ``offset``."""
        # Slice the decoded text if many() decoded it; else decode just this string.
        text: str | None = self.__dict__.get("text")
        if text is None:
            return read_cstr(self.table, offset)
        end = text.find("\0", offset)
        return text[offset:] if end < 0 else text[offset:end]

    def many(self, offsets: list[int]) -> list[str]:
        """The strings at ``offsets``, in order."""
        text = self.text
        if text is None or "\0" not in text[-1:]:
            return [self.get(o) for o in offsets]
        find = text.index
        return [text[o : find("\0", o)] for o in offsets]

    def find_offsets(self, name: bytes, limit: int) -> list[int] | None:
        """Every offset where ``name`` followed by NUL or ``@`` starts (tails of longer
        strings included: a linker may share them), in one sweep of the table; None
        if ``name`` occurs more than ``limit`` times."""
        found: list[int] = []
        table = self.table
        size = len(name)
        at = table.find(name)
        for _ in range(limit):
            if at < 0:
                return found
            if table[at + size : at + size + 1] in (b"\0", b"@"):
                found.append(at)
            at = table.find(name, at + 1)
        return None if at >= 0 else found


class SymbolTable:
    """One symbol table (``.symtab`` or ``.dynsym``), kept as raw bytes.

    Nothing is decoded up front: a symbol is unpacked when a query returns it, a
    few name lookups search the raw string and symbol tables with :meth:`bytes.find`,
    and whole columns (or every global name) are decoded only for queries over all
    symbols, or after :data:`_DIRECT_LOOKUPS` lookups.
    """

    def __init__(
        self, data: bytes, strtab: bytes, first_global: int, shndx_table: bytes, versym: bytes
    ) -> None:
        data = data[: len(data) - len(data) % SYM_SIZE]
        self.data = data
        self.count = len(data) // SYM_SIZE
        # Elf64_Sym: st_name u32 @0, st_info u8 @4, st_other u8 @5, st_shndx u16 @6,
        # st_value u64 @8, st_size u64 @16.
        self.info = data[4::SYM_SIZE]
        self.shndx_table = shndx_table
        self.strings = StringTable(strtab)
        # sh_info: index of the first non-local symbol (entry 0 is always local).
        self.first_global = min(max(first_global, 1), self.count)
        self.versym = versym
        # STT_FILE groups: the locals after an STT_FILE symbol belong to that file.
        # A local STT_FILE has st_info == 4, so bytes.find() walks straight to them.
        self.file_starts: list[int] = []
        index = self.info.find(STT_FILE, 0, self.first_global)
        while index >= 0:
            self.file_starts.append(index)
            index = self.info.find(STT_FILE, index + 1, self.first_global)
        self.file_names = [self.strings.get(self._st_name(i)) for i in self.file_starts]
        self._globals: dict[str, int] | None = None
        self._lookups = 0
        self._found: dict[str, int | None] = {}
        self._starts: list[int] | None = None
        self._next_queries = 0
        self._group_indexes: dict[int, dict[str, int | list[int]]] = {}
        self._groups_of_file: dict[str, list[tuple[str, int, int]]] = {}

    # -- columns, decoded on first use -----------------------------------------------

    @cached_property
    def st_name(self) -> list[int]:
        """``st_name`` of every symbol."""
        return _column(self.data, "I", 0, SYM_SIZE // 4)

    @cached_property
    def shndx(self) -> list[int]:
        """The section index of every symbol (``SHN_XINDEX`` resolved)."""
        column = _column(self.data, "H", 3, SYM_SIZE // 2)
        if self.shndx_table:
            column = [resolve_xindex(self.shndx_table, x, k) for k, x in enumerate(column)]
        return column

    @cached_property
    def value(self) -> list[int]:
        """``st_value`` of every symbol."""
        return _column(self.data, "Q", 1, SYM_SIZE // 8)

    @cached_property
    def _st_name_bytes(self) -> bytes:
        """``st_name`` of every symbol as the file has it (u32, little-endian), packed:
        1/6 of the table, for :meth:`bytes.find`.  A strided view: one copy."""
        return memoryview(self.data).cast("I")[:: SYM_SIZE // 4].tobytes()

    @cached_property
    def _values_le(self) -> bytes:
        """``st_value`` of every symbol as the file has it (u64, little-endian), packed:
        the symbols of an aligned address block share their high bytes."""
        return memoryview(self.data).cast("Q")[1 :: SYM_SIZE // 8].tobytes()

    def _st_name(self, index: int) -> int:
        (offset,) = struct.unpack_from("<I", self.data, index * SYM_SIZE)
        return int(offset)

    def _defined_mask(self, kinds: bytes) -> bytes:
        """1 per symbol of an accepted kind in a real section (not UNDEF, ABS, COMMON...)."""
        if self.shndx_table:  # the rare SHN_XINDEX table: go by the resolved column
            return bytes(
                1 if kinds[info] and SHN_UNDEF < shndx < SHN_LORESERVE else 0
                for info, shndx in zip(self.info, self.shndx, strict=True)
            )
        low, high = self.data[6::SYM_SIZE], self.data[7::SYM_SIZE]
        either = (int.from_bytes(low, "little") | int.from_bytes(high, "little")).to_bytes(
            self.count, "little"
        )
        return _and_masks(
            self.info.translate(kinds), either.translate(_NONZERO), high.translate(_NOT_FF)
        )

    # -- single symbols -----------------------------------------------------------------

    def name(self, index: int) -> str:
        """The name of the symbol at ``index``."""
        return self.strings.get(self._st_name(index))

    def symbol(self, index: int) -> ImageSymbol:
        """The entry at ``index`` as an :class:`ImageSymbol`."""
        st_name, info, _, shndx, value, size = struct.unpack_from(
            SYM_FORMAT, self.data, index * SYM_SIZE
        )
        if self.shndx_table:
            shndx = resolve_xindex(self.shndx_table, shndx, index)
        bind = info >> 4
        file = None
        if bind == STB_LOCAL:
            group = bisect.bisect_right(self.file_starts, index) - 1
            file = self.file_names[group] if group >= 0 else None
        return ImageSymbol(self.strings.get(st_name), value, size, info & 0xF, bind, shndx, file)

    def is_hidden_version(self, index: int) -> bool:
        """The ``.gnu.version`` entry marks this dynsym entry as a non-default version."""
        if len(self.versym) < 2 * index + 2:
            return False
        (version,) = struct.unpack_from("<H", self.versym, 2 * index)
        return bool(version & VERSYM_HIDDEN)

    # -- globals by name ------------------------------------------------------------------

    def find_global(self, name: str) -> int | None:
        """The index of the preferred defined non-local symbol ``name`` (version ignored)."""
        if self._globals is None and self._lookups < _DIRECT_LOOKUPS:
            if name in self._found:
                return self._found[name]
            self._lookups += 1
            searched, index = self._search_global(name)
            if searched:
                self._found[name] = index
                return index
        return self.globals().get(name)

    def _search_global(self, name: str) -> tuple[bool, int | None]:
        """:meth:`find_global` without decoding the table: (True, answer), or
        (False, None) when that does not pay (a small table, too many candidates)
        or cannot be done exactly (versioned dynsym, a non-ASCII name).  The table
        may hold non-ASCII names: bytes are compared, and the names returned are
        decoded as :meth:`globals` decodes them."""
        unsearchable = (False, None)
        if (
            self.count < _SMALL_TABLE
            or self.versym
            or not name
            or "@" in name
            or not name.isascii()
        ):
            return unsearchable
        offsets = self.strings.find_offsets(name.encode(), _MAX_CANDIDATES)
        if offsets is None:
            return unsearchable
        entries: list[tuple[int, str]] = []  # (index, full name) of defined globals
        for offset in offsets:
            for index in self._iter_indices_named(offset):
                if self.shndx_table:
                    shndx = self.symbol(index).shndx
                else:
                    (shndx,) = struct.unpack_from("<H", self.data, index * SYM_SIZE + 6)
                if shndx != SHN_UNDEF:
                    entries.append((index, self.strings.get(offset)))
                if len(entries) > _MAX_CANDIDATES:
                    return unsearchable
        if not entries:
            return True, None
        entries.sort()
        if len(entries) == 1 and entries[0][1] == name:
            return True, entries[0][0]  # unique and unversioned: whatever its binding
        ranked = self._ranked([i for i, _ in entries], [n for _, n in entries])
        return True, ranked.get(name)

    def _iter_indices_named(self, offset: int) -> Iterator[int]:
        """Indices (from ``first_global``) of the symbols whose ``st_name`` is ``offset``."""
        key = offset.to_bytes(4, "little")
        column = self._st_name_bytes
        at = column.find(key, self.first_global * 4)
        while at >= 0:
            if at % 4 == 0:
                yield at // 4
                at = column.find(key, at + 4)
            else:  # straddles two entries
                at = column.find(key, at + 1)

    def globals(self) -> dict[str, int]:
        """Defined non-local symbols by unversioned name, the preferred entry for each."""
        if self._globals is None:
            # The ELF rules put every non-local symbol at or after sh_info.
            first = self.first_global
            defined = list(compress(range(first, self.count), self.shndx[first:]))
            names = self.strings.many([self.st_name[i] for i in defined])
            if self.versym:
                # .dynsym: small, and ranked by .gnu.version.
                self._globals = self._ranked(defined, names)
            else:
                self._globals = self._plain_then_ranked(defined, names)
        return self._globals

    def _plain_then_ranked(self, defined: list[int], names: list[str]) -> dict[str, int]:
        # Most names are unique and unversioned: build that dict at C speed
        # (reversed, so the first of equal names wins), then rank only the few
        # names that are duplicated or carry a version (copy-relocated
        # "stdout@GLIBC_2.2.5" in executables, "memcpy@@GLIBC_2.14" in libraries).
        plain = dict(zip(reversed(names), reversed(defined), strict=True))
        versioned = [n for n in names if "@" in n]
        if len(plain) == len(defined) and not versioned:
            return plain
        special = {n.partition("@")[0] for n in versioned}
        if len(plain) != len(defined):
            special.update(n for n, count in Counter(names).items() if count > 1)
        special.update(versioned)
        picked = [k for k, n in enumerate(names) if n in special]
        for k in picked:
            plain.pop(names[k], None)
        plain.update(self._ranked([defined[k] for k in picked], [names[k] for k in picked]))
        return plain

    def _ranked(self, indices: list[int], names: list[str]) -> dict[str, int]:
        best: dict[str, tuple[tuple[bool, bool], int]] = {}
        for index, full_name in zip(indices, names, strict=True):
            bind = self.info[index] >> 4
            if bind not in (STB_GLOBAL, STB_WEAK, STB_GNU_UNIQUE):
                continue
            name, nondefault = _strip_version(full_name)
            nondefault = nondefault or self.is_hidden_version(index)
            # Default version first, then GLOBAL over WEAK; else the first seen.
            rank = (nondefault, bind == STB_WEAK)
            seen = best.get(name)
            if seen is None or rank < seen[0]:
                best[name] = (rank, index)
        return {name: index for name, (_, index) in best.items()}

    # -- queries over all symbols -----------------------------------------------------------

    def next_start(self, vaddr: int, limit: int) -> int | None:
        """The smallest address above ``vaddr`` and below ``limit`` where a defined
        function, object or untyped symbol starts; None if there is none.

        The first few queries search the symbols of the address blocks from
        ``vaddr`` upwards (see :meth:`_search_next`); after that, or when the gap is
        wide, every start is sorted once.
        """
        if self._starts is None and self._next_queries < _DIRECT_NEXT_QUERIES:
            self._next_queries += 1
            searched, found = self._search_next(vaddr, limit)
            if searched:
                return found
        starts = self._sorted_starts()
        k = bisect.bisect_right(starts, vaddr)
        return starts[k] if k < len(starts) and starts[k] < limit else None

    def _search_next(self, vaddr: int, limit: int) -> tuple[bool, int | None]:
        """:meth:`next_start` over aligned address blocks, nearest first: the symbols
        of a block share the leading bytes of their big-endian value, which one
        :meth:`bytes.find` sweep per block finds.  Blocks of 256 bytes first (most
        functions end within a few), then of 64 KiB; (False, None) past that."""
        block = vaddr >> 8
        for bits, count in ((8, 4), (16, 4)):
            if bits == 16:
                block = block >> 8  # the 64 KiB block holding the next 256-byte one
            for _ in range(count):
                start = block << bits
                if start >= limit:
                    return True, None
                found = self._first_start_in_block(block, bits, vaddr)
                if found is not None:
                    return True, found if found < limit else None
                block += 1
        return False, None

    def _first_start_in_block(self, block: int, bits: int, above: int) -> int | None:
        # The values in the block are those whose bytes from bits/8 up equal the
        # block number's: look for those bytes at that offset within an 8-byte value.
        skip = bits // 8
        high = block.to_bytes(8 - skip, "little")
        column = self._values_le
        best: int | None = None
        at = column.find(high, skip)
        while at >= 0:
            start = at - skip
            if start % 8:  # straddles two values
                at = column.find(high, at + 1)
                continue
            value = int.from_bytes(column[start : start + 8], "little")
            if above < value and (best is None or value < best) and self._is_start(start // 8):
                best = value
            at = column.find(high, at + 8)
        return best

    def _is_start(self, index: int) -> bool:
        if not _STARTS_KIND[self.info[index]]:
            return False
        shndx = self.symbol(index).shndx
        return SHN_UNDEF < shndx < SHN_LORESERVE

    def _sorted_starts(self) -> list[int]:
        if self._starts is None:
            mask = self._defined_mask(_STARTS_KIND)
            self._starts = sorted(set(compress(self.value, mask)))
        return self._starts

    def group_locals_named(self, first: int, end: int, name: str) -> list[int]:
        """Indices in ``[first, end)`` (one STT_FILE group) of the symbols called ``name``.

        The group's names are decoded once into an index, so a reload's thousands of
        lookups in one big source file's group cost one dict access each instead of a
        walk over the group (sqlite3.c: 16,305 lookups over ~2,000 locals).
        """
        index = self._group_indexes.get(first)
        if index is None:
            # A name's one symbol as an int (the usual case), a list only for a name
            # several locals share: no list per name (sqlite3.c: thousands of names).
            index = {}
            names = self.strings.many(self.st_name[first:end])
            for k, named in enumerate(names, first):
                seen = index.setdefault(named, k)
                if isinstance(seen, list):
                    seen.append(k)
                elif seen != k:
                    index[named] = [seen, k]
            self._group_indexes[first] = index
        found = index.get(name)
        if found is None:
            return []
        return [found] if isinstance(found, int) else found

    def group_ranges(self, file: str) -> Iterator[tuple[str, int, int]]:
        """(name, first, end) index ranges of the STT_FILE groups that match ``file``."""
        found = self._groups_of_file.get(file)
        if found is None:
            base = os.path.basename(file)
            bounds = [*self.file_starts, self.first_global]
            found = [
                (name, bounds[k] + 1, bounds[k + 1])
                for k, name in enumerate(self.file_names)
                if name == file or os.path.basename(name) == base
            ]
            self._groups_of_file[file] = found
        return iter(found)

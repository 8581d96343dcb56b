"""A linked executable or shared library on disk, as the symbol resolver needs it.

Headers are decoded once at :meth:`ElfImage.open`; symbol tables are copied out
then as raw bytes.  A reload asks a handful of questions (where is ``compute``,
what follows it), so those are answered by :meth:`bytes.find` over the raw string
and symbol tables, without decoding 100,000 names (about 100 ms); only queries
over all symbols, or many lookups, decode whole columns.  Parsed images are cached
by file identity, so later reloads in the same process pay nothing.

Addresses are link-time virtual addresses: callers add the load bias.
"""

from __future__ import annotations

import array
import bisect
import mmap
import os
import stat
import struct
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import compress
from typing import ClassVar, Literal, NamedTuple

from relive.elf.objfile import (
    EM_AARCH64,
    EM_X86_64,
    ET_CORE,
    ET_DYN,
    ET_EXEC,
    ET_REL,
    SHF_ALLOC,
    SHN_ABS,
    SHN_LORESERVE,
    SHN_UNDEF,
    SHT_DYNSYM,
    SHT_GNU_HASH,
    SHT_GNU_VERSYM,
    SHT_NOBITS,
    SHT_RELA,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    STB_GLOBAL,
    STB_GNU_UNIQUE,
    STB_LOCAL,
    STB_WEAK,
    STT_FILE,
    STT_FUNC,
    STT_GNU_IFUNC,
    STT_NOTYPE,
    STT_OBJECT,
    SYM_FORMAT,
    SYM_SIZE,
    SectionHeader,
    parse_elf_header,
    parse_section_headers,
    read_cstr,
    resolve_xindex,
    slice_checked,
)
from relive.errors import BadObject

PT_LOAD = 1
PT_DYNAMIC = 2
PT_TLS = 7

DT_NULL = 0
DT_STRTAB = 5
DT_STRSZ = 10
DT_SONAME = 14

R_X86_64_GLOB_DAT = 6
R_X86_64_JUMP_SLOT = 7
R_X86_64_RELATIVE = 8
R_X86_64_DTPMOD64 = 16
R_X86_64_DTPOFF64 = 17
R_X86_64_TPOFF64 = 18
R_X86_64_IRELATIVE = 37

#: Which relocation numbers mean what, per machine: the lookups below are
#: written in these terms so they work for any architecture listed here.
_DYN_RELOC_KINDS: dict[int, dict[str, int]] = {
    EM_X86_64: {
        "GLOB_DAT": R_X86_64_GLOB_DAT,
        "JUMP_SLOT": R_X86_64_JUMP_SLOT,
        "IRELATIVE": R_X86_64_IRELATIVE,
        "TPOFF64": R_X86_64_TPOFF64,
        "DTPMOD64": R_X86_64_DTPMOD64,
    },
    EM_AARCH64: {
        "GLOB_DAT": 1025,
        "JUMP_SLOT": 1026,
        "IRELATIVE": 1032,
        "TPOFF64": 1030,
        "DTPMOD64": 1028,
    },
}

#: Mappings are page granular; relive's targets use 4 KiB pages.
PAGE_SIZE = 0x1000

_PHDR = struct.Struct("<IIQQQQQQ")
_DYN = struct.Struct("<qQ")
_RELA = struct.Struct("<QQq")
_GNU_HASH_HEADER = struct.Struct("<IIII")
_VERSYM_HIDDEN = 0x8000
_CACHE_SIZE = 64

_Identity = tuple[int, int, int, int]


class LoadSegment(NamedTuple):
    """One ``PT_LOAD`` program header."""

    vaddr: int
    offset: int
    filesz: int
    memsz: int
    flags: int
    align: int


class TlsSegment(NamedTuple):
    """The ``PT_TLS`` template: ``filesz`` initialised bytes, then zeros up to ``memsz``."""

    vaddr: int
    filesz: int
    memsz: int
    align: int


class DynamicRelocation(NamedTuple):
    """One entry of ``.rela.dyn`` or ``.rela.plt``."""

    #: Link-time vaddr of the word the dynamic linker writes.
    offset: int
    type: int
    #: The ``.dynsym`` name, or "" for relocations without a symbol.
    symbol: str
    addend: int


@dataclass(frozen=True, slots=True)
class ImageSymbol:
    """One symbol of a linked image; ``value`` is a link-time vaddr (TLS: an offset)."""

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


class _Strings:
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


class _SymbolTable:
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
        self.strings = _Strings(strtab)
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
        return bool(version & _VERSYM_HIDDEN)

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

    def group_ranges(self, file: str) -> Iterator[tuple[str, int, int]]:
        """(name, first, end) index ranges of the STT_FILE groups that match ``file``."""
        base = os.path.basename(file)
        bounds = [*self.file_starts, self.first_global]
        for k, name in enumerate(self.file_names):
            if name == file or os.path.basename(name) == base:
                yield name, bounds[k] + 1, bounds[k + 1]


class _GnuHash:
    """The ``.gnu.hash`` table: name lookups without decoding ``.dynsym``."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.nbuckets, self.symoffset, self.bloom_size, self.bloom_shift = (
            _GNU_HASH_HEADER.unpack_from(data, 0)
        )
        self.buckets_at = 16 + 8 * self.bloom_size
        self.chains_at = self.buckets_at + 4 * self.nbuckets

    @classmethod
    def parse(cls, data: bytes) -> _GnuHash | None:
        """The table in ``data``, or None if it is absent or malformed (then the
        caller falls back to decoding ``.dynsym``)."""
        if len(data) < _GNU_HASH_HEADER.size:
            return None
        table = cls(data)
        if not table.nbuckets or not table.bloom_size or table.chains_at > len(data):
            return None
        return table

    def iter_candidates(self, name: bytes) -> Iterator[int]:
        """Dynsym indices whose hash matches ``name`` (the caller compares names)."""
        h = 5381
        for c in name:
            h = (h * 33 + c) & 0xFFFFFFFF
        (word,) = struct.unpack_from("<Q", self.data, 16 + 8 * ((h // 64) % self.bloom_size))
        mask = (1 << (h % 64)) | (1 << ((h >> self.bloom_shift) % 64))
        if word & mask != mask:
            return
        (index,) = struct.unpack_from("<I", self.data, self.buckets_at + 4 * (h % self.nbuckets))
        if index < self.symoffset:
            return
        while True:
            at = self.chains_at + 4 * (index - self.symoffset)
            if at + 4 > len(self.data):
                return
            (chain,) = struct.unpack_from("<I", self.data, at)
            if (chain | 1) == (h | 1):
                yield index
            if chain & 1:
                return
            index += 1


class ElfImage:
    """A parsed executable (``ET_EXEC``) or PIE/shared library (``ET_DYN``).

    Use :meth:`open`, which caches by file identity.
    """

    _cache: ClassVar[OrderedDict[_Identity, ElfImage]] = OrderedDict()

    path: str
    machine: int
    e_type: int
    is_pie_or_shared: bool
    has_symtab: bool
    load_segments: list[LoadSegment]
    first_load_vaddr: int
    tls_segment: TlsSegment | None
    soname: str | None

    def __init__(self, path: str, identity: _Identity, data: mmap.mmap) -> None:
        """Parse headers from ``data``; use :meth:`open` instead of calling this."""
        self.path = path
        self._identity = identity
        header = parse_elf_header(path, data, "executable or shared library")
        if header.e_type not in (ET_EXEC, ET_DYN):
            what = {ET_REL: "a relocatable object", ET_CORE: "a core dump"}.get(
                header.e_type, f"an ELF file of type {header.e_type}"
            )
            raise BadObject(
                f"{path} is {what}, not an executable or shared library",
                "pass the linked program or library the process runs",
            )
        self.machine = header.machine
        self.e_type = header.e_type
        self.is_pie_or_shared = header.e_type == ET_DYN
        self._read_segments(data, header.phoff, header.phnum, header.phentsize)
        shdrs = parse_section_headers(path, data, header)
        self._alloc_ranges = sorted(
            (s.addr, s.addr + s.size) for s in shdrs if s.flags & SHF_ALLOC and s.size
        )
        self._read_tables(data, shdrs)
        self._symtab: _SymbolTable | None = None
        self._dynsym: _SymbolTable | None = None
        self._relocs: list[DynamicRelocation] | None = None
        self._reloc_index: tuple[dict[tuple[int, str], int], dict[int, int]] | None = None

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ElfImage:
        """The parsed image at ``path``, from the cache if the file is unchanged.

        Raises :class:`BadObject` for unreadable, non-ELF, 32-bit or relocatable files.
        """
        name = os.fspath(path)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise BadObject(f"cannot read {name}: {e.strerror}", "check the path") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise BadObject(f"{name} is not a regular file", "pass a program or library")
            identity = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            image = cls._cache.get(identity)
            if image is not None:
                cls._cache.move_to_end(identity)
                return image
            if st.st_size < 64:
                parse_elf_header(name, b"", "executable or shared library")
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as data:
                image = cls(name, identity, data)
        finally:
            os.close(fd)
        cls._cache[identity] = image
        if len(cls._cache) > _CACHE_SIZE:
            cls._cache.popitem(last=False)
        return image

    @classmethod
    def clear_cache(cls) -> None:
        """Forget every parsed image."""
        cls._cache.clear()

    def _read_segments(self, data: mmap.mmap, phoff: int, phnum: int, phentsize: int) -> None:
        if phnum and phentsize != _PHDR.size:
            raise BadObject(f"{self.path} has malformed program headers", "rebuild it")
        table = slice_checked(self.path, data, phoff, phnum * _PHDR.size)
        self.load_segments = []
        self.tls_segment = None
        dynamic: LoadSegment | None = None
        for p_type, flags, offset, vaddr, _, filesz, memsz, align in _PHDR.iter_unpack(table):
            segment = LoadSegment(vaddr, offset, filesz, memsz, flags, align)
            if p_type == PT_LOAD:
                self.load_segments.append(segment)
            elif p_type == PT_TLS:
                self.tls_segment = TlsSegment(vaddr, filesz, memsz, align)
            elif p_type == PT_DYNAMIC:
                dynamic = segment
        if not self.load_segments:
            raise BadObject(f"{self.path} has no loadable segments", "pass a linked program")
        self.first_load_vaddr = min(s.vaddr for s in self.load_segments) & ~(PAGE_SIZE - 1)
        self.soname = self._read_soname(data, dynamic)

    def _read_soname(self, data: mmap.mmap, dynamic: LoadSegment | None) -> str | None:
        # Read through PT_DYNAMIC rather than section headers: it is what the
        # dynamic linker itself uses, and survives section-header stripping.
        if dynamic is None:
            return None
        table = slice_checked(self.path, data, dynamic.offset, dynamic.filesz)
        tags: dict[int, int] = {}
        for tag, value in _DYN.iter_unpack(table[: len(table) - len(table) % _DYN.size]):
            if tag == DT_NULL:
                break
            tags.setdefault(tag, value)
        strtab = self._file_offset(tags.get(DT_STRTAB, -1))
        if DT_SONAME not in tags or strtab is None:
            return None
        size = tags.get(DT_STRSZ, len(data) - strtab)
        return read_cstr(slice_checked(self.path, data, strtab, size), tags[DT_SONAME])

    def _read_tables(self, data: mmap.mmap, shdrs: list[SectionHeader]) -> None:
        # Copy out the few sections symbol lookups need; the mapping is closed
        # when open() returns, and debug info (often most of the file) is never read.
        def contents(index: int) -> bytes:
            if not 0 < index < len(shdrs) or shdrs[index].type == SHT_NOBITS:
                return b""
            return slice_checked(self.path, data, shdrs[index].offset, shdrs[index].size)

        def first(sh_type: int, link: int | None = None) -> int:
            for i, s in enumerate(shdrs):
                if s.type == sh_type and (link is None or s.link == link):
                    return i
            return 0

        symtab, dynsym = first(SHT_SYMTAB), first(SHT_DYNSYM)
        self.has_symtab = symtab != 0
        self._symtab_parts = (
            contents(symtab),
            contents(shdrs[symtab].link) if symtab else b"",
            shdrs[symtab].info if symtab else 0,
            contents(first(SHT_SYMTAB_SHNDX, symtab)) if symtab else b"",
        )
        self._dynsym_data = contents(dynsym)
        self._dynstr = contents(shdrs[dynsym].link) if dynsym else b""
        self._dynsym_first_global = shdrs[dynsym].info if dynsym else 0
        self._versym = contents(first(SHT_GNU_VERSYM, dynsym)) if dynsym else b""
        gnu_hash = contents(first(SHT_GNU_HASH, dynsym)) if dynsym else b""
        self._gnu_hash = _GnuHash.parse(gnu_hash)
        self._rela_data = [
            contents(i) for i, s in enumerate(shdrs) if s.type == SHT_RELA and s.flags & SHF_ALLOC
        ]

    def _file_offset(self, vaddr: int) -> int | None:
        for seg in self.load_segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return seg.offset + vaddr - seg.vaddr
        return None

    # -- symbols ---------------------------------------------------------------

    def _table(self) -> _SymbolTable:
        """The table used for lookups: ``.symtab`` when present, else ``.dynsym``."""
        if not self.has_symtab:
            return self._dynamic_table()
        if self._symtab is None:
            data, strtab, first_global, shndx = self._symtab_parts
            self._symtab = _SymbolTable(data, strtab, first_global, shndx, b"")
        return self._symtab

    def _dynamic_table(self) -> _SymbolTable:
        if self._dynsym is None:
            self._dynsym = _SymbolTable(
                self._dynsym_data, self._dynstr, self._dynsym_first_global, b"", self._versym
            )
        return self._dynsym

    def iter_symbols(self) -> Iterator[ImageSymbol]:
        """Every entry of ``.symtab`` (of ``.dynsym`` when there is no ``.symtab``)."""
        table = self._table()
        return (table.symbol(i) for i in range(table.count))

    def iter_dynamic_symbols(self) -> Iterator[ImageSymbol]:
        """Every entry of ``.dynsym``."""
        table = self._dynamic_table()
        return (table.symbol(i) for i in range(table.count))

    def find_global(self, name: str) -> ImageSymbol | None:
        """The defined GLOBAL (preferred) or WEAK symbol ``name``, or None.

        Version suffixes are ignored (``memcpy`` finds ``memcpy@@GLIBC_2.14``)
        and the default version wins over older ones.
        """
        if not self.has_symtab:
            return self.find_dynamic_symbol(name)
        table = self._table()
        index = table.find_global(name)
        return None if index is None else table.symbol(index)

    def find_dynamic_symbol(self, name: str) -> ImageSymbol | None:
        """The exported (``.dynsym``) definition of ``name``, or None.

        Uses ``.gnu.hash`` when present, so one lookup costs microseconds and
        ``.dynsym`` is never decoded as a whole. The default version is preferred.
        """
        if self._gnu_hash is None:
            table = self._dynamic_table()
            index = table.globals().get(name)
            return None if index is None else table.symbol(index)
        wanted = name.encode()
        found: tuple[tuple[bool, bool], ImageSymbol] | None = None
        for index in self._gnu_hash.iter_candidates(wanted):
            st_name, info, _, shndx, value, size = struct.unpack_from(
                SYM_FORMAT, self._dynsym_data, index * SYM_SIZE
            )
            bind = info >> 4
            if (
                shndx == SHN_UNDEF
                or bind == STB_LOCAL
                or not self._dynstr.startswith(wanted + b"\0", st_name)
            ):
                continue
            hidden = False
            if len(self._versym) >= 2 * index + 2:
                (version,) = struct.unpack_from("<H", self._versym, 2 * index)
                hidden = bool(version & _VERSYM_HIDDEN)
            rank = (hidden, bind == STB_WEAK)
            if found is None or rank < found[0]:
                found = (rank, ImageSymbol(name, value, size, info & 0xF, bind, shndx, None))
        return None if found is None else found[1]

    def iter_file_names(self) -> Iterator[str]:
        """The distinct ``STT_FILE`` names of ``.symtab``, in table order."""
        return iter(dict.fromkeys(self._table().file_names))

    def iter_file_locals(self, file: str) -> Iterator[ImageSymbol]:
        """Local symbols of the ``STT_FILE`` groups named ``file`` or sharing its basename.

        Several groups may match (two ``util.c`` in different directories, or a
        name given with and without directories): each symbol's ``file`` tells
        them apart.
        """
        table = self._table()
        for _, start, end in table.group_ranges(file):
            for index in range(start, end):
                yield table.symbol(index)

    def find_file_local(self, name: str, file: str) -> list[ImageSymbol]:
        """Every local symbol called ``name`` in the groups :meth:`iter_file_locals` picks."""
        table = self._table()
        return [
            table.symbol(index)
            for _, start, end in table.group_ranges(file)
            for index in range(start, end)
            if table.name(index) == name
        ]

    def iter_functions(self) -> Iterator[ImageSymbol]:
        """Defined functions (local and global), sorted by address."""
        table = self._table()
        found = [
            table.symbol(i)
            for i, (info, shndx) in enumerate(zip(table.info, table.shndx, strict=True))
            if info & 0xF in (STT_FUNC, STT_GNU_IFUNC) and shndx not in (SHN_UNDEF, SHN_ABS)
        ]
        found.sort(key=lambda s: (s.value, s.name))
        return iter(found)

    def find_next_symbol_address(self, vaddr: int) -> int | None:
        """The first address above ``vaddr`` where something else may start.

        That is the smallest start of a defined function, object or untyped
        symbol, or the end of the section (or segment) containing ``vaddr``,
        greater than ``vaddr``; None if there is none. Bytes from a function's
        entry up to this address are its own (body plus alignment padding).
        """
        k = bisect.bisect_right(self._alloc_ranges, (vaddr, 1 << 64)) - 1
        if k >= 0 and self._alloc_ranges[k][1] > vaddr:
            limit = self._alloc_ranges[k][1]
        else:
            ends = [
                s.vaddr + s.memsz
                for s in self.load_segments
                if s.vaddr <= vaddr < s.vaddr + s.memsz
            ]
            limit = min(ends, default=1 << 64)
        following = self._table().next_start(vaddr, limit)
        if following is not None:
            return following
        return None if limit == 1 << 64 else limit

    # -- dynamic relocations ---------------------------------------------------

    @property
    def dynamic_relocations(self) -> list[DynamicRelocation]:
        """Entries of the allocated ``SHT_RELA`` sections (``.rela.dyn``, ``.rela.plt``)."""
        if self._relocs is None:
            relocs = []
            for data in self._rela_data:
                usable = len(data) - len(data) % _RELA.size
                for offset, info, addend in _RELA.iter_unpack(data[:usable]):
                    name = self._dynsym_name(info >> 32)
                    relocs.append(DynamicRelocation(offset, info & 0xFFFFFFFF, name, addend))
            self._relocs = relocs
        return self._relocs

    def _dynsym_name(self, index: int) -> str:
        if index == 0 or (index + 1) * SYM_SIZE > len(self._dynsym_data):
            return ""
        (st_name,) = struct.unpack_from("<I", self._dynsym_data, index * SYM_SIZE)
        return read_cstr(self._dynstr, st_name)

    def _index_relocations(self) -> tuple[dict[tuple[int, str], int], dict[int, int]]:
        """Slots by (type, symbol name), and IRELATIVE slots by resolver address."""
        if self._reloc_index is None:
            slots: dict[tuple[int, str], int] = {}
            irelative: dict[int, int] = {}
            kinds = _DYN_RELOC_KINDS.get(self.machine, {})
            for reloc in self.dynamic_relocations:
                if reloc.type == kinds.get("IRELATIVE"):
                    irelative.setdefault(reloc.addend, reloc.offset)
                elif reloc.symbol:
                    slots.setdefault((reloc.type, reloc.symbol), reloc.offset)
            self._reloc_index = (slots, irelative)
        return self._reloc_index

    def _find_slot(self, name: str, kind: str) -> int | None:
        number = _DYN_RELOC_KINDS.get(self.machine, {}).get(kind)
        return None if number is None else self._index_relocations()[0].get((number, name))

    def find_got_slot(self, name: str) -> int | None:
        """The vaddr of the GOT slot the dynamic linker fills with ``name``'s address.

        A ``GLOB_DAT`` slot is preferred over a ``JUMP_SLOT`` one; None if neither exists.
        """
        slot = self._find_slot(name, "GLOB_DAT")
        return self._find_slot(name, "JUMP_SLOT") if slot is None else slot

    def find_irelative_slot(self, resolver_vaddr: int) -> int | None:
        """The vaddr of the slot an ``IRELATIVE`` relocation with this resolver fills.

        The slot holds the implementation the IFUNC resolver chose at load time.
        """
        return self._index_relocations()[1].get(resolver_vaddr)

    def find_tls_got_slot(self, name: str, kind: Literal["TPOFF64", "DTPMOD64"]) -> int | None:
        """The vaddr of ``name``'s TLS GOT slot: the TP offset, or the module id word of
        the (module, offset) pair general-dynamic code passes to ``__tls_get_addr``."""
        return self._find_slot(name, kind)

    # -- contents --------------------------------------------------------------

    def read_vaddr(self, vaddr: int, size: int) -> bytes:
        """``size`` bytes at link-time ``vaddr`` as loaded (zeros past ``p_filesz``).

        Raises :class:`BadObject` if the range is not inside one ``PT_LOAD``
        segment or the file changed since it was parsed.
        """
        seg = next(
            (s for s in self.load_segments if s.vaddr <= vaddr <= s.vaddr + s.memsz - size),
            None,
        )
        if seg is None:
            raise BadObject(
                f"{self.path} has no loadable segment holding {size} bytes at {vaddr:#x}",
                "check that the process runs this version of the file",
            )
        in_file = max(0, min(size, seg.vaddr + seg.filesz - vaddr))
        data = b""
        if in_file:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                if (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size) != self._identity:
                    raise BadObject(
                        f"{self.path} changed on disk since relive read it",
                        "retry; if a build is rewriting it, wait for the build to finish",
                    )
                data = os.pread(f.fileno(), in_file, seg.offset + vaddr - seg.vaddr)
            if len(data) != in_file:
                raise BadObject(f"{self.path} is truncated", "rebuild it")
        return data + bytes(size - len(data))

    def __repr__(self) -> str:
        return f"<ElfImage {self.path!r} type={self.e_type} soname={self.soname!r}>"

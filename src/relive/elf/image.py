"""A linked executable or shared library on disk, as the symbol resolver needs it.

Headers are decoded once at :meth:`ElfImage.open`; symbol tables are copied out
then as raw bytes and queried without decoding them whole
(:mod:`relive.elf.symtab`, :mod:`relive.elf.gnu_hash`).  Parsed images are
cached by file identity, so later reloads in the same process pay nothing.

Addresses are link-time virtual addresses: callers add the load bias.
"""

from __future__ import annotations

import bisect
import mmap
import os
import re
import stat
import struct
from collections.abc import Iterator
from typing import Literal, NamedTuple

from relive.elf.constants import (
    DT_NULL,
    DT_SONAME,
    DT_STRSZ,
    DT_STRTAB,
    DYN_RELOC_KINDS,
    ET_CORE,
    ET_DYN,
    ET_EXEC,
    ET_REL,
    PAGE_SIZE,
    PT_DYNAMIC,
    PT_GNU_RELRO,
    PT_LOAD,
    PT_TLS,
    SHF_ALLOC,
    SHN_ABS,
    SHN_UNDEF,
    SHT_DYNSYM,
    SHT_GNU_HASH,
    SHT_GNU_VERSYM,
    SHT_NOBITS,
    SHT_RELA,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    STB_LOCAL,
    STB_WEAK,
    STT_FUNC,
    STT_GNU_IFUNC,
)
from relive.elf.filecache import FileCache, FileIdentity, file_identity
from relive.elf.gnu_hash import GnuHash
from relive.elf.objfile import (
    SYM_FORMAT,
    SYM_SIZE,
    SectionHeader,
    parse_elf_header,
    parse_section_headers,
    read_cstr,
    slice_checked,
)
from relive.elf.symtab import VERSYM_HIDDEN, ImageSymbol, SymbolTable
from relive.errors import BadObject

__all__ = ["DynamicRelocation", "ElfImage", "ImageSymbol", "LoadSegment", "TlsSegment"]

_PHDR = struct.Struct("<IIQQQQQQ")
_DYN = struct.Struct("<qQ")
_RELA = struct.Struct("<QQq")

_images: FileCache[ElfImage] = FileCache(64)


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


class ElfImage:
    """A parsed executable (``ET_EXEC``) or PIE/shared library (``ET_DYN``).

    Use :meth:`open`, which caches by file identity.
    """

    path: str
    machine: int
    e_type: int
    is_pie_or_shared: bool
    has_symtab: bool
    load_segments: list[LoadSegment]
    first_load_vaddr: int
    tls_segment: TlsSegment | None
    #: [start, end) link-time addresses made read-only after relocation (PT_GNU_RELRO).
    relro: tuple[int, int] | None
    soname: str | None

    def __init__(self, path: str, identity: FileIdentity, data: mmap.mmap) -> None:
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
        self._symtab: SymbolTable | None = None
        self._dynsym: SymbolTable | None = None
        self._relocs: list[DynamicRelocation] | None = None
        self._reloc_index: tuple[dict[tuple[int, str], int], dict[int, int]] | None = None

    # -- opening ---------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ElfImage:
        """The parsed image at ``path``, from the cache if the file is unchanged.

        Raises :class:`BadObject` for unreadable, non-ELF, 32-bit or relocatable files.
        """
        return _images.get(path, cls._parse_file, "check the path")

    @classmethod
    def _parse_file(cls, name: str, fd: int, st: os.stat_result) -> ElfImage:
        if not stat.S_ISREG(st.st_mode):
            raise BadObject(f"{name} is not a regular file", "pass a program or library")
        if st.st_size < 64:
            parse_elf_header(name, b"", "executable or shared library")
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as data:
            return cls(name, file_identity(st), data)

    @classmethod
    def clear_cache(cls) -> None:
        """Forget every parsed image."""
        _images.clear()

    def _read_segments(self, data: mmap.mmap, phoff: int, phnum: int, phentsize: int) -> None:
        if phnum and phentsize != _PHDR.size:
            raise BadObject(f"{self.path} has malformed program headers", "rebuild it")
        table = slice_checked(self.path, data, phoff, phnum * _PHDR.size)
        self.load_segments = []
        self.tls_segment = None
        self.relro = None
        dynamic: LoadSegment | None = None
        for p_type, flags, offset, vaddr, _, filesz, memsz, align in _PHDR.iter_unpack(table):
            segment = LoadSegment(vaddr, offset, filesz, memsz, flags, align)
            if p_type == PT_LOAD:
                self.load_segments.append(segment)
            elif p_type == PT_TLS:
                self.tls_segment = TlsSegment(vaddr, filesz, memsz, align)
            elif p_type == PT_DYNAMIC:
                dynamic = segment
            elif p_type == PT_GNU_RELRO:
                self.relro = (vaddr, vaddr + memsz)
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
        self._gnu_hash = GnuHash.parse(gnu_hash)
        self._rela_data = [
            contents(i) for i, s in enumerate(shdrs) if s.type == SHT_RELA and s.flags & SHF_ALLOC
        ]

    def _file_offset(self, vaddr: int) -> int | None:
        for seg in self.load_segments:
            if seg.vaddr <= vaddr < seg.vaddr + seg.filesz:
                return seg.offset + vaddr - seg.vaddr
        return None

    # -- symbols ---------------------------------------------------------------

    def _table(self) -> SymbolTable:
        """The table used for lookups: ``.symtab`` when present, else ``.dynsym``."""
        if not self.has_symtab:
            return self._dynamic_table()
        if self._symtab is None:
            data, strtab, first_global, shndx = self._symtab_parts
            self._symtab = SymbolTable(data, strtab, first_global, shndx, b"")
        return self._symtab

    def _dynamic_table(self) -> SymbolTable:
        if self._dynsym is None:
            self._dynsym = SymbolTable(
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
                hidden = bool(version & VERSYM_HIDDEN)
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

    def find_file_locals_matching(self, file: str, pattern: re.Pattern[str]) -> list[ImageSymbol]:
        """The symbols of :meth:`iter_file_locals` whose name ``pattern`` finds: names
        are read first, and only the symbols found are built (a big unit's group has
        tens of thousands)."""
        table = self._table()
        found: list[ImageSymbol] = []
        for _, start, end in table.group_ranges(file):
            names = table.strings.many(table.st_name[start:end])
            search = pattern.search
            found.extend(table.symbol(i) for i, n in enumerate(names, start) if search(n))
        return found

    def find_file_local(self, name: str, file: str) -> list[ImageSymbol]:
        """Every local symbol called ``name`` in the groups :meth:`iter_file_locals` picks."""
        table = self._table()
        return [
            table.symbol(index)
            for _, start, end in table.group_ranges(file)
            for index in table.group_locals_named(start, end, name)
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
            kinds = DYN_RELOC_KINDS.get(self.machine, {})
            for reloc in self.dynamic_relocations:
                if reloc.type == kinds.get("IRELATIVE"):
                    irelative.setdefault(reloc.addend, reloc.offset)
                elif reloc.symbol:
                    slots.setdefault((reloc.type, reloc.symbol), reloc.offset)
            self._reloc_index = (slots, irelative)
        return self._reloc_index

    def _find_slot(self, name: str, kind: str) -> int | None:
        number = DYN_RELOC_KINDS.get(self.machine, {}).get(kind)
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
                if file_identity(st) != self._identity:
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

"""A relocatable ELF object (``ET_REL``) as relive's linker needs it.

Everything is read with :mod:`struct` from the raw bytes rather than through
pyelftools: a translation unit built with ``-ffunction-sections`` has thousands
of sections and symbols, and pyelftools' per-entry parsing costs tens of
microseconds each, which would show up in every reload.

The low-level helpers (:func:`parse_elf_header`, :func:`parse_section_headers`,
:func:`read_cstr`) are shared with :mod:`relive.elf.image`.
"""

from __future__ import annotations

import array
import bisect
import mmap
import os
import stat
import struct
from collections.abc import Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from relive.elf.constants import (
    EM_X86_64,
    ET_CORE,
    ET_DYN,
    ET_EXEC,
    ET_REL,
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHF_TLS,
    SHF_WRITE,
    SHN_ABS,
    SHN_COMMON,
    SHN_UNDEF,
    SHN_XINDEX,
    SHT_NOBITS,
    SHT_NULL,
    SHT_REL,
    SHT_RELA,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    STB_LOCAL,
    STT_FILE,
    STT_FUNC,
    STT_GNU_IFUNC,
    STT_SECTION,
    STV_DEFAULT,
    machine_name,
)
from relive.elf.objcheck import (
    bad_field,
    check_relocation_table,
    check_section_headers,
    check_shstrndx,
    check_symbol,
    target_of,
)
from relive.elf.rela import RelaTable
from relive.errors import BadObject

if TYPE_CHECKING:
    from relive.elf.dwarf_types import DwarfFile

#: What the header helpers read from: a whole file in memory, or a mapping of it.
Buffer = bytes | mmap.mmap

_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
#: One Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size.
SYM_FORMAT = "<IBBHQQ"
SYM_SIZE = 24
_RELA_FORMAT = "<QQq"
_RELA_SIZE = 24

_TYPE_NAMES = {
    ET_EXEC: "an executable",
    ET_DYN: "a shared library or PIE executable",
    ET_CORE: "a core dump",
}


def _with_article(noun: str) -> str:
    # "an x86-64", "an AArch64", "a RISC-V": go by the spoken first letter.
    return f"an {noun}" if noun[:1].lower() in "aeiox" else f"a {noun}"


class ElfHeader(NamedTuple):
    """The fields of an ELF64 file header that relive uses."""

    e_type: int
    machine: int
    entry: int
    phoff: int
    shoff: int
    phentsize: int
    phnum: int
    shentsize: int
    shnum: int
    shstrndx: int


class SectionHeader(NamedTuple):
    """One raw ``Elf64_Shdr``."""

    name: int
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    info: int
    addralign: int
    entsize: int


def parse_elf_header(path: str, data: Buffer, what: str = "object") -> ElfHeader:
    """Check the identification bytes and decode the ELF64 header.

    ``what`` names the kind of file expected ("object", "executable or shared
    library") so that refusals read naturally. Raises :class:`BadObject` for a
    file that is not ELF, not 64-bit or not little-endian; the caller checks
    machine and type.
    """
    if len(data) < _EHDR.size or bytes(data[:4]) != b"\x7fELF":
        raise BadObject(
            f"{path} is not an ELF {what} file",
            "pass a .c source or a .o built by gcc/clang"
            if what == "object"
            else "pass the program or library file the process runs",
        )
    (
        ident,
        e_type,
        machine,
        _version,
        entry,
        phoff,
        shoff,
        _flags,
        _ehsize,
        phentsize,
        phnum,
        shentsize,
        shnum,
        shstrndx,
    ) = _EHDR.unpack_from(data, 0)
    if ident[4] != 2:
        raise BadObject(
            f"{path} is a 32-bit {what}; relive targets 64-bit processes",
            "rebuild without -m32",
        )
    if ident[5] != 1:
        raise BadObject(
            f"{path} is a big-endian {what}; relive targets little-endian processes",
            "rebuild for the target's architecture",
        )
    return ElfHeader(
        e_type, machine, entry, phoff, shoff, phentsize, phnum, shentsize, shnum, shstrndx
    )


def _truncated(path: str) -> BadObject:
    return BadObject(
        f"{path} is truncated or corrupt (a table points past the end of the file)",
        "rebuild it; if a build is still writing it, wait for it to finish",
    )


def slice_checked(path: str, data: Buffer, offset: int, size: int) -> bytes:
    """``data[offset:offset+size]`` as bytes, or BadObject if it runs past the end."""
    if offset < 0 or size < 0 or offset + size > len(data):
        raise _truncated(path)
    return bytes(data[offset : offset + size])


def parse_section_headers(path: str, data: Buffer, header: ElfHeader) -> list[SectionHeader]:
    """All section headers, with the extended numbering of ELF for >= 0xff00 sections.

    When a file has that many sections, ``e_shnum`` is 0 and the real count is
    in section 0's ``sh_size``; ``e_shstrndx`` is ``SHN_XINDEX`` and the real
    index is in section 0's ``sh_link``. (The name-table index is applied by
    :func:`section_names`.)
    """
    if header.shoff == 0:
        return []
    if header.shentsize != _SHDR.size:
        raise _truncated(path)
    first = SectionHeader(*_SHDR.unpack(slice_checked(path, data, header.shoff, _SHDR.size)))
    count = header.shnum or first.size
    table = slice_checked(path, data, header.shoff, count * _SHDR.size)
    return list(map(SectionHeader._make, _SHDR.iter_unpack(table)))


def shstrndx(header: ElfHeader, sections: list[SectionHeader]) -> int:
    """The index of the section-name string table, resolving ``SHN_XINDEX``."""
    if header.shstrndx == SHN_XINDEX and sections:
        return sections[0].link
    return header.shstrndx


def read_cstr(table: bytes, offset: int) -> str:
    """The NUL-terminated string at ``offset`` in a string table."""
    end = table.find(b"\0", offset)
    if end < 0:
        end = len(table)
    return table[offset:end].decode("utf-8", "replace")


def section_names(
    path: str, data: Buffer, header: ElfHeader, sections: list[SectionHeader]
) -> list[str]:
    """The name of every section, in index order ("" when there is no name table)."""
    index = shstrndx(header, sections)
    if not 0 < index < len(sections):
        return [""] * len(sections)
    names = sections[index]
    table = slice_checked(path, data, names.offset, names.size)
    return _cstrs(table, [s.name for s in sections])


def _cstrs(table: bytes, offsets: list[int]) -> list[str]:
    """The NUL-terminated strings at ``offsets``, as :func:`read_cstr` reads them;
    an ASCII table is decoded once and sliced."""
    if not table.isascii() or not table.endswith(b"\0"):
        return [read_cstr(table, o) for o in offsets]
    text = table.decode("ascii")
    find = text.index
    size = len(text)
    return [text[o : find("\0", o)] if o < size else "" for o in offsets]


def resolve_xindex(shndx_table: bytes | memoryview, shndx: int, symbol_index: int) -> int:
    """The real section index of a symbol whose ``st_shndx`` may be ``SHN_XINDEX``."""
    if shndx != SHN_XINDEX or not shndx_table:
        return shndx
    (real,) = struct.unpack_from("<I", shndx_table, symbol_index * 4)
    return int(real)


class Section(NamedTuple):
    """One section of a relocatable object, with its contents.

    A named tuple rather than a frozen dataclass: objects built with
    -ffunction-sections have tens of thousands, and a tuple is built several
    times faster (and hashed and compared in C).
    """

    index: int  # type: ignore[assignment]  # (shadows tuple.index, unused here)
    name: str
    type: int
    flags: int
    size: int
    align: int
    #: The contents; ``b""`` for ``SHT_NOBITS`` (``.bss``), whose ``size`` still counts.
    #: A section the program never maps (DWARF, symbols, relocations: most of a
    #: ``-g`` object) is a read-only view of the object's one buffer, not a copy
    #: (see :func:`_build_sections`).
    data: bytes | memoryview
    link: int
    info: int
    entsize: int

    def content(self) -> bytes:
        """The contents as bytes: no copy for a section the program maps (the code and
        data the linker and the diff read), a copy of a view."""
        data = self.data
        return data if isinstance(data, bytes) else bytes(data)

    @property
    def is_alloc(self) -> bool:
        """The section occupies memory in the running program."""
        return bool(self.flags & SHF_ALLOC)

    @property
    def is_exec(self) -> bool:
        """The section holds code."""
        return bool(self.flags & SHF_EXECINSTR)

    @property
    def is_write(self) -> bool:
        """The section is writable at run time."""
        return bool(self.flags & SHF_WRITE)

    @property
    def is_nobits(self) -> bool:
        """The section has no file contents (zero-initialised, like ``.bss``)."""
        return self.type == SHT_NOBITS

    @property
    def is_tls(self) -> bool:
        """The section is a thread-local template (``.tdata``/``.tbss``)."""
        return bool(self.flags & SHF_TLS)


class ObjSymbol(NamedTuple):
    """One symbol-table entry of a relocatable object.

    ``STT_SECTION`` symbols carry no name in the file; they are given the name of
    their section so that messages and relocation dumps are readable.  A named
    tuple, like :class:`Section`, for the same reason.
    """

    index: int  # type: ignore[assignment]  # (shadows tuple.index, unused here)
    name: str
    value: int
    size: int
    type: int
    bind: int
    shndx: int
    #: The ``STT_FILE`` name that precedes a local symbol; None for globals.
    file: str | None
    #: ``STV_*`` from ``st_other``.
    visibility: int = STV_DEFAULT

    @property
    def is_defined(self) -> bool:
        """Defined in this object (in a section, absolute or common)."""
        return self.shndx != SHN_UNDEF

    @property
    def is_absolute(self) -> bool:
        """Defined with an absolute value (``SHN_ABS``), not relative to a section."""
        return self.shndx == SHN_ABS

    @property
    def is_common(self) -> bool:
        """A tentative definition (``SHN_COMMON``) the linker must allocate."""
        return self.shndx == SHN_COMMON

    @property
    def is_function(self) -> bool:
        """A function, including GNU indirect functions."""
        return self.type in (STT_FUNC, STT_GNU_IFUNC)

    @property
    def is_local(self) -> bool:
        """Bound locally (``static``): invisible outside its file."""
        return self.bind == STB_LOCAL

    @property
    def is_section(self) -> bool:
        """A section symbol, which relocations use to address anonymous data."""
        return self.type == STT_SECTION


class Relocation(NamedTuple):
    """One ``Elf64_Rela`` entry, with its symbol resolved.

    A named tuple rather than a frozen dataclass: objects have tens of thousands
    and a tuple is built several times faster.
    """

    #: Offset within the section the relocation applies to.
    offset: int
    #: ``R_<arch>_*`` number; meaning depends on the machine.
    type: int
    symbol: ObjSymbol
    addend: int


class ObjectFile:
    """A parsed relocatable object: sections, symbols and relocations.

    Build one with :meth:`open` or :meth:`from_bytes`.
    """

    def __init__(
        self,
        path: str,
        machine: int,
        sections: list[Section],
        symbols: list[ObjSymbol],
        relocations: Mapping[int, list[Relocation]],
        contents: bytes | None = None,
    ) -> None:
        self.path = path
        #: The whole file as read (None for an object built in memory): the sections
        #: the program never maps are views of it, and its DWARF is read from it.
        self.contents = contents
        self.machine = machine
        #: Indexed by section index (index 0 is the null section).
        self.sections = sections
        #: Indexed by symbol index (index 0 is the null symbol).
        self.symbols = symbols
        #: Relocations keyed by the index of the section they patch (from each
        #: ``SHT_RELA`` section's ``sh_info``); a section without any is absent.
        #: Read-only: each list is decoded when first looked up.
        self.relocations = relocations
        self.source_name: str | None = next((s.name for s in symbols if s.type == STT_FILE), None)
        self._by_section: _SectionIndex | None = None
        self._by_name: dict[str, ObjSymbol] | None = None
        self._functions: list[ObjSymbol] | None = None
        self._dwarf: DwarfFile | None = None

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], expected_machines: Collection[int] = (EM_X86_64,)
    ) -> ObjectFile:
        """Read and parse the object file at ``path``.

        Raises :class:`BadObject` for anything that is not a 64-bit little-endian
        relocatable object for one of ``expected_machines``.
        """
        name = os.fspath(path)
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as e:
            raise BadObject(f"cannot read {name}: {e.strerror}", "check the path") from e
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                # A FIFO would wait forever, /dev/urandom never end.
                raise BadObject(f"{name} is not a regular file", "pass an object file (.o)")
            try:
                data = f.read()
            except OSError as e:
                raise BadObject(f"cannot read {name}: {e.strerror}", "check the path") from e
        return cls.from_bytes(data, name, expected_machines)

    @classmethod
    def from_bytes(
        cls, data: bytes, path: str, expected_machines: Collection[int] = (EM_X86_64,)
    ) -> ObjectFile:
        """Parse an object held in memory; ``path`` is only used in messages."""
        header = parse_elf_header(path, data)
        if header.machine not in expected_machines:
            wanted = " or ".join(machine_name(m) for m in expected_machines)
            raise BadObject(
                f"{path} is {_with_article(machine_name(header.machine))} object "
                f"but the target is {wanted}",
                "compile with a compiler for the target's architecture",
            )
        if header.e_type != ET_REL:
            kind = _TYPE_NAMES.get(header.e_type, f"of ELF type {header.e_type}")
            raise BadObject(f"{path} is {kind}, not a relocatable object", "compile with -c")
        shdrs = parse_section_headers(path, data, header)
        check_shstrndx(path, shstrndx(header, shdrs), shdrs, header.shstrndx)
        sections = _build_sections(path, data, header, shdrs)
        symbols = _read_symbols(path, sections)
        relocations = _LazyRelocations(path, sections, symbols)
        return cls(path, header.machine, sections, symbols, relocations, data)

    def dwarf(self) -> DwarfFile:
        """The object's DWARF, read from the bytes already read (not mapped again: one
        copy of ``.debug_info`` and its relocations in memory, and no second read of a
        file the next compile may be rewriting)."""
        from relive.elf.dwarf_types import DwarfFile, open_dwarf

        if self._dwarf is None:
            if self.contents is None:
                self._dwarf = open_dwarf(self.path)
            else:
                self._dwarf = DwarfFile(self.path, self.contents)
        return self._dwarf

    def iter_functions(self) -> Iterator[ObjSymbol]:
        """Functions defined in this object (``STT_FUNC`` and ``STT_GNU_IFUNC``)."""
        if self._functions is None:
            self._functions = [s for s in self.symbols if s.is_function and s.is_defined]
        return iter(self._functions)

    def find_symbol(self, name: str) -> ObjSymbol | None:
        """The symbol called ``name``, preferring a global over a local; None if absent.

        Section and file symbols are not considered.
        """
        if self._by_name is None:
            by_name: dict[str, ObjSymbol] = {}
            for sym in self.symbols:
                if sym.type in (STT_SECTION, STT_FILE) or not sym.name:
                    continue
                seen = by_name.get(sym.name)
                if seen is None or (seen.is_local and not sym.is_local):
                    by_name[sym.name] = sym
            self._by_name = by_name
        return self._by_name.get(name)

    def relocation_at(self, section_index: int, offset: int) -> Relocation | None:
        """The relocation applied at ``offset`` of section ``section_index``, if any."""
        if isinstance(self.relocations, _LazyRelocations):
            return self.relocations.find_at(section_index, offset)
        return _find_relocation(self.relocations.get(section_index, ()), offset)

    def relocation_count(self, section_index: int) -> int:
        """How many relocations apply to section ``section_index`` (decoded or not)."""
        if isinstance(self.relocations, _LazyRelocations):
            return self.relocations.count(section_index)
        return len(self.relocations.get(section_index, ()))

    def forget_relocations_of(self, function: ObjSymbol) -> None:
        """Drop the decoded relocations of ``function``'s section when the function is
        the whole section (-ffunction-sections): a big unit's comparison with the
        running code decodes every function's, tens of thousands of tuples, of which
        the link needs only the loaded ones'.  Asked for again, they are decoded again
        (a section of several functions is kept: it would be decoded per function)."""
        index = function.shndx
        if (
            isinstance(self.relocations, _LazyRelocations)
            and 0 < index < len(self.sections)
            and function.value == 0
            and function.size == self.sections[index].size
        ):
            self.relocations.forget(index)

    def iter_section_symbols(self, section_index: int) -> Iterator[ObjSymbol]:
        """Symbols defined in section ``section_index``, excluding ``STT_SECTION``."""
        if self._by_section is None:
            self._by_section = _SectionIndex(self.symbols)
        return map(self.symbols.__getitem__, self._by_section.symbols_in(section_index))

    def __repr__(self) -> str:
        return (
            f"<ObjectFile {self.path!r} {machine_name(self.machine)} "
            f"{len(self.sections)} sections {len(self.symbols)} symbols>"
        )


class _SectionIndex:
    """Which symbols each section defines (``STT_SECTION`` left out), in symbol order.

    Two arrays, the symbols' numbers sorted by section and their sections, searched
    by bisection: a dict of lists would hold a list per section, some 4 MB of them
    for the 40,000 sections of a -ffunction-sections unit, for the whole reload.
    """

    def __init__(self, symbols: list[ObjSymbol]) -> None:
        shndx = [sym.shndx for sym in symbols]
        chosen = [
            k for k, sym in enumerate(symbols) if sym.shndx != SHN_UNDEF and sym.type != STT_SECTION
        ]
        # sorted() is stable: symbol order within a section is kept.
        self._order = array.array("I", sorted(chosen, key=shndx.__getitem__))
        self._sections = array.array("I", map(shndx.__getitem__, self._order))

    def symbols_in(self, section_index: int) -> array.array[int]:
        """The numbers of the symbols defined in ``section_index``."""
        first = bisect.bisect_left(self._sections, section_index)
        end = bisect.bisect_right(self._sections, section_index, first)
        return self._order[first:end]


def _build_sections(
    path: str, data: bytes, header: ElfHeader, shdrs: list[SectionHeader]
) -> list[Section]:
    names = section_names(path, data, header, shdrs)
    check_section_headers(path, shdrs, names, len(data))
    sections = []
    end_of_file = len(data)
    view = memoryview(data)
    make = tuple.__new__  # Section(...) without its generated __new__: 40,000 sections
    for index, (sh, name) in enumerate(zip(shdrs, names, strict=True)):
        contents: bytes | memoryview
        if sh.type in (SHT_NOBITS, SHT_NULL):
            contents = b""
        elif sh.offset + sh.size > end_of_file:  # sizes are unsigned: no negatives
            raise _truncated(path)
        elif sh.flags & SHF_ALLOC:
            # What the linker loads and the diff compares: bytes, as they expect.
            contents = data[sh.offset : sh.offset + sh.size]
        else:
            contents = view[sh.offset : sh.offset + sh.size]
        fields = (index, name, sh.type, sh.flags, sh.size, sh.addralign, contents)
        sections.append(make(Section, (*fields, sh.link, sh.info, sh.entsize)))
    return sections


def _read_symbols(path: str, sections: list[Section]) -> list[ObjSymbol]:
    symtab = next((s for s in sections if s.type == SHT_SYMTAB), None)
    if symtab is None:
        raise BadObject(
            f"{path} has no symbol table (it was stripped)",
            "rebuild it; do not strip objects relive should load",
        )
    if not 0 < symtab.link < len(sections):
        raise _truncated(path)
    strtab = bytes(sections[symtab.link].data)
    shndx_table = next(
        (s.data for s in sections if s.type == SHT_SYMTAB_SHNDX and s.link == symtab.index), b""
    )
    usable = len(symtab.data) - len(symtab.data) % SYM_SIZE
    entries = list(struct.iter_unpack(SYM_FORMAT, symtab.data[:usable]))
    if shndx_table and len(shndx_table) < 4 * len(entries):
        raise bad_field(
            path, "the extended section index table", "sh_size", len(shndx_table), "too short"
        )
    names = _cstrs(strtab, [entry[0] for entry in entries])
    sizes = [s.size for s in sections]
    count = len(sections)
    symbols: list[ObjSymbol] = []
    current_file: str | None = None
    make = tuple.__new__  # ObjSymbol(...) without its generated __new__
    for index, (_, info, other, shndx, value, size) in enumerate(entries):
        if shndx_table:
            shndx = resolve_xindex(shndx_table, shndx, index)
        st_type, bind = info & 0xF, info >> 4
        is_section = st_type == STT_SECTION and shndx < count
        name = sections[shndx].name if is_section else names[index]
        # The common case inline (thousands of symbols); check_symbol says what is wrong.
        if shndx >= count or (shndx and st_type != STT_SECTION and value + size > sizes[shndx]):
            check_symbol(path, index, name, st_type, shndx, value, size, sizes)
        if st_type == STT_FILE:
            current_file = name
        file = current_file if bind == STB_LOCAL else None
        fields = (index, name, value, size, st_type, bind, shndx, file, other & 3)
        symbols.append(make(ObjSymbol, fields))
    return symbols


class _LazyRelocations(Mapping[int, list[Relocation]]):
    """Relocations keyed by target section, each list decoded on first access.

    A ``-g`` object carries far more relocations for its ``.debug_*`` sections
    than for its code, and the linker reads only those of the sections it loads.
    """

    def __init__(self, path: str, sections: list[Section], symbols: list[ObjSymbol]) -> None:
        self._symbols = symbols
        self._path = path
        self._sources: dict[int, list[Section]] = {}
        for sec in sections:
            if sec.type == SHT_REL:
                raise BadObject(
                    f"{path} uses REL relocations (section {sec.name}), which relive cannot apply",
                    "build it with gcc or clang for x86-64, which emit RELA relocations",
                )
            if sec.type == SHT_RELA:
                target = sections[sec.info]
                if target.is_alloc:  # what may be loaded; debug sections never are
                    where = f"section {sec.index} ({sec.name})"
                    check_relocation_table(
                        path, where, sec.data, len(symbols), target_of(target.name, target.size)
                    )
                self._sources.setdefault(sec.info, []).append(sec)
        self._decoded: dict[int, list[Relocation]] = {}
        #: Per section looked up by ``find_at``: its one table, read in place.
        self._tables: dict[int, RelaTable] = {}
        self._offset_index: dict[int, dict[int, Relocation]] = {}

    def __getitem__(self, section_index: int) -> list[Relocation]:
        found = self._decoded.get(section_index)
        if found is None:
            found = []
            for sec in self._sources[section_index]:
                found.extend(self._decode(sec))
            self._decoded[section_index] = found
        return found

    def get(self, section_index: int, default: Any = None) -> Any:
        """As ``Mapping.get``, without its exception (asked thousands of times)."""
        found = self._decoded.get(section_index)
        if found is not None:
            return found
        return self[section_index] if section_index in self._sources else default

    def __iter__(self) -> Iterator[int]:
        return iter(self._sources)

    def __len__(self) -> int:
        return len(self._sources)

    def __contains__(self, key: object) -> bool:
        return key in self._sources

    def find_at(self, section_index: int, offset: int) -> Relocation | None:
        """The relocation at ``offset`` of section ``section_index``, decoding only that
        one when its table is in offset order (as gcc and clang write debug sections':
        a big unit's ``.debug_info`` has hundreds of thousands, of which a static's
        scope needs a few)."""
        if section_index in self._decoded or len(self._sources.get(section_index, ())) != 1:
            return self._by_offset(section_index).get(offset)
        sec = self._sources[section_index][0]
        table = self._tables.get(section_index)
        if table is None:
            table = self._tables[section_index] = RelaTable(sec.data)
        if not table.in_order():
            return self._by_offset(section_index).get(offset)
        found = table.find(offset)
        if found < 0:
            return None
        _, info, addend = table.entry(found)
        if info >> 32 >= len(self._symbols):
            where = f"a relocation of section {sec.index} ({sec.name})"
            raise bad_field(self._path, where, "r_info", info, "no such symbol")
        return Relocation(offset, info & 0xFFFFFFFF, self._symbols[info >> 32], addend)

    def _by_offset(self, section_index: int) -> dict[int, Relocation]:
        """A section's relocations by offset, for tables ``find_at`` cannot bisect
        (out of order, or spread over several tables): built once, not scanned per call."""
        found = self._offset_index.get(section_index)
        if found is None:
            found = {r.offset: r for r in self.get(section_index, ())}
            self._offset_index[section_index] = found
        return found

    def forget(self, section_index: int) -> None:
        """Drop what was decoded for section ``section_index``."""
        self._decoded.pop(section_index, None)
        self._offset_index.pop(section_index, None)

    def count(self, section_index: int) -> int:
        """How many relocations apply to section ``section_index``, without decoding them."""
        return sum(len(sec.data) // _RELA_SIZE for sec in self._sources.get(section_index, ()))

    def _decode(self, sec: Section) -> list[Relocation]:
        symbols = self._symbols
        usable = len(sec.data) - len(sec.data) % _RELA_SIZE
        entries = list(struct.iter_unpack(_RELA_FORMAT, sec.data[:usable]))
        for _, info, _ in entries:
            if info >> 32 >= len(symbols):
                where = f"a relocation of section {sec.index} ({sec.name})"
                raise bad_field(self._path, where, "r_info", info, "no such symbol")
        make = tuple.__new__
        return [
            make(Relocation, (offset, info & 0xFFFFFFFF, symbols[info >> 32], addend))
            for offset, info, addend in entries
        ]


def _find_relocation(relocations: Collection[Relocation], offset: int) -> Relocation | None:
    return next((r for r in relocations if r.offset == offset), None)

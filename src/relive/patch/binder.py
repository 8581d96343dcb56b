"""Bind a new object to the running program: what exists already, and where.

Rules (the C programmer's expectation of "state is kept"):

* a writable variable of the new object that exists in the process (global,
  file static, function-local static) binds to the existing storage;
* read-only data (string literals, constants) and new variables go to new
  memory, initialised from the object;
* an undefined symbol resolves in the reloaded module first (hidden symbols
  of a library), then in the executable, then in the other libraries in load
  order; an IFUNC resolves to the implementation the process already uses.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from relive.arch.base import Arch
from relive.elf.constants import STB_WEAK, STT_GNU_IFUNC, STT_TLS
from relive.elf.objfile import ObjectFile, ObjSymbol, Section
from relive.elf.symtab import ImageSymbol
from relive.errors import LayoutChanged, LinkError
from relive.link import Bound
from relive.patch.journal import Definition, DefinitionKind, SourceRecord
from relive.patch.modules import RunningModule
from relive.patch.rules import in_relro, is_label_table
from relive.patch.static_scope import (
    GCC_STATIC_SUFFIX,
    StaticScope,
    object_static_scopes,
    running_static_scopes,
)

MemoryReader = Callable[[int, int], bytes]

#: gcc names a function-local static ``name.N``; clang names it ``function.name``.
_GCC_STATIC_SUFFIX = GCC_STATIC_SUFFIX
#: LTO renames file-local symbols ``name.lto_priv.N`` to keep them apart.
_LTO_SUFFIX = re.compile(r"\.lto_priv\.\d+$")
_SKIPPED_SECTIONS = (
    ".eh_frame",
    ".note",
    ".comment",
    ".debug",
    ".init_array",
    ".fini_array",
    ".ctors",
    ".dtors",
    ".group",
    ".stack",
)


@dataclass(frozen=True, slots=True)
class OldDefinition:
    """A definition that exists in the running process."""

    name: str
    address: int  # runtime address (TLS: runtime address is meaningless; see tls_offset)
    size: int
    is_function: bool
    tls_offset: int | None = None
    from_journal: bool = False
    #: A weak definition (a strong one elsewhere would have won at link time).
    is_weak: bool = False


def is_skipped_section(section: Section) -> bool:
    """Sections never loaded: unwind tables, notes, constructors, debug info."""
    return not section.is_alloc or section.name.startswith(_SKIPPED_SECTIONS)


class Binder:
    """Finds old definitions for the symbols of one new object."""

    def __init__(
        self,
        obj: ObjectFile,
        module: RunningModule,
        modules: list[RunningModule],
        record: SourceRecord | None,
        read_memory: MemoryReader,
        arch: Arch,
        call_function: Callable[[int], int] | None = None,
        earlier: Mapping[str, Definition] | None = None,
        peers: Mapping[str, int] | None = None,
        provisional: int = 0,
    ) -> None:
        self.obj = obj
        self.module = module
        self.modules = modules
        self.record = record
        self.read_memory = read_memory
        self.arch = arch
        #: Runs a function of the target (no arguments) and returns its result.
        self.call_function = call_function
        #: New global functions and variables earlier reloads of other files added.
        self.earlier = earlier or {}
        #: Names that other files of this same reload define and the process does
        #: not (name -> index of that file): one symbol space for one reload.
        self.peers = peers or {}
        #: Where a peer's symbol is assumed to be until its block has an address
        #: (an address in reach of this module, so that a trial link succeeds).
        self.provisional = provisional
        #: The peer symbols the new code uses (name -> index of the defining file).
        self.peer_refs: dict[str, int] = {}
        self._externals: dict[str, Bound | None] = {}
        self._file_groups: set[str] | None = None
        self._locals_by_name: dict[str, list[ImageSymbol]] | None = None
        self._locals_by_base: dict[str, dict[str, list[ImageSymbol]]] = {}
        self._locals_by_place: dict[str, dict[tuple[str, int], list[ImageSymbol]]] = {}
        self._old: dict[tuple[int, str], OldDefinition | None] = {}
        #: New object's symbol index -> scope, and scope -> running link-time
        #: address; None when either side has no DWARF for the file.
        self._scopes: tuple[dict[int, StaticScope], dict[StaticScope, int]] | None = None
        self._scopes_read = False
        #: The new object's side of ``_scopes`` (its source and statics), once read.
        self._object_scopes: tuple[str, dict[int, StaticScope]] | None = None
        self._object_scopes_read = False

    # -- definitions of the reloaded file ---------------------------------------

    def find_old(self, symbol: ObjSymbol) -> OldDefinition | None:
        """The running definition a defined symbol of the new object replaces, if any.

        Remembered per symbol: a big unit asks for each function several times
        (its decision, every call to it, its section's binding)."""
        key = (symbol.index, symbol.name)
        try:
            return self._old[key]
        except KeyError:
            found = self._old[key] = self._find_old(symbol)
            return found

    def _find_old(self, symbol: ObjSymbol) -> OldDefinition | None:
        scope = self.static_scope(symbol)
        found = self._journal_definition(symbol, scope)
        if found is not None:
            return OldDefinition(
                found.name,
                found.address,
                found.size,
                found.kind is DefinitionKind.FUNCTION,
                from_journal=True,
            )
        if scope is not None:
            image_symbol = self._find_scoped(symbol, scope)
        else:
            image_symbol = self._find_image_symbol(symbol)
        if image_symbol is None:
            return None
        tls = image_symbol.type == STT_TLS
        return OldDefinition(
            name=image_symbol.name,
            address=0 if tls else self.module.runtime(image_symbol.value),
            size=image_symbol.size,
            is_function=image_symbol.is_function,
            tls_offset=image_symbol.value if tls else None,
            is_weak=image_symbol.bind == STB_WEAK,
        )

    def _journal_definition(
        self, symbol: ObjSymbol, scope: StaticScope | None
    ) -> Definition | None:
        """What an earlier reload of this file added for ``symbol``: by its scope for
        a function's static (its ``.N`` may name another function's now), else by name."""
        if self.record is None:
            return None
        file = symbol.file if symbol.is_local else None
        if scope is None:
            found = self.record.definitions.get(symbol.name)
            return found if found is not None and (found.file or None) == file else None
        label = scope.label()
        return next(
            (
                d
                for d in self.record.definitions.values()
                if d.scope == label and (d.file or None) == file
            ),
            None,
        )

    # -- function-scope statics -----------------------------------------------------

    def static_scope(self, symbol: ObjSymbol) -> StaticScope | None:
        """The function (and name) a gcc ``name.N`` static of the new object is
        declared in, when both the object and the running program have DWARF for it."""
        if not symbol.is_local or symbol.is_function or not _GCC_STATIC_SUFFIX.search(symbol.name):
            return None
        if not self._scopes_read:
            self._scopes_read = True
            self._scopes = self._read_scopes()
        return None if self._scopes is None else self._scopes[0].get(symbol.index)

    def object_scopes(self) -> dict[int, StaticScope]:
        """The new object's function-scope statics by symbol index, from its own DWARF
        (empty without it), read once: what :meth:`static_scope` is made of, without
        the running program's side (``patch.codekey`` digests it)."""
        if not self._object_scopes_read:
            self._object_scopes_read = True
            self._object_scopes = object_static_scopes(self.obj)
        return {} if self._object_scopes is None else self._object_scopes[1]

    def _read_scopes(self) -> tuple[dict[int, StaticScope], dict[StaticScope, int]] | None:
        self.object_scopes()
        new = self._object_scopes
        if new is None:
            return None
        running = running_static_scopes(self.module.file, new[0])
        return None if running is None else (new[1], running)

    def _find_scoped(self, symbol: ObjSymbol, scope: StaticScope) -> ImageSymbol | None:
        """The running storage of the same function's static, None when that function
        or its static is new (new storage, starting at its initializer)."""
        assert self._scopes is not None
        address = self._scopes[1].get(scope)
        if address is None:
            return None
        file = symbol.file or self.obj.source_name or ""
        base = _GCC_STATIC_SUFFIX.sub("", symbol.name)
        candidates = [
            s
            for s in self._file_locals_by_place(file).get((base, address), [])
            if s.type == symbol.type
        ]
        if len(candidates) != 1:
            raise LinkError(
                f"static {symbol.name} of {file} ({scope.name} in {scope.function}) cannot be "
                "matched: the running program's DWARF places it where its symbol table does not",
                hint="rebuild the program with -g and restart it, or reload with --function "
                f"to leave {scope.function} alone",
            )
        return candidates[0]

    def _find_image_symbol(self, symbol: ObjSymbol) -> ImageSymbol | None:
        image = self.module.image
        file = symbol.file or self.obj.source_name or ""
        if not symbol.is_local:
            found = image.find_global(symbol.name)
            # LTO internalises a program's globals into locals of an unnamed file.
            return found if found is not None else self._find_moved_local(symbol, file)
        exact = [s for s in image.find_file_local(symbol.name, file) if s.type == symbol.type]
        if len(exact) == 1:
            return exact[0]
        base = _GCC_STATIC_SUFFIX.sub("", symbol.name)
        candidates = exact or [
            s for s in self._file_locals_by_base(file).get(base, []) if s.type == symbol.type
        ]
        if not candidates and not self._has_file_group(file):
            return self._find_moved_local(symbol, file)
        return _unique(symbol, file, candidates)

    def _file_locals_by_base(self, file: str) -> dict[str, list[ImageSymbol]]:
        """The locals of ``file``'s groups by name without gcc's ``.N`` suffix, built
        once per file: a big unit has thousands of statics to look up."""
        index = self._locals_by_base.get(file)
        if index is None:
            index = {}
            for s in self.module.image.iter_file_locals(file):
                index.setdefault(_GCC_STATIC_SUFFIX.sub("", s.name), []).append(s)
            self._locals_by_base[file] = index
        return index

    def _file_locals_by_place(self, file: str) -> dict[tuple[str, int], list[ImageSymbol]]:
        """The same locals by (name without ``.N``, address), built once per file: a
        unit whose thousands of functions each have a ``static long calls`` looks
        each one up by where DWARF places it (a scan per static was quadratic)."""
        index = self._locals_by_place.get(file)
        if index is None:
            index = {}
            for base, symbols in self._file_locals_by_base(file).items():
                for s in symbols:
                    index.setdefault((base, s.value), []).append(s)
            self._locals_by_place[file] = index
        return index

    def _has_file_group(self, file: str) -> bool:
        if self._file_groups is None:
            names = set(self.module.image.iter_file_names())
            self._file_groups = names | {os.path.basename(n) for n in names}
        return file in self._file_groups or os.path.basename(file) in self._file_groups

    def _find_moved_local(self, symbol: ObjSymbol, file: str) -> ImageSymbol | None:
        """A symbol LTO renamed (``name.lto_priv.N``) or regrouped: unique by name, or an error."""
        if self._locals_by_name is None:
            self._locals_by_name = {}
            for s in self.module.image.iter_symbols():
                if s.is_local:
                    key = _LTO_SUFFIX.sub("", s.name)
                    self._locals_by_name.setdefault(key, []).append(s)
        candidates = [
            s
            for s in self._locals_by_name.get(_LTO_SUFFIX.sub("", symbol.name), [])
            if s.type == symbol.type and s.is_defined
        ]
        return _unique(symbol, file, candidates)

    # -- data sections ------------------------------------------------------------

    def bind_data_section(self, index: int) -> Bound | None:
        """The existing storage of a writable or TLS section, or None if it is new.

        A section binds as a whole when every named symbol in it exists in the
        process at the same relative offset; then references through the
        section symbol (gas turns references to statics into ``section+off``)
        land on the old storage too.
        """
        section = self.obj.sections[index]
        if not (section.is_write or section.is_tls):
            return None
        symbols = [s for s in self.obj.iter_section_symbols(index) if s.name]
        if not symbols:
            return None
        if not section.is_tls and is_label_table(self.obj, index):
            return None  # code, not state: a new copy goes with the new function
        olds = [(s, self.find_old(s)) for s in symbols]
        found = [(s, o) for s, o in olds if o is not None]
        if not found:
            return None
        missing = [s.name for s, o in olds if o is None]
        starts = {_section_start(s, o) for s, o in found}
        if missing or len(starts) != 1:
            raise LinkError(
                f"section {section.name} of {self.obj.path} mixes existing and new variables "
                f"({', '.join(missing) or 'moved variables'})",
                hint="compile with -fdata-sections so each variable has its own section",
            )
        for s, o in found:
            _check_size(s, o)
        start = starts.pop()
        if section.is_tls:
            return self._tls_bound(start)
        return Bound(address=start, size=section.size)

    def is_read_only_after_start(self, bound: Bound) -> bool:
        """Whether bound storage lies in the module's PT_GNU_RELRO range: the
        program cannot have changed it since start-up, so it is not state."""
        if bound.address is None or bound.size is None:
            return False
        relro = self.module.image.relro
        if relro is None:
            return False
        start = self.module.runtime(relro[0])
        return in_relro(
            bound.address, bound.address + bound.size, (start, start + relro[1] - relro[0])
        )

    def _tls_bound(self, block_offset: int) -> Bound:
        module_tls = self.module_tls_offset()
        return Bound(
            tpoff=None if module_tls is None else block_offset - module_tls,
            tls_offset=block_offset,
            tls_module_id=self.module_tls_id(),
        )

    def module_tls_offset(self) -> int | None:
        """Where the module's TLS block sits below the thread pointer: tpoff(sym) is
        sym - offset.  The executable's comes from the TLS ABI's formula (``Arch``),
        a library's from a slot the dynamic linker filled."""
        tls = self.module.image.tls_segment
        if tls is None:
            return None
        if not self.module.is_main:
            return self._library_tls_offset()
        return self.arch.executable_tls_offset(tls.memsz, tls.align, tls.vaddr)

    def _library_tls_offset(self) -> int | None:
        """A library's static TLS offset, from a slot the dynamic linker filled.

        A library built with initial-exec accesses has TPOFF64 slots holding
        ``sym + addend - offset``; one of them gives the offset.  A library
        without any (only general-dynamic accesses) gives None: new code then
        needs the __tls_get_addr path, which works without it.
        """
        image = self.module.image
        for reloc in image.dynamic_relocations:
            if reloc.type != self.arch.tpoff_reloc_type:
                continue
            value = 0
            if reloc.symbol:
                symbol = image.find_dynamic_symbol(reloc.symbol)
                if symbol is None or not symbol.is_defined:
                    continue
                value = symbol.value
            slot = _read_pointer(self.read_memory, self.module.runtime(reloc.offset))
            return value + reloc.addend - _signed(slot)
        return None

    def module_tls_id(self) -> int | None:
        """The TLS module id: 1 for the executable, else read from a DTPMOD64 slot."""
        return 1 if self.module.is_main else self._read_module_id(self.module)

    # -- external symbols -----------------------------------------------------------

    def resolve_external(self, name: str) -> Bound | None:
        """The running definition of an undefined symbol, or None if there is none."""
        if name not in self._externals:
            self._externals[name] = self._resolve(name)
        return self._externals[name]

    def _resolve(self, name: str) -> Bound | None:
        order = [self.module] + [m for m in self.modules if m is not self.module]
        for module in order:
            symbol = module.image.find_global(name)
            if symbol is None and module is self.module:
                # Hidden symbols (visibility or version script) became locals of the
                # linker's unnamed STT_FILE group; they are still the module's own.
                hidden = module.image.find_file_local(name, "")
                symbol = hidden[0] if len(hidden) == 1 else None
            if symbol is None:
                continue
            if symbol.type == STT_TLS:
                return self._external_tls(module, symbol)
            if symbol.type == STT_GNU_IFUNC:
                return Bound(address=self._resolve_ifunc(module, symbol), size=symbol.size)
            return Bound(address=module.runtime(symbol.value), size=symbol.size)
        return self._resolve_added(name)

    def _resolve_added(self, name: str) -> Bound | None:
        """A function or variable that relive added: in an earlier reload of another
        file (the journal knows it), or in another file of this reload."""
        earlier = self.earlier.get(name)
        if earlier is not None:
            return Bound(address=earlier.address, size=earlier.size)
        peer = self.peers.get(name)
        if peer is not None:
            self.peer_refs[name] = peer
            return Bound(address=self.provisional)
        return None

    def _external_tls(self, module: RunningModule, symbol: ImageSymbol) -> Bound:
        if module is self.module:
            return self._tls_bound(symbol.value)
        tpoff_slot = self.module.image.find_tls_got_slot(symbol.name, "TPOFF64")
        tpoff = None
        if tpoff_slot is not None:
            tpoff = struct.unpack("<q", self.read_memory(self.module.runtime(tpoff_slot), 8))[0]
        module_id = 1 if module.is_main else self._read_module_id(module)
        return Bound(tpoff=tpoff, tls_offset=symbol.value, tls_module_id=module_id)

    def _resolve_ifunc(self, module: RunningModule, symbol: ImageSymbol) -> int:
        """The implementation the process chose for an IFUNC, never its resolver.

        glibc resolves IRELATIVE slots at start-up; a slot whose addend is the
        resolver holds the chosen implementation.  Failing that, a GOT slot of
        any module that imports the symbol does, once bound: a lazy slot not yet
        bound points back into its own module's PLT.  The implementation may lie
        outside the defining library: glibc's gettimeofday and time resolve into
        the vDSO.
        """
        slot = module.image.find_irelative_slot(symbol.value)
        if slot is not None:
            return _read_pointer(self.read_memory, module.runtime(slot))
        for other in self.modules:
            got = other.image.find_got_slot(symbol.name)
            if got is None:
                continue
            value = _read_pointer(self.read_memory, other.runtime(got))
            if value and not other.start <= value < other.end:
                return value
        if self.call_function is not None:
            return self.call_function(module.runtime(symbol.value))
        raise LinkError(
            f"cannot tell which implementation of {symbol.name} (an IFUNC in {module.name}) "
            "the process uses",
            hint=f"call {symbol.name} somewhere in the original program, or avoid it",
        )

    def _read_module_id(self, module: RunningModule) -> int | None:
        """A library's TLS module id, read from a slot the dynamic linker filled."""
        for reloc in module.image.dynamic_relocations:
            if reloc.type == self.arch.dtpmod_reloc_type:
                return _read_pointer(self.read_memory, module.runtime(reloc.offset))
        return None


def _unique(symbol: ObjSymbol, file: str, candidates: list[ImageSymbol]) -> ImageSymbol | None:
    """The one candidate, None for none, an error naming them when ambiguous."""
    if len({s.value for s in candidates}) > 1:
        names = ", ".join(sorted(s.name for s in candidates))
        raise LinkError(
            f"static {symbol.name} of {file} cannot be matched unambiguously "
            f"(the running program has {names})",
            hint="give the statics distinct names, or reload with --function to leave "
            "their functions alone",
        )
    return candidates[0] if candidates else None


def _section_start(symbol: ObjSymbol, old: OldDefinition) -> int:
    return (old.tls_offset if old.tls_offset is not None else old.address) - symbol.value


def _check_size(symbol: ObjSymbol, old: OldDefinition) -> None:
    if old.size and symbol.size and old.size != symbol.size:
        raise LayoutChanged(
            f"{symbol.name} changed size from {old.size} to {symbol.size} bytes: the running "
            "program's storage cannot hold the new layout",
            hint="restart the program to change a variable's type, or keep its size",
        )


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _read_pointer(read_memory: MemoryReader, address: int) -> int:
    value: int = struct.unpack("<Q", read_memory(address, 8))[0]
    return value

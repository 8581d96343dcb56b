"""Keys that tell, from the new object alone, that a function's fingerprint is the one
the last reload computed.

A fingerprint (``patch.diff``) says what a function's relocated fields refer to in
the process: it asks where each name is bound (a variable the program has, or new
memory) and reads the content of new data, which is why computing one costs more
than reading the function.  Symbol indices shift between two compiles, so the
function's relocations alone say nothing; here they are made stable in two parts:

* the object's *layout digest*: everything a fingerprint can read outside the
  functions' own code: the symbol table in order (names, kinds, bindings,
  sections, and the place and size of everything but functions), each
  function-scope static's scope (``patch.static_scope``: after a renumbering a
  ``name.N`` names another function's static), every data section's bytes, size
  and flags and its relocations, and the names of the code sections;
* a function's *code key*: the bytes of its section and of its relocations, as
  stored (symbol indices included), for a function that is its whole section
  (``-ffunction-sections``, which every compile relive makes uses).

Two objects with the same layout digest number their symbols alike and hold the
same data, so a function with the same code key refers to the same things and
reads the same content: planned in the same binding context (``patch.matched``)
its fingerprint is the same.  Anything else (a string edited, a static added, a
function sharing its section) gets no reuse: its fingerprint is computed.
"""

from __future__ import annotations

import array
from collections.abc import Callable

from relive import digests
from relive.elf.constants import (
    SHF_ALLOC,
    SHF_EXECINSTR,
    SHT_RELA,
    SHT_STRTAB,
    SHT_SYMTAB,
    SHT_SYMTAB_SHNDX,
    STB_LOCAL,
    STT_FUNC,
    STT_GNU_IFUNC,
    STT_SECTION,
)
from relive.elf.objfile import ObjectFile, ObjSymbol, Section

#: The scope label of a function-scope static (None: not one, or no DWARF).
ScopeOf = Callable[[ObjSymbol], str | None]

#: Bytes of an ``Elf64_Sym``.
_SYM_SIZE = 24
#: Sections that change with the code but that no fingerprint reads.
_NOT_READ = (".eh_frame",)


class CodeKeys:
    """The layout digest and the code keys of one object."""

    def __init__(self, obj: ObjectFile, scope_of: ScopeOf) -> None:
        self.obj = obj
        self.scope_of = scope_of
        #: Relocation tables by the section they apply to.
        self._tables: dict[int, list[Section]] = {}
        #: The string tables of symbol tables.
        self._symbol_names: set[int] = set()
        for section in obj.sections:
            if section.type == SHT_RELA and 0 < section.info < len(obj.sections):
                self._tables.setdefault(section.info, []).append(section)
            elif section.type == SHT_SYMTAB:
                self._symbol_names.add(section.link)
        self._layout: str | None = None

    @property
    def layout(self) -> str:
        """The object's layout digest (hex), computed once."""
        if self._layout is None:
            self._layout = self._digest_layout()
        return self._layout

    def code_key(self, symbol: ObjSymbol) -> str:
        """The function's code key (hex); "" for a function that is not its whole
        section, or whose section has several relocation tables."""
        section = self.obj.sections[symbol.shndx]
        tables = self._tables.get(symbol.shndx, ())
        if symbol.value or symbol.size != section.size or len(tables) > 1:
            return ""
        digest = digests.blake2b(section.data, digest_size=10)
        digest.update(b"|")
        for table in tables:
            digest.update(table.data)
        return digest.hexdigest()

    def _digest_layout(self) -> str:
        obj = self.obj
        sections = obj.sections
        # Which section each index is (symbols name sections by index).
        digest = digests.blake2b("\0".join([s.name for s in sections]).encode(), digest_size=16)
        update = digest.update
        for section in sections:
            flags = section.flags
            kind = section.type
            if kind == SHT_SYMTAB:
                update(_names_and_kinds(section.data))
            elif kind == SHT_SYMTAB_SHNDX or (
                kind == SHT_STRTAB and section.index in self._symbol_names
            ):
                update(section.data)
            elif (
                flags & SHF_ALLOC
                and not flags & SHF_EXECINSTR
                and kind != SHT_RELA
                and not section.name.startswith(_NOT_READ)
            ):
                # Data: all of it (code is read through the code keys; the rest
                # of the object, debug info, unwind tables, no fingerprint reads).
                head = f"|{section.index}|{kind}|{flags}|{section.size}|{section.entsize}|"
                update(head.encode())
                update(section.data)
                for table in self._tables.get(section.index, ()):
                    update(b"|rela|")
                    update(table.data)
        # The symbol table as stored holds every function's size, which changes
        # with its code: the places and sizes count for everything else only.
        function = (STT_FUNC, STT_GNU_IFUNC)
        others = [s for s in obj.symbols if s.type not in function]
        update(array.array("Q", [s.value for s in others]).tobytes())
        update(array.array("Q", [s.size for s in others]).tobytes())
        scope_of = self.scope_of
        scopes = [
            f"{s.index}:{scope_of(s)}"
            for s in others
            if s.type != STT_SECTION and s.bind == STB_LOCAL and "." in s.name
        ]
        update("\n".join(scopes).encode())
        return digest.hexdigest()


def _names_and_kinds(symtab: bytes | memoryview) -> bytes:
    """Of each ``Elf64_Sym``, its first eight bytes: name, type and binding,
    visibility, section (not its value and size)."""
    usable = len(symtab) - len(symtab) % _SYM_SIZE
    return memoryview(symtab[:usable]).cast("Q")[0::3].tobytes()

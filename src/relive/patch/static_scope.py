"""Which function a function-scope static belongs to, from DWARF.

gcc names a function's ``static int count`` ``count.N`` with a counter of the
whole compile: a function with its own ``count`` added before the others
renumbers them all, so the name says nothing about whose static it is.  The
DWARF does: a ``DW_TAG_variable`` with a ``DW_OP_addr`` location nested in the
``DW_TAG_subprogram`` (or a lexical block) of ``f`` is f's.  A static is named
here by its scope, ``(function, name, ordinal)``, the ordinal telling apart
several statics of one name in one function (in lexical blocks), in the order
the DWARF lists them.

The running program's side maps link-time addresses to scopes; the new
object's maps symbols (through the relocations of ``.debug_info``).  Either is
None when its DWARF is missing or unreadable: the binder then keeps matching
by name (and refuses when that is ambiguous).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from relive.elf.dwarf_statics import FunctionStatic, function_statics, iter_function_statics
from relive.elf.dwarf_types import Malformed, open_dwarf
from relive.elf.filecache import FileIdentity, file_identity
from relive.elf.objfile import ObjectFile
from relive.errors import BadObject, ReliveError
from relive.patch.modules import RunningModule

#: gcc names a function-local static ``name.N``.
GCC_STATIC_SUFFIX = re.compile(r"\.\d+$")
_P = TypeVar("_P", bound=Hashable)


@dataclass(frozen=True, slots=True)
class StaticScope:
    """Where a function-scope static is declared: which function, which name."""

    function: str
    name: str
    #: Among the statics called ``name`` in ``function``, which one (DWARF order).
    ordinal: int

    def label(self) -> str:
        """How the journal names the scope."""
        return f"{self.function}:{self.name}:{self.ordinal}"


def running_static_scopes(program: str, source: str) -> dict[StaticScope, int] | None:
    """Scope -> link-time address of each function-scope static ``source`` put in
    the running program's file ``program``; None without DWARF for it."""
    try:
        unit = open_dwarf(program).find_unit(source)
        if unit is None:
            return None
        statics = function_statics(unit)
        return dict(
            _iter_statics(statics, lambda location, _: int.from_bytes(location[1:], "little"))
        )
    except (Malformed, BadObject):
        return None


def prepare_static_scopes(module: RunningModule, source: Path) -> None:
    """Read the running module's statics of ``source`` while the compiler runs
    (a sqlite3-sized unit takes a tenth of a second or more).

    Only reads the program's file on disk; whatever goes wrong is met (and
    answered with None) again when the new object is bound.  Nothing is started
    when an earlier reload read them (same file, unchanged): they are kept, and a
    thread would delay the compile (a watch reloads the same unit again and again)."""
    key = (module.file, str(source))
    try:
        identity: FileIdentity | None = file_identity(os.stat(module.file))
    except OSError:
        identity = None
    if identity is not None and _read.get(key) == identity:
        return
    thread = threading.Thread(target=_read_quietly, args=(*key, identity), daemon=True)
    thread.start()


#: ``(file, source)`` whose statics this process has read, with the file's identity then.
_read: dict[tuple[str, str], FileIdentity] = {}


def _read_quietly(program: str, source: str, identity: FileIdentity | None) -> None:
    with contextlib.suppress(ReliveError):  # read again when binding, which says why
        if running_static_scopes(program, source) is not None and identity is not None:
            _read[(program, source)] = identity


def object_static_scopes(obj: ObjectFile) -> tuple[str, dict[int, StaticScope]] | None:
    """(the unit's source, symbol index -> scope) for the function-scope statics of a
    new object; None without DWARF.

    The address operands of a relocatable object are zero: where a static is comes
    from the relocation of ``.debug_info`` at its operand (section and offset)."""
    try:
        unit = obj.dwarf().find_unit()
        if unit is None:
            return None
        info = next((s.index for s in obj.sections if s.name == ".debug_info"), None)
        if info is None:
            return None

        symbols = obj.symbols

        def place(_: bytes, operand: int | None) -> tuple[int, int] | None:
            if operand is None:
                return None
            found = unit.file.info_relocation(operand)  # the DWARF reader's index
            if found is not None and found[0] < len(symbols):
                symbol = symbols[found[0]]
                return symbol.shndx, symbol.value + found[1]
            reloc = obj.relocation_at(info, operand)
            if reloc is None:
                return None
            return reloc.symbol.shndx, reloc.symbol.value + reloc.addend

        found: dict[int, StaticScope] = {}
        for scope, (shndx, offset) in _iter_statics(iter_function_statics(unit), place):
            named = [
                s
                for s in obj.iter_section_symbols(shndx)
                if s.value == offset and GCC_STATIC_SUFFIX.sub("", s.name) == scope.name
            ]
            if len(named) == 1:
                found[named[0].index] = scope
        return unit.path, found
    except (Malformed, BadObject):
        return None


def _iter_statics(
    statics: Iterable[FunctionStatic], place: Callable[[bytes, int | None], _P | None]
) -> Iterator[tuple[StaticScope, _P]]:
    """(scope, place) of each function-scope static, ``place`` telling where one is
    from its location expression and the position of its address operand in
    ``.debug_info``.

    A static listed twice (in an abstract instance and a concrete one) is one
    static: the ordinal counts distinct places, in the order the DWARF lists them."""
    seen: dict[tuple[str, str], list[_P]] = {}
    for static in statics:
        where = place(static.location, static.operand)
        if where is None:
            continue
        places = seen.setdefault((static.function, static.name), [])
        if where not in places:
            places.append(where)
            yield StaticScope(static.function, static.name, len(places) - 1), where

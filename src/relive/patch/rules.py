"""Which parts of a new object are state, which are code, and what a reload may not do.

The binder's default is "a writable variable that exists is state: bind it".
These rules carve out the exceptions a C programmer expects:

* a table the program's ``PT_GNU_RELRO`` segment covers is read-only once the
  program started: it cannot hold state, so it is compared like ``.rodata``;
* a static whose initial value holds addresses inside its own function (a
  computed-goto label table) belongs to that function's code;
* a weak definition never replaces a strong one the program took from another file;
* constructors of the new object are never run by relive (see
  :func:`find_constructors`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from relive.elf.objfile import ObjectFile, ObjSymbol
from relive.errors import ReliveError
from relive.patch.decision import Decision

_CONSTRUCTOR_SECTIONS = (".init_array", ".ctors", ".preinit_array")


def is_label_table(obj: ObjectFile, index: int) -> bool:
    """Whether data section ``index`` holds addresses inside a function (not its entry).

    ``static void *labels[] = {&&op_add, ...}`` is relocated against the code
    section at the labels' offsets: the table is part of that function's code,
    and a new copy of the function needs a new copy of the table.
    """
    for reloc in obj.relocations.get(index, ()):
        symbol = reloc.symbol
        if not symbol.is_defined or symbol.shndx >= len(obj.sections):
            continue
        if not obj.sections[symbol.shndx].is_exec:
            continue
        target = symbol.value + reloc.addend
        starts = {s.value for s in obj.iter_section_symbols(symbol.shndx) if s.is_function}
        if target not in starts:
            return True
    return False


def in_relro(start: int, end: int, relro: tuple[int, int] | None) -> bool:
    """Whether ``[start, end)`` lies inside the read-only-after-relocation range."""
    return relro is not None and relro[0] <= start and end <= relro[1]


@dataclass(frozen=True)
class Constructor:
    """A function the new object lists in ``.init_array`` (or ``.ctors``)."""

    section: str
    function: ObjSymbol


def find_constructors(obj: ObjectFile) -> list[Constructor]:
    """The functions the new object's constructor tables name.

    relive runs no constructor in a running program: one may take locks the
    held threads own (malloc, stdio) and deadlock the target.  A constructor
    that is new is refused; one the program already has ran at start-up.
    """
    return list(_iter_constructors(obj))


def _iter_constructors(obj: ObjectFile) -> Iterator[Constructor]:
    for section in obj.sections:
        if not section.name.startswith(_CONSTRUCTOR_SECTIONS):
            continue
        for reloc in obj.relocations.get(section.index, ()):
            function = _function_at(obj, reloc.symbol, reloc.addend)
            if function is not None:
                yield Constructor(section.name, function)


def _function_at(obj: ObjectFile, symbol: ObjSymbol, addend: int) -> ObjSymbol | None:
    if symbol.is_function:
        return symbol
    if not symbol.is_section or symbol.shndx >= len(obj.sections):
        return None
    offset = symbol.value + addend
    return next(
        (s for s in obj.iter_section_symbols(symbol.shndx) if s.is_function and s.value == offset),
        None,
    )


def check_constructors(obj: ObjectFile, statuses: Mapping[str, Decision]) -> list[str]:
    """Refuse new constructors; notices for changed ones (they are not run again).

    ``statuses`` maps the object's functions to their plan decision.
    """
    notices = []
    for constructor in find_constructors(obj):
        name = constructor.function.name
        status = statuses.get(name, Decision.NEW)
        if status is Decision.NEW:
            raise ReliveError(
                f"{obj.source_name or obj.path}: new constructor {name} ({constructor.section}): "
                "relive runs no constructors in a running program (one may wait forever on a "
                "lock a held thread owns)",
                hint=f"call {name}() from code the program runs, or restart the program",
            )
        if status is Decision.CHANGED:
            notices.append(
                f"{name} is a constructor: the program ran it at start-up; "
                "its new code runs only when something calls it"
            )
    return notices

"""Which sections of an object a block must hold: those its code can reach.

A linker's ``--gc-sections`` for relive's blocks.  A reload loads the changed and
new functions; of the unit's other sections it needs only those the loaded code
refers to, directly or through other loaded sections (a jump table, a table of
pointers to strings).  A big unit holds hundreds of tables the changed function
never reads: loading them all would fill the data arena with copies no code uses.

A reference is followed to the whole section its symbol lives in (a merged
string section addressed as section symbol + addend is kept whole, as a linker
keeps it).  Pure: an object and section indices in, section indices out.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

from relive.elf.objfile import ObjectFile

#: The unwind table: relive keeps only the loaded code's records, but those may
#: point into data (a language-specific data area, a personality's pointer).
_EH_FRAME = ".eh_frame"


def reachable_sections(
    obj: ObjectFile, roots: Iterable[int], candidates: Collection[int]
) -> set[int]:
    """The ``candidates`` that ``roots`` reach through relocations, transitively.

    ``roots`` are followed whether or not they are candidates (code that is
    loaded, a bound variable whose new initial value is copied in); a section
    outside ``candidates`` (bound to the running program, never loaded) is not
    followed further.
    """
    reached: set[int] = set()
    pending = list(dict.fromkeys(roots))
    seen = set(pending)
    while pending:
        for reloc in obj.relocations.get(pending.pop(), ()):
            symbol = reloc.symbol
            if not symbol.is_defined or symbol.is_absolute or symbol.is_common:
                continue
            target = symbol.shndx
            if target in candidates and target not in seen:
                seen.add(target)
                reached.add(target)
                pending.append(target)
    return reached


def unwind_data_roots(obj: ObjectFile) -> list[int]:
    """The data sections the unwind table refers to (never code): kept for the
    records of the loaded code, which may point at them.  C has few: the
    cleanup tables of ``-fexceptions`` code and its personality pointer."""
    return [
        reloc.symbol.shndx
        for section in obj.sections
        if section.name == _EH_FRAME
        for reloc in obj.relocations.get(section.index, ())
        if reloc.symbol.is_defined
        and not reloc.symbol.is_absolute
        and not reloc.symbol.is_common
        and not obj.sections[reloc.symbol.shndx].is_exec
    ]

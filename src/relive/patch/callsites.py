"""Moving a frame whose function changed shape: at a matching call site, or not at all.

When the old and new code of a function differ in shape, a thread that is
inside a callee (``usleep``, ``read``...) can still continue in the new code if
the call it will return to has a counterpart there (``Arch.match_call_sites``:
same callee, same ordinal among the calls to it), the frame has the same size
and keeps callee-saved registers in the same places, and everything the new
code reads after the call is where it expects it: each stack slot it reads is
the home of a variable that both versions keep at the same place with the same
size (DWARF: ``DW_OP_fbreg`` locations of the function's variables), and no
callee-saved register carries a value into the rest of the function.  At -O0,
where every variable lives in the frame, most edits that add no local pass;
optimised code, whose variables live in registers, does not.  Whatever cannot
be shown is refused, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relive.arch.base import Equivalent, Resume
from relive.elf.cfi import CfiError
from relive.elf.dwarf_types import (
    AT_ABSTRACT_ORIGIN,
    AT_BYTE_SIZE,
    AT_FRAME_BASE,
    AT_LOCATION,
    AT_TYPE,
    TAG_INLINED_SUBROUTINE,
    TAG_LEXICAL_BLOCK,
    TAG_PARAMETER,
    TAG_VARIABLE,
    Malformed,
    TypeUnit,
    open_dwarf,
)
from relive.elf.leb128 import Leb128Error, read_sleb
from relive.elf.objfile import ObjectFile
from relive.errors import ReliveError

HOW_CALL_SITE = "matching call site"
_OP_FBREG = 0x91
_OP_CALL_FRAME_CFA = 0x9C
_OP_REG6 = 0x56  # the frame pointer register of x86-64 (as DWARF numbers it)
_MAX_TYPE_CHAIN = 16


@dataclass(frozen=True)
class _Home:
    """Where one variable of a function lives: an offset from the frame base
    (the CFA, or the frame pointer), and a size."""

    offset: int
    size: int | None
    from_frame_pointer: bool

    def cfa_offset(self, frame_pointer: int | None) -> int | None:
        """The home's offset from the CFA (None: the frame pointer is not known)."""
        if not self.from_frame_pointer:
            return self.offset
        return None if frame_pointer is None else frame_pointer + self.offset


class CallSiteMap:
    """Resume points of a function whose shape changed: return addresses only."""

    def __init__(self, resumes: dict[int, Resume | str]) -> None:
        self.resumes = resumes

    def resume(self, old_pc: int) -> Resume | str:
        """The counterpart of a return address, or why there is none."""
        found = self.resumes.get(old_pc)
        if found is None:
            return "its new code has another shape and the thread is not at a call"
        return found


def match_call_sites(
    arch_match: Any,
    old: tuple[bytes, int, str | ObjectFile, str],
    new: tuple[bytes, int, str | ObjectFile, str],
    name: str,
    equivalent: Equivalent,
    callee_name: Any,
) -> CallSiteMap | str:
    """The call-site map of ``name`` between two versions, or why there is none.

    ``old`` and ``new`` are (code, address, ELF file with its DWARF, source path);
    the new side's file is its object, whose DWARF the plan has read (and indexed)
    already: opened again by path, a big unit would be indexed a second time.
    """
    sites = arch_match(old[0], old[1], new[0], new[1], equivalent)
    if isinstance(sites, str):
        return sites
    try:
        old_homes = _variable_homes(old[2], old[3], name)
        new_homes = _variable_homes(new[2], new[3], name)
    except (ReliveError, Malformed, IndexError, CfiError, Leb128Error):
        old_homes = new_homes = None  # then no slot can be shown to be the same variable
    resumes: dict[int, Resume | str] = {}
    for site in sites:
        where = f"at the call to {callee_name(site.callee)}"
        if site.problem:
            resumes[site.old_return] = f"{site.problem} ({where})"
            continue
        if site.live_registers:
            registers = ", ".join(sorted(site.live_registers))
            verb = "carries" if len(site.live_registers) == 1 else "carry"
            resumes[site.old_return] = (
                f"{registers} {verb} a value into the rest of the function {where}, "
                "and no debug information says it is the same variable in both versions"
            )
            continue
        if site.live_slots and (old_homes is None or new_homes is None):
            resumes[site.old_return] = f"no debug information describes its variables ({where})"
            continue
        problem = _check_slots(
            site.live_slots, old_homes or {}, new_homes or {}, site.frame_pointer
        )
        if problem:
            resumes[site.old_return] = f"{problem} ({where})"
        else:
            resumes[site.old_return] = Resume(site.new_return, (), HOW_CALL_SITE)
    return CallSiteMap(resumes)


def _check_slots(
    slots: frozenset[int],
    old_homes: dict[str, _Home],
    new_homes: dict[str, _Home],
    frame_pointer: int | None,
) -> str:
    """Why the slots the new code reads are not the same variables as before ("": they are)."""
    new_by_offset = {home.cfa_offset(frame_pointer): name for name, home in new_homes.items()}
    for offset in sorted(slots):
        name = new_by_offset.get(offset)
        if name is None:
            return f"the new code reads the frame at CFA{offset:+d}, which holds no variable"
        before = old_homes.get(name)
        if before is None:
            return f"the new code reads {name}, a variable the old code does not have"
        after = new_homes[name]
        old_at, new_at = before.cfa_offset(frame_pointer), after.cfa_offset(frame_pointer)
        if old_at != new_at or before.size != after.size or before.size is None:
            return (
                f"{name} moved from CFA{old_at or 0:+d} ({before.size} bytes) to "
                f"CFA{new_at or 0:+d} ({after.size} bytes)"
            )
    return ""


def inlined_functions(path: str, source: str, function: str) -> list[str]:
    """Names of the functions DWARF says were inlined into ``function`` (for messages)."""
    try:
        dwarf = open_dwarf(path)
        unit = dwarf.find_unit(str(Path(source))) or dwarf.find_unit(None)
        die = unit.find_function(function) if unit is not None else None
        if unit is None or die is None:
            return []
        found: list[str] = []
        _inlined(unit, die, found, 0)
        return found
    except (ReliveError, Malformed, IndexError):
        return []


def _inlined(unit: TypeUnit, die: Any, found: list[str], depth: int) -> None:
    if depth > _MAX_TYPE_CHAIN:
        return
    for child in unit.children(die):
        if child.tag == TAG_INLINED_SUBROUTINE:
            origin = child.ref(AT_ABSTRACT_ORIGIN)
            name = unit.die(origin).name() if origin is not None else None
            if name and name not in found:
                found.append(name)
        if child.children_at is not None:
            _inlined(unit, child, found, depth + 1)


def _variable_homes(file: str | ObjectFile, source: str, function: str) -> dict[str, _Home] | None:
    """Each variable and parameter of ``function`` (by scope-qualified name) and its home.

    None when a variable's place is not a fixed frame slot (then nothing is known)."""
    dwarf = file.dwarf() if isinstance(file, ObjectFile) else open_dwarf(file)
    unit = dwarf.find_unit(str(Path(source))) or dwarf.find_unit(None)
    if unit is None:
        return None
    die = unit.find_function(function)
    if die is None:
        return None
    base = die.attrs.get(AT_FRAME_BASE)
    if base != bytes([_OP_CALL_FRAME_CFA]) and base != bytes([_OP_REG6]):
        return None
    homes: dict[str, _Home] = {}
    if not _collect(unit, die, "", base == bytes([_OP_REG6]), homes):
        return None
    return homes


def _collect(unit: TypeUnit, die: Any, scope: str, from_rbp: bool, homes: dict[str, _Home]) -> bool:
    for index, child in enumerate(unit.children(die)):
        if child.tag == TAG_LEXICAL_BLOCK:
            if not _collect(unit, child, f"{scope}{index}/", from_rbp, homes):
                return False
            continue
        if child.tag not in (TAG_VARIABLE, TAG_PARAMETER) or child.name() is None:
            continue
        location = child.attrs.get(AT_LOCATION)
        if not isinstance(location, bytes) or not location or location[0] != _OP_FBREG:
            return False  # in a register, a location list, or optimised out
        homes[scope + str(child.name())] = _Home(
            read_sleb(location, 1)[0], _type_size(unit, child), from_rbp
        )
    return True


def _type_size(unit: TypeUnit, die: Any) -> int | None:
    for _ in range(_MAX_TYPE_CHAIN):
        size = die.number(AT_BYTE_SIZE)
        if size is not None:
            return int(size)
        ref = die.ref(AT_TYPE)
        if ref is None:
            return None
        die = unit.die(ref)
    return None

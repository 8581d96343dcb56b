"""Refuse new code that would use the running program's data with another layout.

Before anything is written, the DWARF of each reloaded source as the running
module was built from it is compared with the DWARF of the new object, for every
type the new code can reach in memory the program already holds:

* the globals and statics the loaded code refers to (bound to running storage);
* the types reached through pointers from the parameters, return values and
  locals of the loaded functions (a ``struct stats *`` reaches heap objects of
  the old layout); function-local statics as a whole.

A type used only by new code, or held only by value in the stack frame of a
redirected function, is the new code's own business.  A difference is refused
(:class:`LayoutChanged`, exit 8) unless the user allows it; a function whose
parameters or return type changed while code outside the reloaded files still
calls it is refused always.  Only the units of the reloaded sources are read.
"""

from __future__ import annotations

import os
import re
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from relive.arch.base import Arch
from relive.elf.dwarf_types import (
    AT_ABSTRACT_ORIGIN,
    AT_LOCATION,
    TAG_ARRAY,
    TAG_ENUM,
    TAG_INLINED_SUBROUTINE,
    TAG_LEXICAL_BLOCK,
    TAG_MEMBER,
    TAG_PARAMETER,
    TAG_POINTER,
    TAG_STRUCT,
    TAG_TYPEDEF,
    TAG_UNION,
    TAG_VARIABLE,
    Die,
    DwarfFile,
    Malformed,
    TypeUnit,
    open_dwarf,
)
from relive.elf.filecache import FileIdentity, file_identity
from relive.errors import BadObject, LayoutChanged, ReliveError
from relive.events import EventSink, Notice
from relive.patch.modules import RunningModule
from relive.patch.plan import Decision, FunctionDecision, ReloadPlan
from relive.patch.type_compare import (
    TypeComparer,
    describe,
    describe_parameters,
    signature_differs,
    strip,
    type_of,
)

#: DW_OP_addr, DW_OP_addrx, DW_OP_GNU_addr_index: a variable with a fixed address.
_STATIC_LOCATION_OPS = frozenset({0x03, 0xA1, 0xFB})
_CLONE_SUFFIX = re.compile(r"\.(constprop|isra|part|cold|lto_priv)(\.\d+)*$|\.cold$")
_PF_X = 1
_LOCAL_TAGS = frozenset({TAG_LEXICAL_BLOCK, TAG_INLINED_SUBROUTINE, TAG_PARAMETER, TAG_VARIABLE})
_MEMBER_TAGS = frozenset({TAG_MEMBER})
_BLOCK_TAGS = frozenset({TAG_LEXICAL_BLOCK, TAG_INLINED_SUBROUTINE})
HINT = (
    "objects already in the program keep the old layout; restart to change it, or reload "
    "with --allow-layout-change if you convert them yourself"
)


@dataclass
class _Units:
    """The running module's unit of one reloaded source, and the new object's."""

    plan: ReloadPlan
    old_file: DwarfFile
    old: TypeUnit
    new: TypeUnit


@dataclass
class _Signature:
    """A redirected function whose parameters or return type changed."""

    units: _Units
    decision: FunctionDecision
    old: Die
    new: Die


_warming: list[threading.Thread] = []
#: ``(file, source)`` whose DWARF this process has read, with the file's identity
#: then: read again, it is found in the caches, sooner than a thread starts.
_warm: dict[tuple[str, str], FileIdentity] = {}


def prepare_layout_check(module: RunningModule, source: Path) -> None:
    """Read the running module's DWARF for ``source`` while the compiler runs.

    Only reads the program's file on disk; whatever goes wrong is left for
    :func:`check_layouts` to meet (and report) again.  What an earlier reload
    read already (same file, unchanged) is looked up here: a thread would
    delay the compile by more (a watch reloads the same unit again and again).
    """
    key = (module.file, str(source))
    try:
        identity: FileIdentity | None = file_identity(os.stat(module.file))
    except OSError:
        identity = None
    if identity is not None and _warm.get(key) == identity:
        _preload(module.file, source)
        return
    thread = threading.Thread(target=_preload, args=(module.file, source, identity), daemon=True)
    _warming.append(thread)
    thread.start()


def _preload(file: str, source: Path, identity: FileIdentity | None = None) -> None:
    try:
        unit = open_dwarf(file).find_unit(str(source))
        if unit is not None:
            unit.preload()
    except (ReliveError, Malformed):
        return  # check_layouts reads it again and says what is wrong
    if identity is not None:
        _warm[(file, str(source))] = identity


def check_layouts(
    plans: Sequence[ReloadPlan], arch: Arch, allow_layout_change: bool, emit: EventSink
) -> None:
    """Raise LayoutChanged when new code would misread data the program holds.

    With ``allow_layout_change`` a layout difference is a notice instead (saying
    what the user takes on); changed signatures with callers elsewhere are
    refused either way.  Units without DWARF get a notice that nothing was checked.
    """
    while _warming:
        _warming.pop().join()
    changes: list[str] = []
    signatures: list[_Signature] = []
    pairs: list[_Units] = []
    for plan in plans:
        units = _find_units(plan, emit)
        if units is None:
            continue
        pairs.append(units)
        try:
            comparer = TypeComparer(units.old, units.new)
            changes.extend(_check_variables(units, comparer))
            changes.extend(_check_functions(units, comparer))
            signatures.extend(_changed_signatures(units, comparer))
            changes.extend(c for c in comparer.changes if c not in changes)
        except Malformed as e:
            emit(Notice(f"{_name(plan)}: unreadable DWARF ({e}): types were not checked"))
    if changes and not allow_layout_change:
        raise LayoutChanged("; ".join(changes), hint=HINT)
    refusal = _refuse_outside_callers(signatures, pairs, arch)
    if refusal is not None:
        raise refusal
    if changes:
        emit(
            Notice(
                f"layout change allowed: {'; '.join(changes)}. Data already in the program "
                "keeps its old layout and the new code reads and writes it with the new one: "
                "converting it is up to you"
            )
        )


def _name(plan: ReloadPlan) -> str:
    return plan.source.rsplit("/", 1)[-1]


def _find_units(plan: ReloadPlan, emit: EventSink) -> _Units | None:
    try:
        new = plan.obj.dwarf().find_unit()
        if new is None:
            emit(Notice(f"{_name(plan)}: the new object has no DWARF: types were not checked"))
            return None
        old_file = open_dwarf(plan.module.file)
        old = old_file.find_unit(new.path) or old_file.find_unit(plan.source)
    except (Malformed, BadObject) as e:
        # The DWARF is only read for this check: the reload itself does not need it.
        emit(Notice(f"{_name(plan)}: unreadable DWARF ({e}): types were not checked"))
        return None
    if old is None:
        emit(
            Notice(
                f"{_name(plan)}: {plan.module.name} has no DWARF for it: type and layout "
                "changes could not be checked (build the program with -g)"
            )
        )
        return None
    return _Units(plan, old_file, old, new)


# -- data the loaded code refers to -------------------------------------------------


def _referenced_data(plan: ReloadPlan) -> set[str]:
    """Names of the variables the loaded sections refer to that live in running storage.

    Data loaded anew (new variables, constants, copied tables) is the new code's own.
    """
    obj = plan.obj
    request = plan.layout.request
    bound = request.bound_sections
    symbols = {
        reloc.symbol.index: reloc.symbol
        for index in request.load
        for reloc in obj.relocations.get(index, ())
    }
    names: set[str] = set()
    for symbol in symbols.values():
        if symbol.is_function:
            continue
        if not symbol.is_defined or symbol.is_common:
            if symbol.name in request.externals:
                names.add(symbol.name)
        elif symbol.shndx in bound and not obj.sections[symbol.shndx].is_exec:
            if not symbol.is_section:
                names.add(symbol.name)
            else:
                names.update(s.name for s in obj.iter_section_symbols(symbol.shndx) if s.name)
    return names


def _check_variables(units: _Units, comparer: TypeComparer) -> Iterator[str]:
    for name in sorted(_referenced_data(units.plan)):
        if "." in name:
            # A compiler's name (gcc's ``count.N`` for a function's static, LTO's
            # ``.lto_priv.N``): DWARF names the variable without it, so no lookup can
            # find it, and a lookup that fails reads the whole unit (both of them).
            # A function's statics are compared with their function's locals.
            continue
        # The running side first: it is indexed already (read while compiling).
        old = units.old.find_variable(name)
        new = units.new.find_variable(name) if old is not None else None
        if new is None or old is None:
            continue  # new data, or not a variable of this unit
        found = comparer.compare(type_of(units.old, old), type_of(units.new, new))
        if found is not None:
            yield f"{name}: {found}"


# -- what loaded functions reach ------------------------------------------------------


def _loaded_functions(plan: ReloadPlan) -> list[str]:
    names = {
        _CLONE_SUFFIX.sub("", d.name)
        for d in plan.decisions
        if d.status in (Decision.CHANGED, Decision.NEW)
    }
    return sorted(names)


def _check_functions(units: _Units, comparer: TypeComparer) -> Iterator[str]:
    held: dict[tuple[int, str], Die] = {}
    seen: set[int] = set()
    inlined: set[int] = set()
    for name in _loaded_functions(units.plan):
        new = units.new.find_function(name)
        if new is None:
            continue
        old = units.old.find_function(name)
        _frame_roots(units.new, type_of(units.new, new), held, seen)
        for kind, child in _iter_locals(units.new, new, inlined):
            if kind == "static":
                yield from _compare_static(units, comparer, name, old, child)
            else:
                _frame_roots(units.new, type_of(units.new, child), held, seen)
    for (tag, type_name), die in held.items():
        before = units.old.find_type(tag, type_name)
        if before is None:
            continue  # a type the running unit does not know: new code's own
        found = comparer.compare(before, die)
        if found is not None:
            yield f"{type_name}: {found}"


def _iter_locals(
    unit: TypeUnit, function: Die, inlined: set[int] | None = None
) -> Iterator[tuple[str, Die]]:
    """("frame" or "static", DIE) for each parameter and variable, blocks included.

    A function inlined here is visited once through its abstract instance (where
    its parameters and variables have their types), however often it was inlined.
    """
    for child in unit.children(function, _LOCAL_TAGS):
        if child.tag == TAG_INLINED_SUBROUTINE:
            origin = child.ref(AT_ABSTRACT_ORIGIN)
            if inlined is not None and origin is not None and origin not in inlined:
                inlined.add(origin)
                yield from _iter_locals(unit, unit.die(origin), inlined)
            yield from _iter_nested(unit, child, inlined)
        elif child.tag == TAG_LEXICAL_BLOCK:
            yield from _iter_locals(unit, child, inlined)
        elif child.tag == TAG_PARAMETER:
            yield "frame", child
        elif child.tag == TAG_VARIABLE:
            location = child.attrs.get(AT_LOCATION)
            static = (
                isinstance(location, bytes)
                and location[:1] != b""
                and (location[0] in _STATIC_LOCATION_OPS)
            )
            yield ("static" if static else "frame"), child


def _iter_nested(unit: TypeUnit, block: Die, inlined: set[int] | None) -> Iterator[tuple[str, Die]]:
    """Functions inlined inside an inlined function (its own locals come from its origin)."""
    for child in unit.children(block, _BLOCK_TAGS):
        if child.tag == TAG_LEXICAL_BLOCK:
            yield from _iter_nested(unit, child, inlined)
        else:
            origin = child.ref(AT_ABSTRACT_ORIGIN)
            if inlined is not None and origin is not None and origin not in inlined:
                inlined.add(origin)
                yield from _iter_locals(unit, unit.die(origin), inlined)
            yield from _iter_nested(unit, child, inlined)


def _compare_static(
    units: _Units, comparer: TypeComparer, function: str, old_function: Die | None, new: Die
) -> Iterator[str]:
    name = new.name()
    if old_function is None or name is None:
        return
    old = next(
        (
            d
            for kind, d in _iter_locals(units.old, old_function)
            if kind == "static" and d.name() == name
        ),
        None,
    )
    if old is None:
        return
    found = comparer.compare(type_of(units.old, old), type_of(units.new, new))
    if found is not None:
        yield f"{name} (static in {function}): {found}"


def _frame_roots(
    unit: TypeUnit, die: Die | None, held: dict[tuple[int, str], Die], seen: set[int]
) -> None:
    """Named types that a value in a stack frame reaches through pointers."""
    stripped, _ = strip(unit, die)
    if stripped is None or stripped.offset in seen:
        return
    seen.add(stripped.offset)
    if stripped.tag == TAG_POINTER:
        _hold(unit, type_of(unit, stripped), held, seen)
    elif stripped.tag in (TAG_STRUCT, TAG_UNION):
        for member in unit.children(stripped, _MEMBER_TAGS):
            _frame_roots(unit, type_of(unit, member), held, seen)
    elif stripped.tag == TAG_ARRAY:
        _frame_roots(unit, type_of(unit, stripped), held, seen)


def _hold(
    unit: TypeUnit, die: Die | None, held: dict[tuple[int, str], Die], seen: set[int]
) -> None:
    """``die`` is memory the program may already hold: remember it by name."""
    stripped, label = strip(unit, die)
    if stripped is None:
        return
    if stripped.tag == TAG_POINTER:
        _hold(unit, type_of(unit, stripped), held, seen)
        return
    name = stripped.name()
    if stripped.tag in (TAG_STRUCT, TAG_UNION, TAG_ENUM) and name:
        held.setdefault((stripped.tag, name), stripped)
    elif label and die is not None:
        typedef = _first_typedef(unit, die)
        if typedef is not None:
            held.setdefault((TAG_TYPEDEF, label), typedef)


def _first_typedef(unit: TypeUnit, die: Die) -> Die | None:
    """The first typedef under qualifiers (``const stats_t`` -> ``stats_t``)."""
    for _ in range(16):
        if die.tag == TAG_TYPEDEF:
            return die
        inner = type_of(unit, die)
        if inner is None:
            return None
        die = inner
    return None


# -- signatures ---------------------------------------------------------------------


def _changed_signatures(units: _Units, comparer: TypeComparer) -> Iterator[_Signature]:
    for decision in units.plan.with_status(Decision.CHANGED):
        if "." in decision.name:
            continue  # compiler clones change their signatures on purpose
        new = units.new.find_function(decision.name)
        old = units.old.find_function(decision.name)
        if new is not None and old is not None and signature_differs(comparer, old, new):
            yield _Signature(units, decision, old, new)


def _refuse_outside_callers(
    signatures: list[_Signature], pairs: list[_Units], arch: Arch
) -> LayoutChanged | None:
    reloaded = {pair.old.path for pair in pairs}
    for signature in signatures:
        old = signature.decision.old
        if old is None:
            continue
        module = signature.units.plan.module
        callers: Counter[str] = Counter()
        for site in _iter_calls(module, old.address - module.bias, arch):
            unit = signature.units.old_file.unit_at(site)
            if unit is None:
                callers[f"{module.name} (no DWARF)"] += 1
            elif unit.path not in reloaded:
                callers[unit.name.rsplit("/", 1)[-1]] += 1
        if callers:
            return LayoutChanged(_signature_message(signature, callers), hint="")
    return None


def _signature_message(signature: _Signature, callers: Counter[str]) -> str:
    units = signature.units
    name = signature.decision.name
    old_ret = describe(units.old, type_of(units.old, signature.old))
    new_ret = describe(units.new, type_of(units.new, signature.new))
    old_args = describe_parameters(units.old, signature.old)
    new_args = describe_parameters(units.new, signature.new)
    if old_ret == new_ret:
        before, after = f"{name}({old_args})", f"{name}({new_args})"
    else:
        before, after = f"{old_ret} {name}({old_args})", f"{new_ret} {name}({new_args})"
    where = ", ".join(
        f"{count} call{'s' if count > 1 else ''} in {file}"
        for file, count in sorted(callers.items())
    )
    one = sum(callers.values()) == 1
    if old_args != new_args:
        what = f"still pass{'es' if one else ''} ({old_args})"
    else:
        what = f"still expect{'s' if one else ''} {old_ret} back"
    files = " ".join(sorted(callers))
    return f"{before} became {after}: {where} {what}; reload {files} with it"


def _iter_calls(module: RunningModule, target: int, arch: Arch) -> Iterator[int]:
    """Link-time addresses of direct calls to ``target`` (link-time) in the module's code."""
    image = module.image
    for segment in image.load_segments:
        if segment.flags & _PF_X and segment.filesz:
            code = image.read_vaddr(segment.vaddr, segment.filesz)
            yield from arch.find_direct_calls(code, segment.vaddr, target)

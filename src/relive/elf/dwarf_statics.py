"""The function-scope statics of one compile unit, read by a walk that decodes
almost nothing.

Binding gcc's ``name.N`` statics by their scope (``relive.patch.static_scope``)
needs, for each ``DW_TAG_variable`` nested in a function (directly or in
lexical blocks) whose location is one ``DW_OP_addr``: the function's name, the
variable's name and where its address operand is.  A sqlite3-sized unit holds
hundreds of thousands of DIEs and every function may have such a static, so
the walk decodes no DIE it does not keep: it reads each entry's abbreviation
code, skips attributes by their forms' sizes (the plans of
:class:`relive.elf.dwarf_types._Abbrev`, built once per abbreviation), jumps
over subtrees it does not enter through ``DW_AT_sibling``, reads the location
of a variable only, and names a function only once a static is found in it.

Entries it cannot read this way (a name or location given through
``DW_FORM_indirect``, a name found only through ``DW_AT_abstract_origin`` or
``DW_AT_specification``) are decoded by the general reader, so the answers are
those of a full decode.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from typing import NamedTuple

from relive.elf.dwarf import _FORM_INDIRECT
from relive.elf.dwarf_types import (
    _BLOCK_FORMS,
    _OP_BLOCK_LEB,
    _OP_LEB,
    _OP_STRING,
    _STRING_FORMS,
    AT_ABSTRACT_ORIGIN,
    AT_LOCATION,
    AT_SPECIFICATION,
    TAG_LEXICAL_BLOCK,
    TAG_SUBPROGRAM,
    TAG_VARIABLE,
    Die,
    DwarfFile,
    Malformed,
    TypeUnit,
    _Abbrev,
    _skip_ops,
)

__all__ = ["FunctionStatic", "function_statics", "iter_function_statics"]

#: DW_OP_addr: a variable at a fixed address (the operand is the address).
_DW_OP_ADDR = 0x03
#: Not named yet (a function's name is read at its first static).
_UNNAMED = "\0"
#: How many references a name is followed through (origin of an origin...).
_NAME_HOPS = 3


class FunctionStatic(NamedTuple):
    """One variable at a fixed address declared inside a function."""

    function: str
    name: str
    #: Its location expression: DW_OP_addr and the address operand.
    location: bytes
    #: Where the address operand is in ``.debug_info`` (a relocatable object's
    #: relocation for it is found there); None when the location's position is
    #: unknown (a location given through DW_FORM_indirect).
    operand: int | None


#: A DIE the walk found: its offset, abbreviation and where its attributes start.
_Found = tuple[int, _Abbrev, int]
#: What the walk does with a DIE of one abbreviation.
_SKIP, _FUNCTION, _BLOCK, _VARIABLE, _VARIABLE_INDIRECT = range(5)
#: The walk's ``ignored`` depth while it looks into every DIE it meets.
_NOTHING_IGNORED = 1 << 62


class _Plan(NamedTuple):
    """How the walk treats the DIEs of one abbreviation, decided once."""

    kind: int
    abbrev: _Abbrev
    has_children: bool
    #: Skip operations over its attributes (``_Abbrev.ops``); None: decode them.
    ops: tuple[int, ...] | None
    #: Where DW_AT_sibling is when its position is fixed (offset, width; 0: ULEB128).
    jump: tuple[int, int] | None
    #: Variables: index of DW_AT_location, its offset when fixed, its length's bytes.
    location: int
    location_at: int | None
    length_size: int
    #: Skip operations over the attributes before and after DW_AT_location
    #: (None: decode them).
    to_location: tuple[int, ...] | None
    after_location: tuple[int, ...] | None


def _plan(unit: TypeUnit, code: int) -> _Plan:
    abbrev = unit._abbrevs.get(code) or unit._abbrev(code)
    tag = abbrev.tag
    kind = _SKIP
    location, length_size = -1, 0
    if tag == TAG_SUBPROGRAM and abbrev.has_children:
        kind = _FUNCTION
    elif tag == TAG_LEXICAL_BLOCK and abbrev.has_children:
        kind = _BLOCK
    elif tag == TAG_VARIABLE:
        location = next((i for i, spec in enumerate(abbrev.specs) if spec[0] == AT_LOCATION), -1)
        form = abbrev.specs[location][1] if location >= 0 else -1
        if form in _BLOCK_FORMS:
            kind, length_size = _VARIABLE, _BLOCK_FORMS[form]
        elif form == _FORM_INDIRECT:
            kind = _VARIABLE_INDIRECT
    location_at = abbrev.prefix[location] if location >= 0 else None
    jump = abbrev.jump if abbrev.has_children else None
    to_location = after_location = None
    if kind == _VARIABLE:
        to_location = _skip_ops(abbrev.specs[:location], unit)
        after_location = _skip_ops(abbrev.specs[location + 1 :], unit)
    return _Plan(
        kind,
        abbrev,
        abbrev.has_children,
        abbrev.ops,
        jump,
        location,
        location_at,
        length_size,
        to_location,
        after_location,
    )


def _name(unit: TypeUnit, die: _Found) -> str | None:
    """The name of a DIE the walk found, or its origin's (decoded as the general
    reader does when the DIE has no plain name)."""
    pos, abbrev, at = die
    if abbrev.name >= 0 and abbrev.specs[abbrev.name][1] in _STRING_FORMS:
        found = unit._name_at(abbrev, at)
        if found is not None:
            return found
    return _name_of(unit, unit._decode(pos)[0])


def _name_of(unit: TypeUnit, die: Die) -> str | None:
    """A DIE's name, or its origin's (an out-of-line instance of an inlined function)."""
    for _ in range(_NAME_HOPS):
        name = die.name()
        if name is not None:
            return name
        origin = die.ref(AT_ABSTRACT_ORIGIN) or die.ref(AT_SPECIFICATION)
        if origin is None:
            return None
        die = unit.die(origin)
    return None


def iter_function_statics(unit: TypeUnit) -> Iterator[FunctionStatic]:
    """Each variable at a fixed address nested in a top-level function of ``unit``
    (directly or through lexical blocks), in the order the DWARF lists them.

    Functions and variables without a name (even through their origin) are left
    out.  Raises :class:`Malformed` on DWARF it cannot walk."""
    try:
        named: dict[int, str | None] = {}
        for function, variable, location, operand in _walk(unit):
            if function is None:
                continue  # never: a variable is looked at inside a function only
            function_name = named.get(function[0], _UNNAMED)
            if function_name is _UNNAMED:
                function_name = named[function[0]] = _name(unit, function)
            name = _name(unit, variable) if function_name is not None else None
            if function_name is not None and name is not None:
                yield FunctionStatic(function_name, name, location, operand)
    except IndexError:
        raise Malformed("a DIE runs past the end of its section") from None


#: The statics of the running program's units, kept with their file's DWARF (a
#: reload reads them while the compiler runs, then binds with them).
_kept: weakref.WeakKeyDictionary[DwarfFile, dict[int, tuple[FunctionStatic, ...]]] = (
    weakref.WeakKeyDictionary()
)
_kept_lock = threading.Lock()
#: One walk per unit at a time: a second reader waits for the first one's answer.
_walks: weakref.WeakKeyDictionary[DwarfFile, dict[int, threading.Lock]] = (
    weakref.WeakKeyDictionary()
)


def function_statics(unit: TypeUnit) -> tuple[FunctionStatic, ...]:
    """:func:`iter_function_statics` of ``unit``, walked once and kept while its
    file's DWARF is (``open_dwarf`` keeps a few files): the running program's side,
    read while the compiler runs and used when the new object is bound."""
    with _kept_lock:
        kept = _kept.setdefault(unit.file, {})
        found = kept.get(unit.start)
        gate = _walks.setdefault(unit.file, {}).setdefault(unit.start, threading.Lock())
    if found is not None:
        return found
    with gate:
        with _kept_lock:
            found = kept.get(unit.start)
        if found is None:
            found = tuple(iter_function_statics(unit))
            with _kept_lock:
                kept[unit.start] = found
    return found


def _walk(unit: TypeUnit) -> Iterator[tuple[_Found | None, _Found, bytes, int | None]]:  # noqa: C901
    """(function, variable, location, operand position) of each static.

    The hot loop: one pass, attributes skipped by precomputed operations (fixed
    sizes, inline strings, LEB128 numbers and expressions without a call), a
    subtree the walk does not enter jumped over through DW_AT_sibling (gcc gives
    one) or walked."""
    pos = unit.top_die().children_at
    if pos is None:
        return
    info = unit.file.reader.info
    buf, base = info.buf, info.base
    limit = min(unit.end, info.size)
    end = base + limit
    wanted_length = 1 + unit.unit.address_size
    plans: dict[int, _Plan] = {}
    run_ops, start = unit._run_ops, unit.start

    def advance(pos: int, ops: tuple[int, ...]) -> int:
        for op in ops:
            if op >= 0:
                pos += op
            elif op == _OP_LEB:
                while buf[base + pos] & 0x80:
                    pos += 1
                pos += 1
            elif op == _OP_STRING:
                pos = buf.find(b"\0", base + pos, end) - base + 1
                if pos <= 0:
                    raise Malformed("a string is not terminated")
            elif op == _OP_BLOCK_LEB and buf[base + pos] < 0x80:
                pos += 1 + buf[base + pos]
            else:
                pos = run_ops((op,), pos)
        return pos

    depth = 0  # 0: the unit's children; 1: a function's; more: blocks' and others'
    #: While depth > ignored, the walk is inside a subtree it does not look into.
    ignored = _NOTHING_IGNORED
    function: _Found | None = None
    while True:
        if pos >= limit:
            if depth == 0:
                return  # a unit without its closing null entry
            raise Malformed("a function's DIEs run past the end of its unit")
        code = buf[base + pos]
        if code < 0x80:
            at = pos + 1
        else:
            code, at = info.uleb(pos)
        if code == 0:
            if depth == 0:
                return
            depth -= 1
            if depth == ignored:
                ignored = _NOTHING_IGNORED
            pos = at
            continue
        plan = plans.get(code)
        if plan is None:
            plan = plans[code] = _plan(unit, code)
        kind = plan.kind
        if depth > ignored or (depth == 0 and kind != _FUNCTION):
            kind = _SKIP
        elif kind == _FUNCTION and depth > 0:
            kind = _SKIP  # a nested function (GNU C): its statics are its own
        ops = plan.ops
        if kind != _SKIP and kind <= _BLOCK:  # a function, or a block in one
            if depth == 0:
                function = (pos, plan.abbrev, at)
            depth += 1
            if ops is None:
                pos = unit._attribute_position(plan.abbrev, at, len(plan.abbrev.specs))
            else:
                pos = at + ops[0] if len(ops) == 1 and ops[0] >= 0 else advance(at, ops)
            continue
        after = -1  # where the DIE's attributes end, when known
        if kind == _VARIABLE:
            offset, to_location = plan.location_at, plan.to_location
            if offset is not None:
                where = at + offset
            elif to_location is not None:
                where = advance(at, to_location)
            else:
                where = unit._attribute_position(plan.abbrev, at, plan.location)
            length_size = plan.length_size
            if length_size:
                length = info.uint(where, length_size)
                where += length_size
            elif buf[base + where] < 0x80:
                length = buf[base + where]
                where += 1
            else:
                length, where = info.uleb(where)
            if where + length > limit:
                raise Malformed("a block runs past the end of .debug_info")
            if length == wanted_length and buf[base + where] == _DW_OP_ADDR:
                location = bytes(buf[base + where : base + where + length])
                yield function, (pos, plan.abbrev, at), location, where + 1
            if plan.after_location is not None:
                after = advance(where + length, plan.after_location)
        elif kind == _VARIABLE_INDIRECT:
            value = unit._decode(pos)[0].attrs.get(AT_LOCATION)
            if isinstance(value, bytes) and len(value) == wanted_length and value[0] == _DW_OP_ADDR:
                yield function, (pos, plan.abbrev, at), value, None
        jump = plan.jump
        if jump is not None:  # over the children, through DW_AT_sibling
            if jump[1]:
                first = base + at + jump[0]
                pos = start + int.from_bytes(buf[first : first + jump[1]], "little")
            else:
                pos = start + info.uleb(at + jump[0])[0]
            if pos <= at:
                raise Malformed("a DW_AT_sibling leads backwards")
            continue
        if after >= 0:
            pos = after
        elif ops is None:
            pos = unit._attribute_position(plan.abbrev, at, len(plan.abbrev.specs))
        else:
            pos = at + ops[0] if len(ops) == 1 and ops[0] >= 0 else advance(at, ops)
        if plan.has_children:  # walked through, looked at no more
            if ignored == _NOTHING_IGNORED:
                ignored = depth
            depth += 1

"""Compare a type as the running program knows it with the same type in new code.

Two DWARF units (the running module's unit of a source, and the new object's)
describe the same named types.  :class:`TypeComparer` walks a pair of types in
step and says what differs in terms of memory: sizes, members (names, offsets,
bit-fields, types), array bounds, enumerator values, base types (size,
signedness, float or integer).  Qualifiers and typedef names do not matter;
what the bytes mean does.
"""

from __future__ import annotations

import contextlib

from relive.elf.dwarf_types import (
    AT_ABSTRACT_ORIGIN,
    AT_BIT_OFFSET,
    AT_BIT_SIZE,
    AT_BYTE_SIZE,
    AT_CONST_VALUE,
    AT_COUNT,
    AT_DATA_BIT_OFFSET,
    AT_DECLARATION,
    AT_ENCODING,
    AT_MEMBER_LOCATION,
    AT_SPECIFICATION,
    AT_TYPE,
    AT_UPPER_BOUND,
    TAG_ARRAY,
    TAG_ATOMIC,
    TAG_BASE,
    TAG_CONST,
    TAG_ENUM,
    TAG_ENUMERATOR,
    TAG_MEMBER,
    TAG_PARAMETER,
    TAG_POINTER,
    TAG_REFERENCE,
    TAG_RESTRICT,
    TAG_STRUCT,
    TAG_SUBRANGE,
    TAG_SUBROUTINE_TYPE,
    TAG_TYPEDEF,
    TAG_UNION,
    TAG_VARARGS,
    TAG_VOLATILE,
    Die,
    TypeUnit,
)
from relive.elf.leb128 import Leb128Error, read_uleb

_PARAMETER_TAGS = frozenset({TAG_PARAMETER, TAG_VARARGS})
_SUBRANGE_TAGS = frozenset({TAG_SUBRANGE})
_MEMBER_TAGS = frozenset({TAG_MEMBER})
_ENUMERATOR_TAGS = frozenset({TAG_ENUMERATOR})
_QUALIFIERS = frozenset({TAG_CONST, TAG_VOLATILE, TAG_RESTRICT, TAG_ATOMIC, TAG_TYPEDEF})
_KIND_WORD = {TAG_STRUCT: "struct", TAG_UNION: "union", TAG_ENUM: "enum"}
_AGGREGATES = frozenset({TAG_STRUCT, TAG_UNION})
_DW_OP_PLUS_UCONST = 0x23
#: Deep enough for any real declaration; stops a malformed cycle.
_MAX_DEPTH = 64


def strip(unit: TypeUnit, die: Die | None) -> tuple[Die | None, str | None]:
    """The type under typedefs and qualifiers, and the first typedef name on the way."""
    label: str | None = None
    for _ in range(_MAX_DEPTH):
        if die is None or die.tag not in _QUALIFIERS:
            return die, label
        if die.tag == TAG_TYPEDEF and label is None:
            label = die.name()
        die = type_of(unit, die)
    return None, label


def type_of(unit: TypeUnit, die: Die) -> Die | None:
    """The DIE DW_AT_type of ``die`` refers to (None for void).

    A concrete instance of an inlined or out-of-line function, or of one of its
    parameters, carries its type on its abstract origin (or specification).
    """
    for _ in range(4):
        ref = die.ref(AT_TYPE)
        if ref is not None:
            return unit.die(ref)
        origin = die.ref(AT_ABSTRACT_ORIGIN) or die.ref(AT_SPECIFICATION)
        if origin is None:
            return None
        die = unit.die(origin)
    return None


def describe(unit: TypeUnit, die: Die | None, depth: int = 0) -> str:
    """A C spelling of a type, for messages: ``long int``, ``struct stats *``, ``int[4]``."""
    if die is None:
        return "void"
    if depth > _MAX_DEPTH:
        return "..."
    tag = die.tag
    name = die.name()
    if tag in _KIND_WORD:
        return f"{_KIND_WORD[tag]} {name or '<anonymous>'}"
    if tag in (TAG_BASE, TAG_TYPEDEF) and name:
        return name
    inner = type_of(unit, die)
    if tag == TAG_CONST:
        return f"const {describe(unit, inner, depth + 1)}"
    if tag == TAG_VOLATILE:
        return f"volatile {describe(unit, inner, depth + 1)}"
    if tag in (TAG_POINTER, TAG_REFERENCE):
        if inner is not None and inner.tag == TAG_SUBROUTINE_TYPE:
            return _describe_function(unit, inner, "(*)", depth)
        return f"{describe(unit, inner, depth + 1)} *"
    if tag == TAG_ARRAY:
        dims = "".join(f"[{'' if n is None else n}]" for n in array_bounds(unit, die))
        return f"{describe(unit, inner, depth + 1)}{dims}"
    if tag == TAG_SUBROUTINE_TYPE:
        return _describe_function(unit, die, "", depth)
    return name or describe(unit, inner, depth + 1)


def _describe_function(unit: TypeUnit, die: Die, middle: str, depth: int) -> str:
    ret = describe(unit, type_of(unit, die), depth + 1)
    return f"{ret} {middle}({describe_parameters(unit, die, depth)})"


def describe_parameters(unit: TypeUnit, die: Die, depth: int = 0) -> str:
    """``int, long int`` for the parameters of a function or function type."""
    params = []
    for child in unit.children(die, _PARAMETER_TAGS):
        if child.tag == TAG_PARAMETER:
            params.append(describe(unit, type_of(unit, child), depth + 1))
        elif child.tag == TAG_VARARGS:
            params.append("...")
    return ", ".join(params) or "void"


def array_bounds(unit: TypeUnit, die: Die) -> list[int | None]:
    """Element counts of each dimension (None: unknown or variable)."""
    bounds: list[int | None] = []
    for child in unit.children(die, _SUBRANGE_TAGS):
        if child.tag != TAG_SUBRANGE:
            continue
        count = child.number(AT_COUNT)
        upper = child.number(AT_UPPER_BOUND)
        if count is None and upper is not None:
            count = upper + 1
        bounds.append(count)
    return bounds


class TypeComparer:
    """Compares types of the running program's unit (old) with the new unit's.

    :meth:`compare` returns what differs about a type itself ("type long int
    became double"); differences inside a struct, union or enum are recorded
    once per type in :attr:`changes` under the type's name, however many
    paths lead to it.
    """

    def __init__(self, old: TypeUnit, new: TypeUnit) -> None:
        self.old = old
        self.new = new
        self.changes: list[str] = []
        self._seen: dict[tuple[int, int], str | None] = {}
        self._signatures: dict[tuple[bool, int], tuple[str, ...]] = {}

    def compare(self, old: Die | None, new: Die | None, depth: int = 0) -> str | None:
        """What differs between two types (None: the same, or nothing can be told)."""
        old_type, old_label = strip(self.old, old)
        new_type, new_label = strip(self.new, new)
        if old_type is None or new_type is None or depth > _MAX_DEPTH:
            if (old_type is None) != (new_type is None) and (old or new) is not None:
                return self._became(old, new)
            return None
        if AT_DECLARATION in old_type.attrs or AT_DECLARATION in new_type.attrs:
            # Only declared in that unit (used through pointers): the unit's code
            # never touches its members, and the unit does not say what they are.
            return None
        key = (old_type.offset, new_type.offset)
        if key in self._seen:
            return self._seen[key]
        self._seen[key] = None  # a cycle through pointers compares as equal
        found = self._compare_stripped(old_type, new_type, old_label or new_label, depth)
        self._seen[key] = found
        return found

    def signature(self, unit: TypeUnit, die: Die) -> tuple[str, ...]:
        """:func:`signature`, once per function type (many pointers share one)."""
        key = (unit is self.new, die.offset)
        found = self._signatures.get(key)
        if found is None:
            found = self._signatures[key] = signature(unit, die)
        return found

    def _became(self, old: Die | None, new: Die | None) -> str:
        return f"type {describe(self.old, old)} became {describe(self.new, new)}"

    def _compare_stripped(self, old: Die, new: Die, label: str | None, depth: int) -> str | None:
        if old.tag != new.tag:
            return self._became(old, new)
        tag = old.tag
        if tag == TAG_BASE:
            same = all(old.attrs.get(a) == new.attrs.get(a) for a in (AT_BYTE_SIZE, AT_ENCODING))
            return None if same and old.name() == new.name() else self._became(old, new)
        if tag in (TAG_POINTER, TAG_REFERENCE):
            old_to, new_to = type_of(self.old, old), type_of(self.new, new)
            if strip(self.old, old_to)[0] is None or strip(self.new, new_to)[0] is None:
                return None  # void *: what it points to is not described
            inner = self.compare(old_to, new_to, depth + 1)
            return (
                None if inner is None or not inner.startswith("type ") else self._became(old, new)
            )
        if tag == TAG_ARRAY:
            return self._compare_arrays(old, new, depth)
        if tag == TAG_SUBROUTINE_TYPE:
            return self._compare_functions(old, new, depth)
        if tag in _AGGREGATES or tag == TAG_ENUM:
            name = new.name() or old.name() or label
            subject = f"{_KIND_WORD[tag]} {name}" if name else f"{_KIND_WORD[tag]} <anonymous>"
            if label and not (new.name() or old.name()):
                subject = label
            parts = (
                self._compare_enums(old, new)
                if tag == TAG_ENUM
                else self._compare_members(old, new, subject, depth)
            )
            if parts:
                line = f"{subject}: {', '.join(parts)}"
                if line not in self.changes:
                    self.changes.append(line)
            return None
        return None

    def _compare_arrays(self, old: Die, new: Die, depth: int) -> str | None:
        if array_bounds(self.old, old) != array_bounds(self.new, new):
            return self._became(old, new)
        inner = self.compare(type_of(self.old, old), type_of(self.new, new), depth + 1)
        return None if inner is None or not inner.startswith("type ") else self._became(old, new)

    def _compare_functions(self, old: Die, new: Die, depth: int) -> str | None:
        if signature_differs(self, old, new, depth):
            return self._became(old, new)
        return None

    def _compare_enums(self, old: Die, new: Die) -> list[str]:
        parts = []
        if old.number(AT_BYTE_SIZE) != new.number(AT_BYTE_SIZE):
            parts.append(f"size {old.number(AT_BYTE_SIZE)} -> {new.number(AT_BYTE_SIZE)} bytes")
        size = new.number(AT_BYTE_SIZE) or 8
        old_values = _enumerators(self.old, old, size)
        new_values = _enumerators(self.new, new, size)
        for name, value in old_values.items():
            if name not in new_values:
                parts.append(f"value {name} removed")
            elif new_values[name] != value:
                parts.append(
                    f"value {name} changed {_signed(value, size)} -> "
                    f"{_signed(new_values[name], size)}"
                )
        return parts

    def _compare_members(self, old: Die, new: Die, subject: str, depth: int) -> list[str]:
        old_size, new_size = old.number(AT_BYTE_SIZE), new.number(AT_BYTE_SIZE)
        old_members = _members(self.old, old)
        new_members = _members(self.new, new)
        parts: list[str] = []
        for name, member in new_members.items():
            if name not in old_members:
                where = "inserted" if old_size is not None and member.byte < old_size else "added"
                parts.append(f"member {name} {where} at offset {member.byte}")
        for name, before in old_members.items():
            after = new_members.get(name)
            if after is None:
                parts.append(f"member {name} removed")
                continue
            if before.bits != after.bits:
                parts.append(
                    f"bit-field {name}: {_bits(before.bits)} became {_bits(after.bits)}"
                    if before.bits[0] is not None or after.bits[0] is not None
                    else f"{name} moved {before.byte} -> {after.byte}"
                )
            inner = self.compare(before.type, after.type, depth + 1)
            if inner is not None:
                parts.append(f"member {name}: {inner}")
        if not parts and old_size != new_size:
            parts.append(f"size {old_size} -> {new_size} bytes")
        return parts


class _Member:
    """Where a member lives: byte offset, (bit size, absolute bit offset), type."""

    __slots__ = ("bits", "byte", "type")

    def __init__(self, byte: int, bits: tuple[int | None, int], type_: Die | None) -> None:
        self.byte = byte
        self.bits = bits
        self.type = type_


def _members(unit: TypeUnit, die: Die) -> dict[str, _Member]:
    found: dict[str, _Member] = {}
    anonymous = 0
    for child in unit.children(die, _MEMBER_TAGS):
        if child.tag != TAG_MEMBER:
            continue
        name = child.name()
        if name is None:
            anonymous += 1
            name = f"<anonymous {anonymous}>"
        byte = _member_offset(child)
        bit_size = child.number(AT_BIT_SIZE)
        bit = byte * 8
        data_bit = child.number(AT_DATA_BIT_OFFSET)
        if data_bit is not None:
            bit = data_bit
            byte = data_bit // 8
        elif bit_size is not None and child.number(AT_BIT_OFFSET) is not None:
            # DWARF 2-4: counted from the most significant bit of the storage unit.
            storage = child.number(AT_BYTE_SIZE) or _size_of(unit, child) or 0
            bit = byte * 8 + storage * 8 - (child.number(AT_BIT_OFFSET) or 0) - bit_size
        found[name] = _Member(byte, (bit_size, bit), type_of(unit, child))
    return found


def _member_offset(member: Die) -> int:
    value = member.attrs.get(AT_MEMBER_LOCATION)
    if isinstance(value, int):
        return value
    if isinstance(value, bytes) and value[:1] == bytes([_DW_OP_PLUS_UCONST]):
        with contextlib.suppress(Leb128Error):
            return read_uleb(value, 1)[0]
    return 0  # union members, or a location relive does not model (or a truncated one)


def _size_of(unit: TypeUnit, die: Die) -> int | None:
    stripped, _ = strip(unit, type_of(unit, die))
    return None if stripped is None else stripped.number(AT_BYTE_SIZE)


def _bits(bits: tuple[int | None, int]) -> str:
    size, offset = bits
    if size is None:
        return f"a whole member at bit {offset}"
    return f"{size} bits at bit {offset}"


def _enumerators(unit: TypeUnit, die: Die, size: int) -> dict[str, int]:
    mask = (1 << (8 * size)) - 1
    return {
        child.name() or "": (child.number(AT_CONST_VALUE) or 0) & mask
        for child in unit.children(die, _ENUMERATOR_TAGS)
        if child.tag == TAG_ENUMERATOR
    }


def _signed(value: int, size: int) -> int:
    bits = 8 * size
    return value - (1 << bits) if value >> (bits - 1) & 1 else value


def signature_differs(comparer: TypeComparer, old: Die, new: Die, depth: int = 0) -> bool:
    """Whether two functions (or function types) take or return different things.

    Compared by shape (``long int``, ``struct stats *``), not by the layouts of
    the structs named: a struct that data holds is compared on its own, and
    following every parameter of every function pointer would compare a large
    program's whole type graph on each reload.
    """
    del depth  # shapes are not recursive
    return comparer.signature(comparer.old, old) != comparer.signature(comparer.new, new)


def signature(unit: TypeUnit, die: Die) -> tuple[str, ...]:
    """Return type then parameter types of a function or function type, as shapes."""
    shapes = [_shape(unit, type_of(unit, die))]
    for child in unit.children(die, _PARAMETER_TAGS):
        shapes.append("..." if child.tag == TAG_VARARGS else _shape(unit, type_of(unit, child)))
    return tuple(shapes)


def _shape(unit: TypeUnit, die: Die | None) -> str:
    return describe(unit, strip(unit, die)[0])

"""Initial values of variables the running program already has.

A variable the program has is state: the reload keeps its current value, even
when the new source gives it another initial value.  relive says so per
variable, and ``--reinit NAME`` copies the new initial value in (same size;
pointers in it bound like the new code's).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Collection
from dataclasses import dataclass

from relive.elf.objfile import ObjectFile
from relive.errors import ReliveError
from relive.link import Bound
from relive.patch.binder import Binder
from relive.patch.diff import FunctionComparer
from relive.process.memory import ProcessMemory
from relive.process.threads import stop_all


@dataclass(frozen=True)
class DataChange:
    """A data section of the new object bound to running storage, whose initial
    value differs from the one the program started with."""

    index: int
    names: tuple[str, ...]
    bound: Bound


def describe_initial_change(change: DataChange, reinit: bool) -> str:
    """The per-variable notice."""
    name = change.names[0] if change.names else "?"
    if reinit:
        return f"{', '.join(change.names)}: initial value changed; --reinit copies it in"
    return (
        f"{', '.join(change.names)}: initial value changed; the program keeps its current "
        f"value (--reinit {name} copies the new initial value in)"
    )


def find_initial_changes(
    obj: ObjectFile,
    binder: Binder,
    comparer: FunctionComparer,
    bound: dict[int, Bound],
    relative_type: int,
) -> list[DataChange]:
    """Bound writable sections whose initial value differs from the program file's.

    The program's initial value is read from its file (``.data`` as linked,
    ``.bss`` as zeros), never from memory: memory holds the current value.
    Storage relive created in an earlier reload has no initial value in the
    file and is left out.
    """
    module = binder.module
    image = module.image
    relative: list[tuple[int, int]] | None = None

    def read_initial(address: int, size: int) -> bytes:
        nonlocal relative
        vaddr = address - module.bias
        data = bytearray(image.read_vaddr(vaddr, size))
        if relative is None:
            relative = sorted(
                (r.offset, r.addend) for r in image.dynamic_relocations if r.type == relative_type
            )
        # A PIE's pointers are written by the dynamic linker: bias + addend.
        first = bisect.bisect_left(relative, (vaddr, -(1 << 63)))
        for offset, addend in relative[first:]:
            if offset + 8 > vaddr + size:
                break
            data[offset - vaddr : offset - vaddr + 8] = (module.bias + addend).to_bytes(
                8, "little", signed=False
            )
        return bytes(data)

    from_file = comparer.reading(read_initial)
    changes = []
    for index, binding in sorted(bound.items()):
        section = obj.sections[index]
        address = binding.address
        if section.is_exec or section.is_tls or not section.is_write or address is None:
            continue
        if not module.start <= address < module.end:
            continue
        try:
            same = from_file.matches_data(index, address)
        except ReliveError:
            same = False
        if not same:
            names = tuple(display_name(s.name) for s in obj.iter_section_symbols(index) if s.name)
            changes.append(DataChange(index, names, binding))
    return changes


def display_name(name: str) -> str:
    """A variable's name as written in C: gcc's function-local ``count.3`` is ``count``."""
    return re.sub(r"\.\d+$", "", name)


def choose_reinit(
    changes: list[DataChange], names: Collection[str]
) -> tuple[list[DataChange], list[str]]:
    """The changes ``--reinit`` names, and the names that matched none."""
    chosen = [c for c in changes if set(c.names) & set(names)]
    matched = {n for c in chosen for n in c.names}
    return chosen, sorted(set(names) - matched)


def write_initial_values(pid: int, values: list[tuple[int, bytes]]) -> None:
    """Copy new initial values into running storage, with every thread held
    (no thread sees half a table)."""
    if not values:
        return
    with stop_all(pid), ProcessMemory(pid) as memory:
        for address, data in values:
            memory.write(address, data)

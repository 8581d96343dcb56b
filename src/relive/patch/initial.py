"""Initial values of variables the running program already has.

A variable the program has is state: the reload keeps its current value, even
when the new source gives it another initial value.  relive says so per
variable, and ``--reinit NAME`` copies the new initial value in (same size;
pointers in it bound like the new code's).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from relive.arch.base import Arch
from relive.elf.image import ElfImage
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
    arch: Arch,
) -> list[DataChange]:
    """Bound writable sections whose initial value differs from the program file's.

    The program's initial value is read from its file (``.data`` as linked,
    ``.bss`` as zeros), never from memory: memory holds the current value.
    Storage relive created in an earlier reload has no initial value in the
    file and is left out.
    """
    module = binder.module
    words: _LoaderWords | None = None

    def read_initial(address: int, size: int) -> bytes:
        nonlocal words
        if words is None:
            words = _LoaderWords.of(module.image, arch)
        vaddr = address - module.bias
        data = bytearray(module.image.read_vaddr(vaddr, size))
        for offset, value in words.within(vaddr, size, module.bias, binder):
            data[offset - vaddr : offset - vaddr + 8] = value.to_bytes(8, "little")
        return bytes(data)

    from_file = comparer.reading(read_initial)
    changes = []
    for index, binding, address in _compared(obj, binder, bound):
        try:
            same = from_file.matches_data(index, address)
        except ReliveError:
            same = False
        if not same:
            changes.append(_change(obj, index, binding))
    return changes


def _compared(
    obj: ObjectFile, binder: Binder, bound: dict[int, Bound]
) -> Iterator[tuple[int, Bound, int]]:
    """(index, binding, address) of each bound section whose initial value is
    compared: writable data in the module's own file, in index order."""
    module = binder.module
    for index, binding in sorted(bound.items()):
        section = obj.sections[index]
        address = binding.address
        if section.is_exec or section.is_tls or not section.is_write or address is None:
            continue
        if module.start <= address < module.end:
            yield index, binding, address


def _change(obj: ObjectFile, index: int, binding: Bound) -> DataChange:
    names = tuple(display_name(s.name) for s in obj.iter_section_symbols(index) if s.name)
    return DataChange(index, names, binding)


#: What ``encode_initial_changes`` writes before the indices (a record without it
#: is not one: the answer is computed).
_RECORDED = "="


def encode_initial_changes(changes: Collection[DataChange]) -> str:
    """The sections whose initial value differed, as the journal keeps them: the
    next reload of an object of the same layout, bound alike in the same binding
    context, compares the same bytes with the same file, so it takes the answer
    instead of reading every bound table again (``patch.matched``)."""
    return _RECORDED + ",".join(str(change.index) for change in changes)


def known_initial_changes(
    obj: ObjectFile, binder: Binder, bound: dict[int, Bound], text: str
) -> list[DataChange] | None:
    """The changes ``encode_initial_changes`` recorded, for ``bound`` (None: none
    recorded, or not for these sections: compare)."""
    if not text.startswith(_RECORDED):
        return None
    listed = text[len(_RECORDED) :]
    try:
        changed = {int(index) for index in listed.split(",")} if listed else set()
    except ValueError:
        return None
    compared = {index: binding for index, binding, _ in _compared(obj, binder, bound)}
    if not changed <= compared.keys():
        return None
    return [_change(obj, index, compared[index]) for index in sorted(changed)]


@dataclass(frozen=True)
class _LoaderWords:
    """The pointers the dynamic linker writes into a module's data at start-up.

    They are part of the initial value the file stands for: a PIE's or library's
    pointer to its own code or data is load bias + addend (a relative
    relocation), one to another module's symbol, or to a library's own exported
    one (which another module could interpose), is the symbol's address +
    addend.  Without them, a table of pointers to libc functions (sqlite3's
    ``aSyscall``) or a library's table of its own API (``sqlite3Apis``) read as
    zeros and looked changed in every reload.
    """

    #: Link-time vaddrs of the words, ascending, and per word (type, symbol, addend).
    offsets: list[int]
    entries: list[tuple[int, str, int]]
    relative_type: int

    @classmethod
    def of(cls, image: ElfImage, arch: Arch) -> _LoaderWords:
        kinds = (arch.relative_reloc_type, arch.absolute_reloc_type)
        found = sorted(
            (r.offset, r.type, r.symbol, r.addend)
            for r in image.dynamic_relocations
            if r.type in kinds
        )
        return cls(
            [offset for offset, *_ in found],
            [(kind, symbol, addend) for _, kind, symbol, addend in found],
            arch.relative_reloc_type,
        )

    def within(self, vaddr: int, size: int, bias: int, binder: Binder) -> Iterator[tuple[int, int]]:
        """(link-time vaddr, value) of each word in ``size`` bytes at ``vaddr``; a word
        whose symbol the process does not define is left as the file has it."""
        first = bisect.bisect_left(self.offsets, vaddr)
        for offset, (kind, symbol, addend) in zip(
            self.offsets[first:], self.entries[first:], strict=True
        ):
            if offset + 8 > vaddr + size:
                break
            if kind == self.relative_type:
                yield offset, (bias + addend) & _WORD
                continue
            found = binder.resolve_external(symbol)
            if found is not None and found.address is not None:
                yield offset, (found.address + addend) & _WORD


_WORD = (1 << 64) - 1


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

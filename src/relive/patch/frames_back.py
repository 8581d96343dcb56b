"""Undo moves frames back: from reloaded code to the original code, under the same rules.

A frame that a reload moved into new code (or that entered it by a call) is
moved back to the function's original code when ``undo`` puts the original
entry back, if the two versions have the same shape (``Arch.match_shapes``):
the same check, the same stop as the restored entry bytes.  Otherwise it stays
in the reloaded code until its call returns, and ``undo`` says so.
"""

from __future__ import annotations

from relive.arch.base import Arch
from relive.errors import ReliveError
from relive.patch.active import iter_active_functions
from relive.patch.frames import MATCH_ALL_LIMIT, CodeVersion, FrameMover
from relive.patch.journal import EntryPatch, Journal
from relive.patch.modules import RunningModule
from relive.patch.original import read_original_code
from relive.patch.stacks import FrameTables
from relive.process.memory import ProcessMemory
from relive.process.samples import sample_positions

HOW_UNDO = "same shape, back to the original code"


def prepare_undo_mover(
    pid: int,
    journal: Journal,
    patches: list[EntryPatch],
    modules: list[RunningModule],
    memory: ProcessMemory,
    arch: Arch,
) -> FrameMover | None:
    """A mover from the reloaded code of ``patches`` back to their original code."""
    if arch.match_shapes is None or not any(p.size for p in patches):
        return None
    positions = sample_positions(pid)
    wanted = _maybe_running(pid, memory, arch, patches, positions)
    if not wanted:
        return None
    originals = _Originals(modules)
    starts = _original_starts(journal, originals)
    versions = []
    for patch in patches:
        spans = [(a, n) for a, n in _reloaded_code(patch) if (patch.name, a) in wanted]
        found = originals.find(patch) if spans else None
        if found is None:
            continue
        module, start, size = found
        try:
            original = read_original_code(module, start, size, memory.read)
        except ReliveError:
            continue
        for address, length in spans:
            try:
                reloaded = memory.read(address, length)
            except ReliveError:
                continue
            shape = arch.match_shapes(
                reloaded, address, original, start, lambda old, new, _: starts.get(old) == new
            )
            if isinstance(shape, str):
                why = f"its original code has another shape ({shape})"
                versions.append(CodeVersion(patch.name, address, address + length, None, why))
            else:
                versions.append(CodeVersion(patch.name, address, address + length, shape, ""))
    if not versions:
        return None
    mover = FrameMover(versions, FrameTables(modules), arch, how=HOW_UNDO)
    mover.warm(memory, positions)
    return mover


def _reloaded_code(patch: EntryPatch) -> list[tuple[int, int]]:
    """(address, size) of every version of the function's code relive loaded."""
    return [(a, n) for a, n in [*patch.earlier, (patch.target, patch.size)] if n]


def _maybe_running(
    pid: int,
    memory: ProcessMemory,
    arch: Arch,
    patches: list[EntryPatch],
    positions: list[tuple[int, int | None, int | None]],
) -> set[tuple[str, int]]:
    """(function, address) of the reloaded code a thread may be inside of, from a look
    at the threads without stopping them: as for a reload (``frames.MATCH_ALL_LIMIT``),
    only that code is matched with its original (a disassembly of both)."""
    spans = {(p.name, a): n for p in patches for a, n in _reloaded_code(p)}
    if len(spans) <= MATCH_ALL_LIMIT and any(pc is None for _, pc, _ in positions):
        return set(spans)  # a running thread: it could be anywhere
    ranges = {f"{name}@{a:#x}": (a, a + n) for (name, a), n in spans.items()}
    known = [(tid, pc, sp) for tid, pc, sp in positions if pc is not None and sp is not None]
    found = set()
    for key, _ in iter_active_functions(pid, memory, arch, ranges, known):
        name, _, address = key.rpartition("@")
        found.add((name, int(address, 16)))
    return found


def _original_starts(journal: Journal, originals: _Originals) -> dict[int, int]:
    """Reloaded code's address -> the original function's start, for every patch:
    a call from reloaded code to reloaded code is the original call to the original."""
    starts = {}
    for patch in journal.patches.values():
        found = originals.find(patch)
        if found is not None:
            starts[patch.target] = found[1]
    return starts


class _Originals:
    """The function whose entry a patch replaced, found through one name index per
    module (built on first use): a lookup per patch, not a walk of every symbol."""

    def __init__(self, modules: list[RunningModule]) -> None:
        self.modules = modules
        self._by_name: dict[int, dict[str, list[tuple[int, int]]]] = {}

    def find(self, patch: EntryPatch) -> tuple[RunningModule, int, int] | None:
        """The module, start and size of the function whose entry ``patch`` replaced."""
        for index, module in enumerate(self.modules):
            if module.path != patch.module:
                continue
            for start, size in self._functions(index).get(patch.name, ()):
                if start <= patch.entry < start + max(size, 1):
                    return module, start, size
        return None

    def _functions(self, index: int) -> dict[str, list[tuple[int, int]]]:
        found = self._by_name.get(index)
        if found is None:
            module = self.modules[index]
            found = {}
            for symbol in module.image.iter_functions():
                found.setdefault(symbol.name, []).append((symbol.value + module.bias, symbol.size))
            self._by_name[index] = found
        return found

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
from relive.patch.frames import CodeVersion, FrameMover
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
    starts = _original_starts(journal, modules)
    versions = []
    for patch in patches:
        found = _original_function(patch, modules)
        if found is None:
            continue
        module, start, size = found
        try:
            original = read_original_code(module, start, size, memory.read)
        except ReliveError:
            continue
        for address, length in [*patch.earlier, [patch.target, patch.size]]:
            if not length:
                continue
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
    mover.warm(memory, sample_positions(pid))
    return mover


def _original_starts(journal: Journal, modules: list[RunningModule]) -> dict[int, int]:
    """Reloaded code's address -> the original function's start, for every patch:
    a call from reloaded code to reloaded code is the original call to the original."""
    starts = {}
    for patch in journal.patches.values():
        found = _original_function(patch, modules)
        if found is not None:
            starts[patch.target] = found[1]
    return starts


def _original_function(
    patch: EntryPatch, modules: list[RunningModule]
) -> tuple[RunningModule, int, int] | None:
    """The module, start and size of the function whose entry ``patch`` replaced."""
    for module in modules:
        if module.path != patch.module:
            continue
        for symbol in module.image.iter_functions():
            start = symbol.value + module.bias
            if symbol.name == patch.name and start <= patch.entry < start + max(symbol.size, 1):
                return module, start, symbol.size
    return None

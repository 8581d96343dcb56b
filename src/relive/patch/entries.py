"""Where each changed function's entry jump goes, checked before anything is written.

A function too small for an entry jump is found here (:func:`find_too_small`)
before the transaction starts, so the plan can reroute it through its callers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

from relive.arch.base import Arch
from relive.errors import UnsafePatch
from relive.patch.journal import Journal
from relive.patch.modules import RunningModule
from relive.patch.original import read_original_code
from relive.patch.plan import FunctionDecision
from relive.process.memory import ProcessMemory

_HEAD = 16


@dataclass(frozen=True)
class EntryWrite:
    """One entry jump: where, what is there now, what goes there."""

    name: str
    address: int  # first byte overwritten (after a kept landing pad)
    expected: bytes  # what must be there now
    new: bytes
    #: The function's code [start, end): a thread anywhere in it is in the way too
    #: if ``loops_into_window()`` (a branch inside it targets the replaced bytes).
    function: tuple[int, int] = (0, 0)
    loops_into_window: Callable[[], bool] | None = None
    #: Where the new jump goes (0 when restoring original bytes).
    target: int = 0
    #: For the journal: the source file and module the function belongs to.
    source: str = ""
    module: str = ""

    def blocks(self, pc: int) -> bool:
        """Whether a thread at ``pc`` would be hurt by this write."""
        if self.address < pc < self.address + len(self.new):
            return True
        start, end = self.function
        # Disassembling is only worth it when a thread is inside the function.
        return start <= pc < end and self.loops_into_window is not None and self.loops_into_window()


@dataclass(frozen=True)
class EntrySite:
    """A function entry that will receive a jump; everything but the target is known."""

    decision: FunctionDecision
    source: str
    module: str
    address: int  # first byte overwritten (after a kept landing pad)
    expected: bytes  # what is there now: the original bytes or an earlier jump
    function: tuple[int, int]
    loops_into_window: Callable[[], bool]

    def jump_to(self, target: int, arch: Arch) -> EntryWrite:
        """The write that sends this entry to ``target``."""
        return EntryWrite(
            name=self.decision.name,
            address=self.address,
            expected=self.expected,
            new=arch.encode_entry_jump(self.address, target),
            function=self.function,
            loops_into_window=self.loops_into_window,
            target=target,
            source=self.source,
            module=self.module,
        )


def iter_entry_sites(
    decisions: list[FunctionDecision],
    source: str,
    module: RunningModule,
    journal: Journal,
    memory: ProcessMemory,
    arch: Arch,
) -> Iterator[EntrySite]:
    """The entry site of each decision's function, its code read in page-sized batches."""
    ranges = []
    for decision in decisions:
        assert decision.old is not None
        ranges.append((decision.old.address, max(decision.old.size, _HEAD)))
    for decision, code in zip(decisions, memory.read_many(ranges), strict=True):
        assert decision.old is not None

        def read_pristine(address: int, size: int) -> bytes:
            # What the file holds: memory may carry a jump inherited from a parent.
            return read_original_code(module, address, size, memory.read)

        pristine = None if decision.old.from_journal else read_pristine
        yield find_entry_site(decision, code, source, module, journal, arch, pristine)


def find_entry_site(
    decision: FunctionDecision,
    running: bytes,
    source: str,
    module: RunningModule,
    journal: Journal,
    arch: Arch,
    pristine: Callable[[int, int], bytes] | None = None,
) -> EntrySite:
    """Check that ``decision``'s function can take an entry jump; raise UnsafePatch if not.

    ``running`` is the function's code as it is in memory now (at least 16
    bytes); ``pristine`` reads a range as the module file holds it (None for
    code relive allocated): the original bytes that undo puts back.  A landing pad
    (endbr64) is kept so indirect calls still land on it.
    """
    old = decision.old
    assert old is not None
    entry = old.address
    pad, need, available = _entry_room(decision, running, module, arch)
    if available < need:
        raise too_small_error(decision, module, running, arch)
    address = entry + pad
    existing = journal.patches.get(Journal.patch_key(module.path, address))
    current = running[pad:need]
    expected = bytes.fromhex(existing.written) if existing else current
    if existing:
        original = bytes.fromhex(existing.original)
    else:
        original = pristine(address, need - pad) if pristine is not None else current
    code = bytearray(running[: max(old.size, need)])
    code[pad:need] = original

    @cache
    def loops_into_window() -> bool:
        # A branch back into the bytes the jump replaces (a loop head right at the
        # entry) would land mid-instruction for a thread already inside.
        return arch.branches_into(bytes(code), entry, address, entry + need)

    return EntrySite(
        decision=decision,
        source=source,
        module=module.path,
        address=address,
        expected=expected,
        function=(entry, entry + len(code)),
        loops_into_window=loops_into_window,
    )


def find_too_small(
    decisions: list[FunctionDecision], module: RunningModule, memory: ProcessMemory, arch: Arch
) -> tuple[FunctionDecision, bytes] | None:
    """The first of ``decisions`` whose function is too small for an entry jump, with
    its code as it is in memory now; None if every one has room."""
    ranges = []
    for decision in decisions:
        assert decision.old is not None
        ranges.append((decision.old.address, max(decision.old.size, _HEAD)))
    for decision, code in zip(decisions, memory.read_many(ranges), strict=True):
        _, need, available = _entry_room(decision, code, module, arch)
        if available < need:
            return decision, code
    return None


def too_small_error(
    decision: FunctionDecision,
    module: RunningModule,
    running: bytes,
    arch: Arch,
    callers: Sequence[str] = (),
) -> UnsafePatch:
    """The refusal for a function too small for an entry jump (``running``: its code
    now; ``callers``: the functions of other files that call it directly)."""
    _, need, available = _entry_room(decision, running, module, arch)
    build = "build it with -fpatchable-function-entry=8 (or make it noinline and larger)"
    if callers:
        shown = ", ".join(callers[:6]) + (" ..." if len(callers) > 6 else "")
        hint = (
            f"it is called from other files only, by {shown}: change and reload those "
            f"callers so they call the new code, or {build}"
        )
    else:
        hint = f"no direct caller calls it (only through pointers): {build}"
    return UnsafePatch(
        f"{decision.name} is {available} bytes long, too small for a {need}-byte entry jump",
        hint=hint,
        function=decision.name,
    )


def _entry_room(
    decision: FunctionDecision, running: bytes, module: RunningModule, arch: Arch
) -> tuple[int, int, int]:
    """(landing pad kept, bytes the jump needs with it, bytes the function has).

    The bytes we may overwrite are the function's own: its size, or up to the
    next symbol (alignment padding), for functions of the original program.
    """
    old = decision.old
    assert old is not None
    pad = arch.find_landing_pad_size(running[:_HEAD])
    need = pad + arch.entry_jump_size
    available = old.size if old.from_journal else _available_bytes(module, old.address, old.size)
    return pad, need, available


def _available_bytes(module: RunningModule, entry: int, size: int) -> int:
    following = module.image.find_next_symbol_address(entry - module.bias)
    if following is None:
        return size
    return max(size, following + module.bias - entry)

"""Move running frames of redirected functions into their new code.

An entry jump only reaches the next call of a function; a loop that never
returns (``main``, a worker thread's loop) would run its old code forever.
When a thread is inside a redirected function (its PC, or a return address on
its stack that the unwind tables place exactly), and the old and new code have
the same shape (``Arch.match_shapes``), the frame moves: its PC or return
address is rewritten to the counterpart instruction of the new code, and a
constant the old code set differently in a register the frame still uses is
set to its new value.  Otherwise the frame stays and the user is told why.

Everything that can be is done before the threads are held: the old versions
are read and matched, the unwind tables loaded.  While they are held, each
thread's stack is walked and the moves are written in the same stop as the
entry jumps (see :func:`relive.patch.apply.write_entries`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from relive.arch.base import Arch, FunctionShape
from relive.errors import ReliveError
from relive.link import LinkedImage
from relive.patch.active import iter_active_functions
from relive.patch.callsites import inlined_functions, match_call_sites
from relive.patch.journal import DefinitionKind, EntryPatch, Journal
from relive.patch.modules import RunningModule
from relive.patch.original import read_original_code
from relive.patch.plan import Decision, ReloadPlan
from relive.patch.stacks import Frame, FrameTables, Location, Registers, StackWindow, unwind
from relive.process.memory import ProcessMemory
from relive.process.procfs import find_mapping, read_maps
from relive.process.samples import sample_positions
from relive.process.threads import StoppedProcess

#: Above this many redirected functions, only those seen on a stack before the
#: stop are matched (matching costs a disassembly of both versions).
MATCH_ALL_LIMIT = 64
HOW_SAME_SHAPE = "same shape"


@dataclass(frozen=True)
class FrameMove:
    """One frame of one thread, moved from old code to new code."""

    tid: int
    function: str
    old: int
    new: int
    how: str
    slot: int | None  # where the PC is stored; None: the thread's own PC
    fixups: tuple[tuple[Location, int], ...] = ()


@dataclass(frozen=True)
class FrameStay:
    """A frame inside a redirected function that keeps running its old code."""

    tid: int
    function: str
    reason: str
    #: Changed functions inlined into it (the edit the user made is in one of them).
    inlined: tuple[str, ...] = ()


@dataclass
class FramePlan:
    """What to do with every frame inside old code, decided while threads are held."""

    moves: list[FrameMove] = field(default_factory=list)
    stays: list[FrameStay] = field(default_factory=list)
    #: Threads whose stack was unwound to its end: every frame of them is known.
    complete: set[int] = field(default_factory=set)

    def covers(self, tid: int, function: str) -> bool:
        """Whether every frame of ``function`` on thread ``tid`` moves (none stays in it)."""
        return (
            tid in self.complete
            and any(m.tid == tid and m.function == function for m in self.moves)
            and not any(s.tid == tid and s.function == function for s in self.stays)
        )

    def told(self) -> set[tuple[str, int]]:
        """``(function, tid)`` this plan reports on (moved or staying)."""
        return {(m.function, m.tid) for m in self.moves} | {(s.function, s.tid) for s in self.stays}

    def moves_pc(self, tid: int) -> bool:
        """Whether the thread's own PC moves (then it is in no old bytes)."""
        return any(m.tid == tid and m.slot is None for m in self.moves)


@dataclass
class CodeVersion:
    """One old version of a redirected function, and how its frames move."""

    name: str
    start: int
    end: int
    shape: FunctionShape | None
    why_not: str
    inlined: tuple[str, ...] = ()


class FrameMover:
    """Plans and writes frame moves for one transaction."""

    def __init__(
        self, versions: list[CodeVersion], tables: FrameTables, arch: Arch, how: str = ""
    ) -> None:
        #: How the report names these moves (default: as the shapes say).
        self.how = how
        self.versions = sorted(versions, key=lambda v: v.start)
        self.tables = tables
        self.registers = Registers(arch.dwarf_registers, arch.callee_saved)
        self.arch = arch

    def warm(
        self, memory: ProcessMemory, positions: list[tuple[int, int | None, int | None]]
    ) -> None:
        """Walk the stacks of blocked threads before they are held (from their PC and
        stack pointer alone), so that the walk while they are held finds its unwind
        rows worked out already."""
        for _, pc, sp in positions:
            if pc is None or sp is None:
                continue
            values = {self.registers.pc: pc, self.registers.stack_pointer: sp}
            stack = StackWindow(memory.read, sp, memory.read_prefix)
            unwind(values, self.registers, stack.word, self.tables.find_row)

    def plan(self, stopped: StoppedProcess, memory: ProcessMemory) -> FramePlan:
        """Walk every held thread's stack; decide each frame inside old code."""
        plan = FramePlan()
        for tid in stopped.tids:
            regs = stopped.get_regs(tid)
            values = {name: int(getattr(regs, name)) for name in self.registers.dwarf}
            stack = StackWindow(
                memory.read, values[self.registers.stack_pointer], memory.read_prefix
            )
            frames, complete = unwind(values, self.registers, stack.word, self.tables.find_row)
            if complete:
                plan.complete.add(tid)
            in_syscall = self.arch.in_syscall is None or self.arch.in_syscall(regs)
            for frame in frames:
                self._plan_frame(plan, tid, frame, in_syscall)
        return plan

    def _plan_frame(self, plan: FramePlan, tid: int, frame: Frame, in_syscall: bool) -> None:
        version = self._find(frame.pc if frame.exact else frame.pc - 1)
        if version is None:
            return
        if version.shape is None:
            plan.stays.append(FrameStay(tid, version.name, version.why_not, version.inlined))
            return
        if frame.pc_slot is None and in_syscall:
            plan.stays.append(
                FrameStay(tid, version.name, "it is inside a system call", version.inlined)
            )
            return
        resume = version.shape.resume(frame.pc)
        if isinstance(resume, str):
            plan.stays.append(FrameStay(tid, version.name, resume, version.inlined))
            return
        fixups = []
        for register, value in resume.fixups:
            location = frame.locations.get(register)
            if location is None:
                reason = f"where the frame's {register} is kept is unknown"
                plan.stays.append(FrameStay(tid, version.name, reason, version.inlined))
                return
            fixups.append((location, value))
        plan.moves.append(
            FrameMove(
                tid,
                version.name,
                frame.pc,
                resume.address,
                self.how or resume.how,
                frame.pc_slot,
                tuple(fixups),
            )
        )

    def _find(self, address: int) -> CodeVersion | None:
        for version in self.versions:
            if version.start <= address < version.end:
                return version
        return None

    def apply(self, plan: FramePlan, stopped: StoppedProcess, memory: ProcessMemory) -> None:
        """Write the moves: return addresses and saved registers, then thread registers."""
        registers: dict[int, dict[str, int]] = {}
        for move in plan.moves:
            own = registers.setdefault(move.tid, {})
            if move.slot is None:
                own[self.registers.pc] = move.new
            else:
                memory.write(move.slot, move.new.to_bytes(8, "little"))
            for (kind, where), value in move.fixups:
                if kind == "reg":
                    own[str(where)] = value
                else:
                    memory.write(int(where), value.to_bytes(8, "little"))
        for tid, changes in registers.items():
            if not changes:
                continue
            regs = stopped.get_regs(tid)
            for name, value in changes.items():
                setattr(regs, name, value)
            stopped.set_regs(tid, regs)


def prepare_frame_mover(
    pid: int,
    plans: list[ReloadPlan],
    images: list[LinkedImage],
    journal: Journal,
    memory: ProcessMemory,
    arch: Arch,
    modules: list[RunningModule],
) -> FrameMover | None:
    """Match the old and new code of redirected functions a thread may be in.

    Returns None when no thread can be inside one (nothing to move).
    """
    if arch.match_shapes is None:
        return None
    pairs = list(_iter_versions(plans, images, journal))
    if not pairs:
        return None
    positions = sample_positions(pid)
    wanted = _functions_maybe_running(pid, memory, arch, pairs, positions)
    if not wanted:
        return None
    equivalent = _Equivalence(pid, plans, images, memory, arch)
    versions = []
    for name, module, start, size, is_original, new_address, new_code, plan in pairs:
        if name not in wanted:
            continue
        try:
            if is_original:
                old_code = read_original_code(module, start, size, memory.read)
            else:
                old_code = memory.read(start, size)
        except ReliveError as error:
            versions.append(CodeVersion(name, start, start + size, None, error.message))
            continue
        shape = arch.match_shapes(old_code, start, new_code, new_address, equivalent)
        inlined: tuple[str, ...] = ()
        if isinstance(shape, str) and is_original:
            changed = {d.name for p in plans for d in p.with_status(Decision.CHANGED)}
            inlined = tuple(
                f
                for f in inlined_functions(module.file, plan.source, name)
                if f in changed and f != name
            )
        if isinstance(shape, str) and is_original and arch.match_call_sites is not None:
            sites = match_call_sites(
                arch.match_call_sites,
                (old_code, start, module.file, plan.source),
                (new_code, new_address, plan.obj, plan.source),
                name,
                equivalent,
                _CalleeNames(module, memory, arch),
            )
            if not isinstance(sites, str):
                why = _not_same_shape(shape)
                versions.append(CodeVersion(name, start, start + size, sites, why, inlined))
                continue
        if isinstance(shape, str):
            why = _not_same_shape(shape)
            versions.append(CodeVersion(name, start, start + size, None, why, inlined))
        else:
            versions.append(CodeVersion(name, start, start + size, shape, ""))
    mover = FrameMover(versions, FrameTables(modules), arch)
    mover.warm(memory, positions)
    return mover


class _CalleeNames:
    """The name of a called address, for messages ("usleep", not 0x55d0...)."""

    def __init__(self, module: RunningModule, memory: ProcessMemory, arch: Arch) -> None:
        self.module = module
        self.memory = memory
        self.arch = arch

    def __call__(self, address: int) -> str:
        image = self.module.image
        vaddr = address - self.module.bias
        for symbol in image.iter_functions():
            if symbol.value <= vaddr < symbol.value + max(symbol.size, 1):
                return symbol.name
        try:
            slot = self.arch.find_plt_slot(self.memory.read(address, 16), address)
        except ReliveError:
            slot = None
        if slot is not None:
            for relocation in image.dynamic_relocations:
                if relocation.offset == slot - self.module.bias and relocation.symbol:
                    return str(relocation.symbol)
        return f"{address:#x}"


def _not_same_shape(detail: str) -> str:
    return f"its new code has another shape ({detail})"


_Pair = tuple[str, RunningModule, int, int, bool, int, bytes, ReloadPlan]


def _iter_versions(
    plans: list[ReloadPlan], images: list[LinkedImage], journal: Journal
) -> Iterator[_Pair]:
    """``(name, module, old start, size, is original, new address, new code)``."""
    for plan, image in zip(plans, images, strict=True):
        record = journal.sources.get(plan.source)
        for d in plan.with_status(Decision.CHANGED):
            if d.old is None or not d.symbol.size:
                continue
            new_address = image.get_symbol_address(d.symbol)
            new_code = image.read(new_address, d.symbol.size) or b""
            if d.old.size and not d.old.from_journal:
                yield (
                    d.name,
                    plan.module,
                    d.old.address,
                    d.old.size,
                    True,
                    new_address,
                    new_code,
                    plan,
                )
            previous = record.definitions.get(d.name) if record else None
            if previous is not None and previous.kind is DefinitionKind.FUNCTION and previous.size:
                yield (
                    d.name,
                    plan.module,
                    previous.address,
                    previous.size,
                    False,
                    new_address,
                    new_code,
                    plan,
                )
            for patch in journal.patches.values():
                if patch.name != d.name or patch.source != plan.source:
                    continue
                for address, size in patch.earlier:
                    yield d.name, plan.module, address, size, False, new_address, new_code, plan
                if patch.size:
                    yield (
                        d.name,
                        plan.module,
                        patch.target,
                        patch.size,
                        False,
                        new_address,
                        new_code,
                        plan,
                    )


def _functions_maybe_running(
    pid: int,
    memory: ProcessMemory,
    arch: Arch,
    pairs: list[_Pair],
    positions: list[tuple[int, int | None, int | None]],
) -> set[str]:
    """Names a thread may be inside of, from a look at the threads without stopping them."""
    names = {p[0] for p in pairs}
    if len(names) <= MATCH_ALL_LIMIT and any(pc is None for _, pc, _ in positions):
        return names  # a running thread: it could be anywhere
    ranges: dict[str, tuple[int, int]] = {}
    for name, _, start, size, *_ in pairs:
        ranges[f"{name}@{start:#x}"] = (start, start + size)
    known = [(tid, pc, sp) for tid, pc, sp in positions if pc is not None and sp is not None]
    found = {
        key.split("@")[0] for key, _ in iter_active_functions(pid, memory, arch, ranges, known)
    }
    return found


class _Equivalence:
    """Whether an old and a new referenced address mean the same thing.

    The same function (old entry, new code of that function); or read-only data
    with equal contents (a string or constant the new object carries its own
    copy of).  A writable variable is only ever the same address: a new copy
    would be different storage.
    """

    def __init__(
        self,
        pid: int,
        plans: list[ReloadPlan],
        images: list[LinkedImage],
        memory: ProcessMemory,
        arch: Arch | None = None,
    ) -> None:
        self.memory = memory
        self.images = images
        self.arch = arch
        self.maps = read_maps(pid)
        self.entries: dict[int, int] = {}
        for plan, image in zip(plans, images, strict=True):
            for d in plan.decisions:
                if d.old is not None and d.status is Decision.CHANGED:
                    self.entries[d.old.address] = image.get_symbol_address(d.symbol)

    def __call__(self, old: int, new: int, size: int) -> bool:
        if self.entries.get(old) == new:
            return True
        if size == 0 and self._final(old) == self._final(new) != old:
            return True  # a PLT entry and a call stub that both lead to one function
        mapping = find_mapping(self.maps, old)
        if mapping is None or "w" in mapping.perms:
            return False
        try:
            if size:
                return self._read(old, size) == self._read(new, size)
            return self._cstring(old) == self._cstring(new)
        except ReliveError:
            return False

    def _final(self, address: int) -> int:
        """Where a PLT entry or a call stub at ``address`` jumps (else ``address``)."""
        if self.arch is None:
            return address
        try:
            slot = self.arch.find_plt_slot(self._read(address, 16), address)
            if slot is None:
                return address
            return int.from_bytes(self._read(slot, 8), "little")
        except ReliveError:
            return address

    def _read(self, address: int, size: int) -> bytes:
        for image in self.images:
            found = image.read(address, size)
            if found is not None:
                return found
        return self.memory.read(address, size)

    def _cstring(self, address: int) -> bytes | None:
        text = b""
        for chunk in range(8):
            block = self._read(address + 32 * chunk, 32)
            end = block.find(b"\0")
            if end >= 0:
                return text + block[:end]
            text += block
        return None


def iter_frames_in_new_code(
    pid: int, patches: list[EntryPatch], positions: list[tuple[int, int, int]]
) -> Iterator[tuple[str, int]]:
    """``(function, tid)`` for threads still inside the reloaded code of undone patches."""
    ranges = {p.name: (p.target, p.target + p.size) for p in patches if p.size}
    if not ranges:
        return
    from relive.arch import get_arch
    from relive.patch.modules import get_main_module, load_running_modules

    arch = get_arch(get_main_module(load_running_modules(pid)).image.machine)
    with ProcessMemory(pid) as memory:
        yield from iter_active_functions(pid, memory, arch, ranges, positions)


#: How many earlier versions of a function's code a journal remembers.
MAX_EARLIER = 32


def code_history(journal: Journal) -> dict[str, list[list[int]]]:
    """Per entry patch, the code its reloads loaded so far (taken before a reload)."""
    return {
        key: [*p.earlier, [p.target, p.size]][-MAX_EARLIER:] if p.size else list(p.earlier)
        for key, p in journal.patches.items()
    }


def record_code_sizes(
    journal: Journal,
    plans: list[ReloadPlan],
    images: list[LinkedImage],
    history: dict[str, list[list[int]]],
) -> None:
    """Note in each entry patch how long the code it jumps to is, and the code
    earlier reloads loaded (``history``, from :func:`code_history`): a later reload
    finds threads inside any of it and moves their frames on."""
    sizes: dict[int, int] = {}
    for plan, image in zip(plans, images, strict=True):
        for d in plan.with_status(Decision.CHANGED):
            sizes[image.get_symbol_address(d.symbol)] = d.symbol.size
    for key, patch in journal.patches.items():
        size = sizes.get(patch.target)
        if size:
            patch.size = size
            patch.earlier = [r for r in history.get(key, []) if r[0] != patch.target]

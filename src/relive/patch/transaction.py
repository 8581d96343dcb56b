"""The reload transaction: what happens, in what order, once the plans are made.

:func:`apply_reload` is the whole sequence:

1. check every entry (``patch.entries``): room for the jump, the bytes there
   now, and no thread inside a function whose loop re-enters its entry
   (``patch.loops``), before the first byte is allocated or written;
2. allocate and link: each plan is linked at a free address within reach of
   its module, which is mapped read+write in the target (``patch.block``);
   a file that uses a function or variable another file of the reload adds is
   linked again once that file's block has its address (``link_across``);
3. write the new code and data while the program runs (nothing jumps there
   yet), then protect the code pages read+execute;
4. record in the journal what was loaded and, as pending, the jumps about to be
   written, and save it (write-ahead, ``patch.wal``);
5. stop every thread, wait until none is in the way, write all entry jumps at
   once and the initial values ``--reinit`` chose (``patch.initial``) in the
   same stop, and resume (``patch.jumps``): a refused reload has changed no
   running variable;
6. on any failure up to here, give the new blocks back and the journal its old
   contents: the program is as it was (unless some jumps made it into memory:
   then those are committed and their code kept);
7. commit the pending jumps and save the journal;
8. once the threads run again, make the new code visible to tools: unwind
   tables registered with the program's unwinder, a debug object per block,
   the perf map (``patch.tooling``).

The journal is saved once before anything else (nothing changes in the target
unless it can be written), and steps 2-7 run while relive's own
SIGINT/SIGQUIT/SIGTERM/SIGHUP are held (``patch.held``).  A relive killed
(SIGKILL) between 4 and 7 leaves pending jumps that the next load reconciles with memory, so no kill
leaves a patch the journal does not know.

:func:`undo_patches` is the reverse transaction: original bytes back, journal
updated, written ahead in the same way.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from relive.arch.base import Arch
from relive.elf.objfile import ObjSymbol
from relive.errors import ReliveError
from relive.events import BlockNotReleased, EventSink, Notice
from relive.link import LinkedImage
from relive.link.layout import MIN_CODE_ROOM
from relive.patch.active import iter_active_functions
from relive.patch.arena import ArenaAllocator
from relive.patch.block import allocate_and_link, link_across, write_block
from relive.patch.entries import EntrySite, EntryWrite, iter_entry_sites
from relive.patch.frames import (
    FrameMove,
    FrameMover,
    FramePlan,
    code_history,
    iter_frames_in_new_code,
    prepare_frame_mover,
    record_code_sizes,
)
from relive.patch.held import held_signals as held_signals
from relive.patch.initial import DataChange, encode_initial_changes, write_initial_values
from relive.patch.journal import (
    Definition,
    DefinitionKind,
    EntryPatch,
    Journal,
    LoadedBlock,
    restore_journal,
    save_journal,
)
from relive.patch.jumps import EntryReport, write_entries
from relive.patch.loops import refuse_running_loop_heads
from relive.patch.matched import binding_context, encode_bindings, function_keys
from relive.patch.modules import RunningModule, load_running_modules
from relive.patch.plan import Decision, ReloadPlan
from relive.patch.reclaim import DeadCodeCheck, mark_reclaimed
from relive.patch.release import free_undone_blocks
from relive.patch.wal import commit, find_done, stage_jumps, stage_undo
from relive.process.memory import ProcessMemory


@dataclass(frozen=True)
class Applied:
    """What a reload transaction did."""

    #: One linked block per plan, in order.
    images: list[LinkedImage]
    #: How long the threads were stopped to write the entry jumps (0: none written).
    stopped_seconds: float
    #: (function, tid): a replaced function a thread is still inside of; that call
    #: finishes in the old code.
    active: list[tuple[str, int]]
    #: What step 7 could not do (the reload itself stands).
    notices: list[str]
    #: Frames moved into the new code, and frames that stay (None: none looked at).
    frames: FramePlan | None = None


@dataclass(frozen=True)
class AttachedProcess:
    """The process a reload transaction changes, as the session attached it."""

    pid: int
    #: What relive did to this process (``patch.journal``), updated as the reload goes.
    journal: Journal
    memory: ProcessMemory
    arch: Arch
    #: Every ELF file the process maps, with its load bias (``patch.modules``).
    modules: Sequence[RunningModule]


def apply_reload(
    process: AttachedProcess,
    plans: list[ReloadPlan],
    reinits: list[list[DataChange]],
    emit: EventSink,
    move_frames: bool = False,
) -> Applied:
    """Load every plan's block, redirect its changed functions and record it all.

    ``reinits`` (one list per plan) are the variables whose new initial value is
    copied into their running storage (``--reinit``).  With ``move_frames``,
    frames running the old code move to the new code where that is provably
    safe (``patch.frames``).
    """
    staged = StagedReload(process, plans, reinits, emit, move_frames)
    with held_signals():
        staged.load()
        staged.switch()
        staged.commit()
    return staged.publish()


def check_entries(
    pid: int,
    plans: Sequence[ReloadPlan],
    journal: Journal,
    memory: ProcessMemory,
    arch: Arch,
    move_frames: bool,
) -> list[list[EntrySite]]:
    """Step 1: each plan's entry sites (room for the jump, the bytes there now), and,
    without ``move_frames``, no thread inside a function whose loop re-enters its
    entry (with it, that is decided while the threads are held, after moving
    frames).  Raises UnsafePatch; writes nothing (``reload --dry-run`` runs it too)."""
    sites = [
        list(
            iter_entry_sites(
                plan.with_status(Decision.CHANGED), plan.source, plan.module, journal, memory, arch
            )
        )
        for plan in plans
    ]
    if not move_frames:
        refuse_running_loop_heads(pid, itertools.chain(*sites), memory, arch)
    return sites


class StagedReload:
    """One process's reload transaction, step by step.

    :func:`apply_reload` runs the steps in a row.  ``reload --all`` runs
    :meth:`load` for every process first (each one's new code written while it
    runs), then :meth:`switch` for each, back to back, so that the processes
    start the new code close together, then :meth:`commit` and :meth:`publish`.
    A step that fails rolls its own process back (step 6) and raises; the other
    processes' transactions are not affected.  :meth:`load`, :meth:`switch`
    and :meth:`commit` must run while relive's signals are held.
    """

    def __init__(
        self,
        process: AttachedProcess,
        plans: list[ReloadPlan],
        reinits: list[list[DataChange]],
        emit: EventSink,
        move_frames: bool = False,
    ) -> None:
        self.process, self.plans, self.reinits, self.emit = process, plans, reinits, emit
        self.move_frames = move_frames
        journal = process.journal
        # 1. Every entry is checked before the first byte is allocated or written.
        self.sites = check_entries(
            process.pid, plans, journal, process.memory, process.arch, move_frames
        )
        self.history = code_history(journal)
        # Nothing changes in the target unless the journal can be written.
        self.before = save_journal(journal)
        self.images: list[LinkedImage] = []
        self.writes: list[EntryWrite] = []
        self.values: list[tuple[int, bytes]] = []
        self.mover: FrameMover | None = None
        self.entries: EntryReport | None = None
        #: Which superseded code no thread is in (seen at the stop that switches),
        #: and the code freed at the commit: ``(address, size)``.
        self.dead_code: DeadCodeCheck | None = None
        self.reclaimed: list[tuple[int, int]] = []
        self.notices: list[str] = []
        #: One allocator per module: the files of one reload share its arenas.
        self.allocators: dict[str, ArenaAllocator] = {}

    def _allocator(self, plan: ReloadPlan) -> ArenaAllocator:
        module = plan.module
        if module.path not in self.allocators:
            self.allocators[module.path] = ArenaAllocator(
                self.process.pid,
                self.process.journal,
                module,
                self.process.arch.jump_reach,
                low_memory=not module.image.is_pie_or_shared,
            )
        return self.allocators[module.path]

    def load(self) -> None:
        """Steps 2-4: allocate, link, write the new code while the program runs, and
        write the jumps about to be written ahead into the journal."""
        plans, images = self.plans, self.images
        with self._rollback_on_failure():
            # 2. Allocate and link (again, for files that use what another adds).
            for plan, changes in zip(plans, self.reinits, strict=True):
                images.append(allocate_and_link(self._allocator(plan), plan, bool(changes)))
            images[:] = link_across(plans, images)
            self.writes = _entry_writes(self.sites, images, self.process.arch)
            self.values = [
                (change.bound.address or 0, plan.link_initial_value(change, image))
                for plan, image, changes in zip(plans, images, self.reinits, strict=True)
                for change in changes
            ]
            # 3. Write (code arenas are read+execute already: written through /proc/PID/mem).
            for image in images:
                write_block(self.process.memory, image)
            if self.move_frames:  # matched while the program runs
                self.mover = prepare_frame_mover(
                    self.process.pid,
                    plans,
                    images,
                    self.process.journal,
                    self.process.memory,
                    self.process.arch,
                    list(self.process.modules),
                )
            # 4. Write ahead: the journal knows every jump before it is written.
            stage_jumps(self.process.journal, self.writes)
            _record(self.process.journal, plans, images)
            save_journal(self.process.journal)

    def switch(self) -> float | None:
        """Step 5: stop, check and write the entries and initial values (and move
        frames); when the jumps were written (``time.monotonic()``), None if none was."""
        with self._rollback_on_failure():
            if self.writes:
                self.dead_code = DeadCodeCheck.for_reload(self.process.journal, self.process.pid)
                self.entries = write_entries(
                    self.process.pid,
                    self.writes,
                    self.process.arch,
                    self.mover,
                    self.values,
                    self.dead_code.inspect,
                )
                return self.entries.written_at
            write_initial_values(self.process.pid, self.values)
        return None

    def commit(self) -> None:
        """Step 7: the pending jumps committed and the journal saved, with the code
        they superseded that no thread was in freed (its unwind tables taken out
        of the program's unwinder first)."""
        # Imported here: the new code runs before relive loads the debug-object writers.
        from relive.patch.tooling import deregister_dead_code

        dead = self.dead_code.dead if self.dead_code is not None else []
        freed, self.notices = deregister_dead_code(self.process.pid, self.process.journal, dead)
        commit(self.process.journal)
        record_code_sizes(self.process.journal, self.plans, self.images, self.history)
        self.reclaimed = mark_reclaimed(self.process.journal, freed)
        save_journal(self.process.journal)

    def publish(self) -> Applied:
        """Step 8 (threads running again): tools see the new code; what was done."""
        entries, plans = self.entries, self.plans
        active = (
            []
            if entries is None
            else _find_active(
                self.process.pid, plans, self.process.memory, self.process.arch, entries.positions
            )
        )
        frames = None if entries is None else entries.frames
        if frames is not None:
            told = frames.told()
            active = [(name, tid) for name, tid in active if (name, tid) not in told]
        from relive.patch.tooling import publish_new_code

        blocks = [(plan.source, image) for plan, image in zip(plans, self.images, strict=True)]
        notices = self.notices + publish_new_code(
            self.process.pid, self.process.modules, self.process.journal, blocks, self.reclaimed
        )
        stopped = 0.0 if entries is None else entries.stopped_seconds
        return Applied(self.images, stopped, active, notices, frames)

    def abandon(self) -> None:
        """Step 6: give the new blocks back and the journal its old contents (or,
        if some jumps made it into memory, commit those and keep their code)."""
        _abandon(
            self.process.journal,
            self.process.memory,
            list(self.allocators.values()),
            self.before,
            self.emit,
        )

    @contextmanager
    def _rollback_on_failure(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.abandon()
            raise


def undo_patches(
    pid: int, journal: Journal, keys: list[str], arch: Arch | None = None
) -> tuple[list[EntryPatch], list[str], list[tuple[str, int]], list[FrameMove]]:
    """Put back the original entry bytes of the journal's patches ``keys``.

    Returns the patches undone, notices (unwind tables that could not be
    retired), ``(function, tid)`` for threads still inside the reloaded code
    (their call finishes there), and the frames moved back to the original code
    (with ``arch``: under the same rules as moves into new code).
    """
    from relive.patch.frames_back import prepare_undo_mover  # undo only
    from relive.patch.tooling import retire_unused_code

    staying: list[tuple[str, int]] = []
    moved: list[FrameMove] = []
    chosen = [journal.patches[key] for key in keys]
    writes = [
        EntryWrite(p.name, p.entry, bytes.fromhex(p.written), bytes.fromhex(p.original))
        for p in chosen
    ]
    if writes:
        mover = None
        if arch is not None:  # before the write-ahead: a failure here stages nothing
            with ProcessMemory(pid) as memory:
                modules = load_running_modules(pid)
                mover = prepare_undo_mover(pid, journal, chosen, modules, memory, arch)
        with held_signals():
            stage_undo(journal, keys)
            dead = DeadCodeCheck.for_undo(journal)
            save_journal(journal)  # write-ahead (and refused here if it cannot be)
            try:
                report = write_entries(pid, writes, None, mover, inspect=dead.inspect)
            except BaseException:
                with ProcessMemory(pid) as memory:
                    commit(journal, find_done(journal, memory))
                save_journal(journal)
                raise
            commit(journal)
            save_journal(journal)
        moved = report.frames.moves if report.frames is not None else []
        staying = list(iter_frames_in_new_code(pid, chosen, report.positions))
        notices = retire_unused_code(pid, journal)
        notices += free_undone_blocks(pid, journal, dead)
        return chosen, notices, staying, moved
    return chosen, [], staying, moved


def _abandon(
    journal: Journal,
    memory: ProcessMemory,
    allocators: list[ArenaAllocator],
    before: bytes,
    emit: EventSink,
) -> None:
    """After a failed transaction: record the jumps that made it into memory, or, if
    none did, give back the arena chunks it mapped and put the journal back as it was
    (the space it took in older chunks is free again: no committed block holds it)."""
    done = find_done(journal, memory) if journal.pending else set()
    if done:  # the code those jumps lead to must stay
        names = sorted({p.after.name for k, p in journal.pending.items() if k in done and p.after})
        commit(journal, done)
        save_journal(journal)
        if names:  # the error that follows must not read as "nothing changed"
            emit(
                Notice(
                    f"the reload failed after {len(names)} entry jump(s) were written: "
                    f"{', '.join(names)} run(s) the new code (`relive undo` reverts them)"
                )
            )
        return
    for allocator in allocators:
        chunks = list(allocator.mapped)
        try:
            allocator.release_mapped()
        except ReliveError as error:  # said, and the rollback goes on
            for chunk in chunks:
                emit(BlockNotReleased(chunk.address, chunk.size, error.one_line()))
    with contextlib.suppress(ReliveError):  # unwritable: it still holds ``before``
        restore_journal(journal, before)


def _entry_writes(
    sites: list[list[EntrySite]], images: list[LinkedImage], arch: Arch
) -> list[EntryWrite]:
    """Each site's jump to its function's new code."""
    return [
        site.jump_to(image.get_symbol_address(site.decision.symbol), arch)
        for image, plan_sites in zip(images, sites, strict=True)
        for site in plan_sites
    ]


def _record(journal: Journal, plans: list[ReloadPlan], images: list[LinkedImage]) -> None:
    """Tell the journal what was loaded (the entry jumps go through ``patch.wal``)."""
    for plan, image in zip(plans, images, strict=True):
        fingerprints = {
            d.name: d.fingerprint for d in plan.decisions if d.status is not Decision.SKIPPED
        }
        journal.record_generation(plan.source, fingerprints, _definitions(plan, image))
        if image.data:
            journal.blocks.append(
                LoadedBlock(
                    plan.source,
                    plan.module.path,
                    list(image.code_range),
                    list(image.data_range),
                    escaped=image.takes_own_code,
                    pending=True,
                    program_data=image.data_range[1],
                    own=list(image.own_range),
                )
            )
    for plan in plans:
        record = journal.sources[plan.source]
        record.matched = {d.name: d.matched for d in plan.decisions if d.matched}
        record.matched_context = binding_context(journal, plan.binder.modules)
        record.keys = function_keys(plan)
        record.keys_context = plan.keys_context or ""
        record.keys_layout = "" if plan.code_keys is None else plan.code_keys.layout
        record.bindings = encode_bindings(plan.bindings) if plan.code_keys else ""
        record.initial = encode_initial_changes(plan.initial_changed) if record.bindings else ""


def _definitions(plan: ReloadPlan, image: LinkedImage) -> Iterator[Definition]:
    """What the block holds that later reloads bind to: new functions and variables."""
    for d in plan.decisions:
        if d.status is Decision.NEW:
            yield Definition(
                d.name,
                image.get_symbol_address(d.symbol),
                _room(plan, d.symbol),
                DefinitionKind.FUNCTION,
                d.symbol.file if d.symbol.is_local else None,
                d.fingerprint,
            )
    for symbol in plan.new_data:
        section = plan.obj.sections[symbol.shndx]
        if section.is_write:
            scope = plan.binder.static_scope(symbol)
            yield Definition(
                symbol.name,
                image.get_symbol_address(symbol),
                symbol.size,
                DefinitionKind.DATA,
                symbol.file if symbol.is_local else None,
                scope="" if scope is None else scope.label(),
            )


def _room(plan: ReloadPlan, symbol: ObjSymbol) -> int:
    """Bytes a new function may have overwritten by a later entry jump."""
    alone = [s for s in plan.obj.iter_section_symbols(symbol.shndx) if s.is_function] == [symbol]
    return max(symbol.size, MIN_CODE_ROOM) if alone and symbol.value == 0 else symbol.size


def _find_active(
    pid: int,
    plans: list[ReloadPlan],
    memory: ProcessMemory,
    arch: Arch,
    positions: list[tuple[int, int, int]],
) -> list[tuple[str, int]]:
    """Replaced functions a thread was inside of when the jumps were written."""
    ranges = {
        d.name: (d.old.address, d.old.address + max(d.old.size, 1))
        for plan in plans
        for d in plan.with_status(Decision.CHANGED)
        if d.old is not None
    }
    if not ranges:
        return []
    return list(iter_active_functions(pid, memory, arch, ranges, positions))

"""The façade: attach to a process, reload sources, undo, report status.

This is the Python API the CLI uses::

    import relive
    session = relive.attach(pid)
    session.reload(["demo.c"])
    session.status()
    session.undo()
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relive.arch import get_arch
from relive.errors import ReliveError
from relive.events import (
    EventSink,
    FrameMoved,
    FrameStaysNew,
    FunctionActive,
    FunctionRestored,
    Notice,
    ReloadFinished,
    Timings,
    ignore_event,
)
from relive.patch.journal import load_journal, save_journal
from relive.patch.lock import process_lock
from relive.patch.modules import get_main_module, load_running_modules
from relive.patch.planning import (
    PlanContext,
    ReloadOptions,
    Topic,
    announce,
    check_paths,
    lap,
    plan_reload,
    reroute_too_small,
)
from relive.patch.recover import load_or_rebuild_journal
from relive.patch.report import FunctionOutcomes, report_decisions, report_frames
from relive.patch.selection import check_selected, still_patched_from
from relive.patch.transaction import apply_reload, undo_patches
from relive.process.memory import ProcessMemory
from relive.process.permissions import find_other_user
from relive.process.procfs import check_alive, get_tgid
from relive.statedir import scratch_dir


@dataclass(frozen=True)
class PatchStatus:
    """One patched function as ``status`` reports it."""

    name: str
    source: str
    address: int
    target: int
    count: int
    updated: float
    active: bool  # the jump is really in memory


@dataclass
class ReloadResult:
    """What a reload did, per function."""

    redirected: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stopped_us: float = 0.0
    phases_ms: dict[str, float] = field(default_factory=dict)


def attach(pid: int, on_event: EventSink | None = None) -> Session:
    """A session on a running process (raises ProcessGone if there is none).

    A thread id stands for its process.  A process relive may not trace is
    refused here (PermissionDenied), so that ``undo`` and ``status`` of another
    user's process say so rather than find nothing in this user's journals.
    """
    check_alive(pid)
    denied = find_other_user(pid)
    if denied is not None:
        raise denied
    return Session(get_tgid(pid), on_event or ignore_event)


class Session:
    """Reload, undo and inspect patches of one process."""

    def __init__(self, pid: int, on_event: EventSink) -> None:
        self.pid = pid
        self.emit = on_event
        #: The files each source read at its latest compile in this session (from
        #: the compiler's dependency file): how ``watch`` learns a new #include.
        self.dependencies: dict[Path, tuple[Path, ...]] = {}
        #: What has been said about each source (its compile command's notes, ...):
        #: said once per session, so a watch does not repeat it at every save.
        self.announced: set[tuple[Path, Topic]] = set()

    # -- reload ------------------------------------------------------------------

    def reload(
        self,
        paths: Sequence[str | Path],
        functions: Collection[str] | None = None,
        dry_run: bool = False,
        cflags: Sequence[str] | None = None,
        compdb: Path | None = None,
        trust_build: bool = False,
        reinit: Collection[str] = (),
        new_file: bool = False,
        allow_layout_change: bool = False,
        debug: bool = False,
        move_frames: bool = True,
    ) -> ReloadResult:
        """Compile (``.c``) or take (``.o``) each path and redirect its changed functions.

        ``reinit`` names variables whose changed initial value is copied into the
        running storage (otherwise the program keeps their current value).
        ``new_file`` accepts a file the program was not built from: it may then only
        add functions, or replace those named in ``functions``.
        A type whose layout differs from the one data in the program has is refused
        (LayoutChanged) unless ``allow_layout_change``.
        ``debug`` (hot-deoptimize) compiles at ``-O0 -g3`` and redirects every function.
        With ``move_frames``, threads inside a redirected function continue in its
        new code where that is provably safe (``patch.frames``).
        The plan side is ``patch.planning``, the transaction ``patch.transaction``.
        """
        check_paths(paths, debug)
        options = ReloadOptions(
            functions, cflags, compdb, trust_build, new_file, allow_layout_change, debug
        )
        with process_lock(self.pid):
            return self._reload(paths, options, dry_run, reinit, move_frames)

    def _reload(
        self,
        paths: Sequence[str | Path],
        options: ReloadOptions,
        dry_run: bool,
        reinit: Collection[str],
        move_frames: bool = True,
    ) -> ReloadResult:
        result = ReloadResult()
        phases = result.phases_ms
        started = time.perf_counter()
        journal = load_journal(self.pid)
        modules = load_running_modules(self.pid)
        arch = get_arch(get_main_module(modules).image.machine)
        lap(phases, "attach", started)
        with ProcessMemory(self.pid) as memory, scratch_dir() as scratch:
            ctx = PlanContext(
                self.pid,
                modules,
                journal,
                memory,
                arch,
                Path(scratch),
                phases,
                self.emit,
                options,
                self.dependencies,
                self.announced,
            )
            plans = plan_reload([Path(p) for p in paths], ctx)
            check_selected(plans, options.functions)
            reinits = announce(plans, reinit, self.emit)
            mark = time.perf_counter()
            if dry_run:
                self._take(report_decisions(plans, None, self.emit), result)
                self._finished(result, dry_run=True)
                return result
            for plan in plans:
                reroute_too_small(plan, ctx)
            applied = apply_reload(
                self.pid, plans, journal, memory, arch, reinits, modules, self.emit, move_frames
            )
            result.stopped_us = applied.stopped_seconds * 1e6
            self._take(report_decisions(plans, applied.images, self.emit), result)
            report_frames(applied.frames, self.emit)
            for name, tid in applied.active:
                self.emit(FunctionActive(name, tid))
            for notice in applied.notices:
                self.emit(Notice(notice))
            lap(phases, "patch", mark)
        self.emit(Timings(dict(phases), result.stopped_us))
        self._finished(result, dry_run=False)
        return result

    @staticmethod
    def _take(outcomes: FunctionOutcomes, result: ReloadResult) -> None:
        result.redirected += outcomes.redirected
        result.added += outcomes.added
        result.unchanged += outcomes.unchanged
        result.skipped += outcomes.skipped

    def _finished(self, result: ReloadResult, dry_run: bool) -> None:
        self.emit(
            ReloadFinished(
                self.pid,
                len(result.redirected),
                len(result.added),
                len(result.unchanged),
                dry_run,
            )
        )

    # -- undo and status ------------------------------------------------------------

    def status(self) -> list[PatchStatus]:
        """Every patch relive applied to this process, checked against memory."""
        journal, _ = load_or_rebuild_journal(self.pid, self.emit)
        out = []
        with ProcessMemory(self.pid) as memory:
            for patch in journal.patches.values():
                written = bytes.fromhex(patch.written)
                active = memory.read(patch.entry, len(written)) == written
                out.append(
                    PatchStatus(
                        patch.name,
                        patch.source,
                        patch.entry,
                        patch.target,
                        patch.count,
                        patch.updated,
                        active,
                    )
                )
        return out

    def undo(self, functions: Collection[str] | None = None) -> list[str]:
        """Put back the original entry bytes of all (or the named) patched functions."""
        with process_lock(self.pid):
            return self._undo(functions)

    def _undo(self, functions: Collection[str] | None) -> list[str]:
        # Never trust a journal's bytes: put back only what the module files hold.
        journal, rebuilt = load_or_rebuild_journal(self.pid, self.emit, verify_originals=True)
        keys = [k for k, p in journal.patches.items() if functions is None or p.name in functions]
        if functions is not None:
            unknown = set(functions) - {journal.patches[k].name for k in keys}
            if unknown:
                raise ReliveError(
                    f"not patched: {', '.join(sorted(unknown))}",
                    hint="`relive status -p PID` lists what is patched",
                )
        arch = get_arch(get_main_module(load_running_modules(self.pid)).image.machine)
        restored, notices, staying, moved = undo_patches(self.pid, journal, keys, arch)
        if rebuilt:
            save_journal(journal)  # a valid journal replaces the corrupt one
        for p in restored:
            self.emit(FunctionRestored(p.name, p.entry))
        for move in moved:
            self.emit(FrameMoved(move.tid, move.function, move.old, move.new, move.how))
        for name, tid in staying:
            self.emit(FrameStaysNew(tid, name))
        for notice in notices:
            self.emit(Notice(notice))
        kept = still_patched_from(journal, restored)
        if kept:
            self.emit(Notice(kept))
        return [p.name for p in restored]

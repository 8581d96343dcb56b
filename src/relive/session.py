"""The façade: attach to a process, reload sources, undo, report status.

This is the Python API the CLI uses::

    import relive
    session = relive.attach(pid)
    session.reload(["demo.c"])
    session.status()
    session.undo()
"""

from __future__ import annotations

import enum
import time
from collections.abc import Collection, Generator, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from relive.arch import get_arch
from relive.errors import ReliveError
from relive.events import (
    Event,
    EventSink,
    FrameMoved,
    FrameStaysNew,
    FunctionActive,
    FunctionRestored,
    Notice,
    PatchStatus,
    ProcessesSwitched,
    Progress,
    ReloadFinished,
    Timings,
    ignore_event,
)
from relive.patch.dryrun import check_as_reload
from relive.patch.gcpause import cyclic_gc_paused
from relive.patch.journal import load_journal, save_journal
from relive.patch.lock import process_lock
from relive.patch.modules import get_main_module, load_running_modules
from relive.patch.options import DEFAULTS, ReloadOptions
from relive.patch.outcome import ReloadResult
from relive.patch.planning import (
    PlanContext,
    SharedCompiles,
    Topic,
    announce,
    check_paths,
    lap,
    plan_reload,
    reroute_too_small,
)
from relive.patch.selection import check_selected, still_patched_from
from relive.patch.transaction import AttachedProcess, StagedReload, held_signals, undo_patches
from relive.process.memory import ProcessMemory
from relive.process.permissions import find_other_user
from relive.process.procfs import check_alive, get_tgid
from relive.statedir import scratch_dir


class Step(enum.Enum):
    """Where a reload stands between the steps :class:`ReloadSteps` pauses at."""

    #: Planned and every entry checked; nothing written to the process yet.
    STAGED = "staged"
    #: The new code written while the program runs; the journal written ahead.
    LOADED = "loaded"
    #: The entry jumps written (the threads run the new code).
    SWITCHED = "switched"
    #: The journal committed.
    COMMITTED = "committed"


class ReloadSteps:
    """One process's reload, run one step at a time (``reload --all``).

    Iterating it runs the whole reload; :meth:`advance` runs it up to a step.
    Each process stays its own transaction: a step that fails rolls back that
    process alone and raises its error.
    """

    def __init__(self) -> None:
        self.result = ReloadResult()
        #: ``time.monotonic()`` when the entry jumps were written (None: none was).
        self.switched_at: float | None = None
        self.run: Iterator[Step] = iter(())

    def __iter__(self) -> Iterator[Step]:
        return self.run

    def advance(self, step: Step | None) -> bool:
        """Run up to ``step`` (None: to the end); False if the reload ended first
        (a dry run, a reload that found nothing to do)."""
        return any(reached is step for reached in self.run)

    def close(self) -> None:
        """Abandon the reload where it stands (a loaded one is rolled back)."""
        if isinstance(self.run, Generator):
            self.run.close()


def attach(pid: int, on_event: EventSink | None = None, progress: bool = False) -> Session:
    """A session on a running process (raises ProcessGone if there is none).

    A thread id stands for its process.  A process relive may not trace is
    refused here (PermissionDenied), so that ``undo`` and ``status`` of another
    user's process say so rather than find nothing in this user's journals.
    ``progress``: ``on_event`` also gets :class:`~relive.events.Progress` events,
    one per phase of a reload and one a second within a long one (the CLI's live
    line asks for them; a program using the API gets only what a reload did).
    """
    check_alive(pid)
    denied = find_other_user(pid)
    if denied is not None:
        raise denied
    sink = on_event or ignore_event
    return Session(get_tgid(pid), sink if progress else without_progress(sink))


def without_progress(sink: EventSink) -> EventSink:
    """``sink`` with :class:`Progress` events left out."""

    def emit(event: Event) -> None:
        if not isinstance(event, Progress):
            sink(event)

    return emit


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
        options: ReloadOptions | None = None,
        **choices: Any,
    ) -> ReloadResult:
        """Compile (``.c``) or take (``.o``) each path and redirect its changed functions.

        ``options`` (:class:`~relive.patch.options.ReloadOptions`) are the caller's
        choices; ``choices`` set the same names one by one (``dry_run=True``,
        ``functions=["f"]``), over ``options`` if both are given.
        The plan side is ``patch.planning``, the transaction ``patch.transaction``.
        """
        chosen = options or DEFAULTS
        with cyclic_gc_paused():
            steps = self.reload_steps(paths, replace(chosen, **choices) if choices else chosen)
            if steps.advance(Step.STAGED):  # planned (not a dry run): load ... commit
                # relive's SIGINT/SIGQUIT/SIGTERM/SIGHUP wait meanwhile, and until the
                # committed reload is reported (a Ctrl+C then would say nothing of it)
                with held_signals():
                    steps.advance(Step.COMMITTED)
                    steps.advance(None)
        return steps.result

    def reload_steps(
        self,
        paths: Sequence[str | Path],
        options: ReloadOptions = DEFAULTS,
        shared: SharedCompiles | None = None,
    ) -> ReloadSteps:
        """:meth:`reload` as steps (see :class:`ReloadSteps`), for :func:`reload_together`.

        The caller holds relive's signals (``patch.transaction.held_signals``)
        while the steps from loading to committing run, over every process.
        """
        check_paths(paths, options.debug)
        steps = ReloadSteps()
        steps.run = self._reload(paths, options, shared, steps)
        return steps

    def _reload(
        self,
        paths: Sequence[str | Path],
        options: ReloadOptions,
        shared: SharedCompiles | None,
        steps: ReloadSteps,
    ) -> Iterator[Step]:
        result = steps.result
        phases = result.phases_ms
        started = time.perf_counter()
        with (
            process_lock(self.pid),
            ProcessMemory(self.pid) as memory,
            scratch_dir() as scratch,
        ):
            journal = load_journal(self.pid)
            modules = load_running_modules(self.pid)
            arch = get_arch(get_main_module(modules).image.machine)
            lap(phases, "attach", started)
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
                shared,
            )
            plans = plan_reload([Path(p) for p in paths], ctx)
            check_selected(plans, options.functions)
            reinits = announce(plans, options.reinit, self.emit)
            mark = time.perf_counter()
            if options.dry_run:  # the real reload's decisions and checks, nothing written
                check_as_reload(plans, ctx, options.move_frames)
                from relive.patch.report import report_decisions

                report_decisions(plans, None, self.emit, result)
                self._finished(result, dry_run=True)
                return
            for plan in plans:
                reroute_too_small(plan, ctx)
            process = AttachedProcess(self.pid, journal, memory, arch, modules)
            staged = StagedReload(process, plans, reinits, self.emit, options.move_frames)
            yield Step.STAGED
            staged.load()
            try:
                yield Step.LOADED
            except BaseException:  # abandoned between the steps (GeneratorExit)
                staged.abandon()
                raise
            steps.switched_at = staged.switch()
            try:
                yield Step.SWITCHED
            finally:  # the jumps are in memory: they are committed in every case
                staged.commit()
            yield Step.COMMITTED
            # Imported once the new code runs (the report is what follows it).
            from relive.patch.report import report_decisions, report_frames

            applied = staged.publish()
            result.stopped_us = applied.stopped_seconds * 1e6
            report_decisions(plans, applied.images, self.emit, result)
            report_frames(applied.frames, self.emit)
            for name, tid in applied.active:
                self.emit(FunctionActive(name, tid))
            for notice in applied.notices:
                self.emit(Notice(notice))
            lap(phases, "patch", mark)
        self.emit(Timings(dict(phases), result.stopped_us))
        self._finished(result, dry_run=False)

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
        from relive.patch.recover import load_or_rebuild_journal  # status and undo only

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
        from relive.patch.recover import load_or_rebuild_journal

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


def reload_together(
    sessions: Sequence[Session],
    paths: Sequence[str | Path],
    on_event: EventSink,
    options: ReloadOptions = DEFAULTS,
) -> list[ReloadResult | ReliveError]:
    """Reload the same files into processes of one executable (``reload --all``).

    Each file is compiled once (``SharedCompiles``: same executable, same
    command), then planned and linked per process (their memory layouts
    differ); every process's new code is written while they all run, and only
    then are their entry jumps written, one process right after the other, so
    that they start the new code close together (``ProcessesSwitched`` says how
    close).  Each process is its own transaction: one failing is rolled back and
    its error returned in its place, the others go on.
    """
    outcomes: list[ReloadResult | ReliveError | None] = [None] * len(sessions)
    live: dict[int, ReloadSteps] = {}

    def advance(step: Step | None) -> None:
        for index, steps in list(live.items()):
            try:
                if steps.advance(step):
                    continue
                outcomes[index] = steps.result
            except ReliveError as error:
                outcomes[index] = error
            del live[index]

    with scratch_dir() as scratch, cyclic_gc_paused():
        shared = SharedCompiles(Path(scratch))
        for index, session in enumerate(sessions):
            try:
                live[index] = session.reload_steps(paths, options, shared)
            except ReliveError as error:
                outcomes[index] = error
        try:
            advance(Step.STAGED)
            with held_signals():
                advance(Step.LOADED)
                advance(Step.SWITCHED)
                switched = {i: s.switched_at for i, s in live.items() if s.switched_at}
                advance(Step.COMMITTED)
                advance(None)  # reported before a held Ctrl+C ends the command
        finally:
            for steps in live.values():
                steps.close()
    if len(switched) > 1:
        pids = [sessions[index].pid for index in sorted(switched)]
        spread = max(switched.values()) - min(switched.values())
        on_event(ProcessesSwitched(pids, spread * 1e3))
    return [outcome or ReloadResult() for outcome in outcomes]

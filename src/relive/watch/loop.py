"""The edit loop: watch a program's sources and reload each translation unit when it is saved.

Between reloads the watcher is *not* attached to the program: it waits for
file-system events (inotify, ``watch.notify``) and now and then checks that
``/proc/PID`` still exists.  A save is a change only when the file's content
differs from the last seen; a burst of events (an editor's write-and-rename,
two saves in quick succession) is one batch, ended as soon as every file written
in it is complete (closed after writing, or renamed into place).  A saved header
reloads every unit that includes it.  All units a batch touches are reloaded in
one transaction per process, so a change spanning files lands at once.

With a signal as the trigger (``relive run --on-signal INT``) nothing is
watched: when the signal arrives, every watched file whose content changed
since the last reload is reloaded.

The loop reports through events only (``relive.events``); the CLI renders them.
It reloads through the sessions the caller's ``attach`` gives it (the CLI passes
``relive.attach``): the session layer sits above this one.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from relive.errors import CompileError, ProcessGone, ReliveError, UsageError
from relive.events import (
    EventSink,
    FlagsFromDwarf,
    Notice,
    PatchStatus,
    PendingSinceBuild,
    SaveSkipped,
    SignalReload,
    TargetExited,
    WatchFailed,
    WatchFailure,
    WatchFollows,
    WatchReloaded,
    WatchStarted,
    WatchStopped,
)
from relive.patch.modules import load_running_modules
from relive.patch.options import ReloadOptions
from relive.patch.outcome import ReloadResult
from relive.patch.planning import Topic
from relive.process.procfs import is_alive
from relive.toolchain.command import ORIGIN_DWARF
from relive.watch.baseline import build_times, changed_since_build
from relive.watch.changes import ContentTracker, saved_paths
from relive.watch.deps import DependencyMap, scan_all
from relive.watch.notify import GRACE_S, Notifier
from relive.watch.paths import real_path
from relive.watch.signals import Wakeup
from relive.watch.sources import Scope, compile_command_for, find_units, select_units

__all__ = ["Attach", "ReloadTarget", "WatchOptions", "Watcher"]

TRIGGER_SAVE = "save"
#: The quiet time that ends a burst whose files are not all complete (a file kept open).
DEFAULT_QUIET_MS = 20


@dataclass(frozen=True)
class WatchOptions:
    """How to watch.

    ``trigger`` is "save" or a signal name ("SIGINT").  ``step_ms`` is the
    quiet time that ends a burst of events (``--debounce``); None: a burst ends
    as soon as every file written in it is complete (closed, or renamed into
    place), else after ``DEFAULT_QUIET_MS`` without events.  ``max_batch_ms`` is
    the longest a burst may grow.  ``poll_ms`` is how
    often the program's existence is checked.
    """

    cflags: Sequence[str] | None = None
    compdb: Path | None = None
    trust_build: bool = False
    trigger: str = TRIGGER_SAVE
    step_ms: int | None = None
    max_batch_ms: int = 1600
    poll_ms: int = 250
    undo_on_exit: bool = False
    #: Variables whose changed initial value each reload copies in (``--reinit``).
    reinit: Sequence[str] = ()
    #: Reload even where data the program holds changed its layout.
    allow_layout_change: bool = False
    #: Move running frames into the new code where provably safe (``--no-move``: never).
    move_frames: bool = True


class ReloadTarget(Protocol):
    """The session API the loop uses (``relive.Session``)."""

    def reload(
        self, paths: Sequence[str | Path], options: ReloadOptions | None = None
    ) -> ReloadResult: ...
    @property
    def dependencies(self) -> Mapping[Path, tuple[Path, ...]]: ...
    @property
    def announced(self) -> set[tuple[Path, Topic]]: ...
    def status(self) -> Sequence[PatchStatus]: ...
    def undo(self, functions: Collection[str] | None = None) -> list[str]: ...


#: Open a session on a pid, reporting to a sink: ``relive.attach``.
Attach = Callable[[int, EventSink], ReloadTarget]

#: Reload units into several sessions at once, compiled once and switched back to
#: back, each process its own transaction (``relive.session.reload_together``):
#: ``(sessions, paths, on_event, options)`` -> one result or error per session.
ReloadTogether = Callable[..., Sequence[ReloadResult | ReliveError]]


@dataclass
class _Target:
    pid: int
    session: ReloadTarget
    alive: bool = True
    redirected: set[str] = field(default_factory=set)


def _default_exit(pid: int) -> TargetExited:
    return TargetExited(pid)


class Watcher:
    """Watch the sources of one or more processes running the same program.

    Call :meth:`prepare`, then :meth:`run` (returns why it ended), then
    :meth:`finish`.  :meth:`request_stop` and :meth:`request_reload` may be
    called from signal handlers.
    """

    def __init__(
        self,
        pids: Sequence[int],
        paths: Sequence[str | Path],
        options: WatchOptions,
        on_event: EventSink,
        attach: Attach,
        on_exit: Callable[[int], TargetExited] = _default_exit,
        discover: Callable[[], Sequence[int]] | None = None,
        together: ReloadTogether | None = None,
    ) -> None:
        if not pids:
            raise UsageError("no process to watch")
        self.options = options
        self.emit = on_event
        self._paths = list(paths)
        self._on_exit = on_exit
        self._targets = [_Target(pid, attach(pid, self.emit)) for pid in pids]
        self._attach = attach
        #: ``watch --all``: the processes running the program now, asked at each
        #: reload, so that workers forked later are reloaded too.
        self._discover = discover
        self._together = together
        self._deps = DependencyMap()
        self._content = ContentTracker()
        self._scope = Scope()
        #: Units whose content on disk the program does not run yet: saved after the
        #: build, or part of a reload that failed.  Every reload includes them.
        self._pending: set[Path] = set()
        self._stopping = False
        self._reload_requested = False
        self._wake = Wakeup()
        #: The files watched now (the notifier's filter; refreshed after each burst).
        self._watching: set[Path] = set()

    # -- requests (signal-handler safe) ----------------------------------------

    def request_stop(self) -> None:
        """End the loop after the reload in progress, if any."""
        self._stopping = True
        self._wake.set()

    def request_reload(self) -> None:
        """With a signal trigger: reload what changed since the last reload."""
        self._reload_requested = True
        self._wake.set()

    # -- setup -------------------------------------------------------------------

    def prepare(self) -> None:
        """Find the units and what they include; remember the files' content; say what is watched.

        Raises UsageError when there is nothing to watch.
        """
        modules = load_running_modules(self._targets[0].pid)
        self._scope = Scope.from_paths(self._paths)
        selection = select_units(find_units(modules), self._scope)
        commands = {
            path: compile_command_for(
                path, unit, self.options.cflags, self.options.compdb, self.options.trust_build
            )
            for path, unit in selection.units.items()
        }
        for unit, files in scan_all(commands).items():
            self._deps.record(unit, files or ())
        watched = self._watched()
        if not watched:
            raise UsageError(
                "none of the given paths is a source file of the program or a file it includes",
                "name the program's .c files, its headers or their folder",
            )
        self._content.remember(watched)
        units = self._reachable_units()
        for unit in units:
            for note in commands[unit].notes:
                self.emit(Notice(note))
        for target in self._targets:  # said: the reloads need not say it again
            target.session.announced.update((unit, Topic.COMMAND) for unit in units)
        self.emit(
            WatchStarted(
                [t.pid for t in self._targets],
                [str(u) for u in units],
                sorted(str(f) for f in watched),
                self.options.trigger,
            )
        )
        self._pending.update(changed_since_build(units, self._deps, build_times(modules)))
        if self._pending:
            self.emit(
                PendingSinceBuild([str(u) for u in sorted(self._pending)], self.options.trigger)
            )
        dwarf_only = [str(u) for u in units if commands[u].origin == ORIGIN_DWARF]
        if dwarf_only:
            self.emit(FlagsFromDwarf(dwarf_only))

    def _watched(self) -> set[Path]:
        return {f for f in self._deps.files() if self._scope.contains(f)}

    def _reachable_units(self) -> list[Path]:
        watched = self._watched()
        return [u for u in self._deps.units() if self._deps.dependencies(u) & watched]

    def _directories(self) -> list[Path]:
        return sorted({f.parent for f in self._watched() if f.parent.is_dir()})

    # -- events from the sessions ---------------------------------------------------

    def _learn(self, target: _Target) -> None:
        """What each unit the session compiled read (a new #include): watch it too."""
        learnt = False
        for source, files in target.session.dependencies.items():
            unit = real_path(source)
            if unit in self._deps.units() and files:
                self._deps.record(unit, list(files))
                learnt = True
        if learnt:
            self._content.remember(self._watched())  # its content now

    # -- the loop ---------------------------------------------------------------

    def run(self) -> str:
        """Watch until stopped or every program exited; return "stopped" or "exited"."""
        if self.options.trigger == TRIGGER_SAVE:
            return self._run_on_save()
        return self._run_on_signal()

    def _run_on_save(self) -> str:
        while not self._stopping:
            directories = self._directories()
            self._watching = self._watched()
            first = True
            with Notifier(directories) as notifier:
                for changed in notifier.bursts(
                    relevant=self._is_watched,
                    stop_fd=self._wake.fileno(),
                    is_stopped=self._wake.is_set,
                    quiet_s=(self.options.step_ms or DEFAULT_QUIET_MS) / 1000,
                    grace_s=GRACE_S if self.options.step_ms is None else None,
                    longest_s=self.options.max_batch_ms / 1000,
                    timeout_s=self.options.poll_ms / 1000,
                ):
                    if not self._check_targets():
                        return "exited"
                    saved = saved_paths(changed, self._watching)
                    if first:
                        # The watches exist before the first yield; a save made before
                        # (after `prepare`, or while re-watching) shows in the content.
                        first = False
                        saved |= {p for p in self._watching if self._content.differs(p)}
                    if saved:
                        self._on_saves(saved)
                    self._watching = self._watched()  # a reload may have learnt includes
                    if self._directories() != directories:
                        break  # a new #include in another folder: watch that too
            self._wake.clear()
            if not self._check_targets():
                return "exited"
        return "stopped"

    def _is_watched(self, path: Path) -> bool:
        return real_path(path) in self._watching

    def _run_on_signal(self) -> str:
        while not self._stopping:
            self._wake.wait(self.options.poll_ms / 1000)
            self._wake.clear()
            if not self._check_targets():
                return "exited"
            if self._reload_requested and not self._stopping:
                self._reload_requested = False
                self._reload_changed()
        return "stopped"

    def _check_targets(self) -> bool:
        for target in self._targets:
            if target.alive and not is_alive(target.pid):
                target.alive = False
                self.emit(self._on_exit(target.pid))
        return any(t.alive for t in self._targets)

    def _on_saves(self, saved: set[Path]) -> None:
        units: set[Path] = set()
        for path in sorted(saved):
            users = self._deps.units_using(path)
            changed = self._content.update(path)
            if not users or changed is None:
                continue
            if not changed and not users & self._pending:
                self.emit(SaveSkipped(str(path), "content unchanged"))
                continue
            units |= users
        if units:
            self._reload(sorted(units | self._pending), saved)

    def _reload_changed(self) -> None:
        changed = [p for p in sorted(self._watched()) if self._content.update(p)]
        units = set(self._pending)
        for path in changed:
            units |= self._deps.units_using(path)
        self.emit(SignalReload(self.options.trigger, [str(u) for u in sorted(units)]))
        if units:
            self._reload(sorted(units), set())

    def _reload(self, units: list[Path], saved: set[Path]) -> None:
        """Reload ``units`` in every live process; one line (event) per process."""
        mtimes = [p.stat().st_mtime for p in saved if p.exists()]
        saved_at = max(mtimes, default=0.0)
        names = [str(u) for u in units]
        self._follow_new_processes()
        show_pid = len(self._targets) > 1
        failed = False
        for target, outcome in self._reload_each(units, names, show_pid):
            self._learn(target)
            if outcome is None:
                continue  # the process is gone: _check_targets says so
            if isinstance(outcome, WatchFailed):
                failed = True
                self.emit(outcome)
                continue
            now = time.time()
            target.redirected.update(outcome.redirected)
            phases = outcome.phases_ms
            self.emit(
                WatchReloaded(
                    time=now,
                    pid=target.pid,
                    sources=names,
                    redirected=list(outcome.redirected),
                    added=list(outcome.added),
                    unchanged=list(outcome.unchanged),
                    skipped=list(outcome.skipped),
                    compile_ms=phases.get("compile", 0.0),
                    link_ms=phases.get("link", 0.0) + phases.get("patch", 0.0),
                    stopped_us=outcome.stopped_us,
                    latency_ms=(now - saved_at) * 1000 if saved_at else 0.0,
                    show_pid=show_pid,
                )
            )
        if failed:
            self._pending.update(units)
        else:
            self._pending.difference_update(units)

    def _reload_each(
        self, units: list[Path], names: list[str], show_pid: bool
    ) -> Iterator[tuple[_Target, ReloadResult | WatchFailed | None]]:
        """Each live process's reload: its result, its failure, or None (gone).

        Several processes reload together when the caller gave ``reload_together``
        (one compile; switched back to back); a compile error is reported once.
        """
        options = ReloadOptions(
            cflags=self.options.cflags,
            compdb=self.options.compdb,
            trust_build=self.options.trust_build,
            reinit=self.options.reinit,
            allow_layout_change=self.options.allow_layout_change,
            move_frames=self.options.move_frames,
        )
        live = [target for target in self._targets if target.alive]
        if self._together is None or len(live) < 2:
            for target in live:
                try:
                    yield target, target.session.reload(units, options)
                except ProcessGone:
                    yield target, None
                # The one handler of any exception: a bug must not end a watch (under
                # `relive run` that would end the program); it is reported with its
                # traceback (an InternalError line), not hidden.
                except Exception as error:  # noqa: BLE001
                    yield target, _failure(target.pid, names, error, show_pid)
                    if isinstance(error, CompileError):
                        return  # the same source fails to compile for every process
            return
        try:
            outcomes = self._together([t.session for t in live], units, self.emit, options)
        except Exception as error:  # noqa: BLE001  (as above)
            for target in live:
                yield target, _failure(target.pid, names, error, show_pid)
            return
        told_compile_error = False
        for target, outcome in zip(live, outcomes, strict=True):
            if isinstance(outcome, ProcessGone):
                yield target, None
            elif isinstance(outcome, CompileError):
                if not told_compile_error:  # the same error for every process
                    yield target, _failure(target.pid, names, outcome, show_pid)
                told_compile_error = True
            elif isinstance(outcome, ReliveError):
                yield target, _failure(target.pid, names, outcome, show_pid)
            else:
                yield target, outcome

    def _follow_new_processes(self) -> None:
        """Add the processes of the program started since the last look (``--all``).

        A worker forked from a patched process inherits its patches; its journal
        is rebuilt from its memory when its session first loads it.
        """
        if self._discover is None:
            return
        known = {target.pid for target in self._targets}
        for pid in self._discover():
            if pid in known:
                continue
            try:
                session = self._attach(pid, self.emit)
            except ReliveError:
                continue  # gone already, or not ours to trace: not followed
            self._targets.append(_Target(pid, session))
            self.emit(WatchFollows(pid))

    # -- the end ----------------------------------------------------------------

    def finish(self, reason: str) -> list[str]:
        """Undo this watch's patches if asked to and say watching ended; return what was undone."""
        undone: list[str] = []
        if self.options.undo_on_exit:
            for target in self._targets:
                if target.alive and target.redirected and is_alive(target.pid):
                    undone += self._undo(target)
        self._wake.close()
        kept = set()
        for target in self._targets:
            if target.alive:
                kept |= target.redirected
        self.emit(WatchStopped(reason, undone, sorted(kept - set(undone))))
        return undone

    def _undo(self, target: _Target) -> list[str]:
        try:
            patched = {p.name for p in target.session.status()}
            names = sorted(target.redirected & patched)
            return target.session.undo(names) if names else []
        except ReliveError as error:
            self.emit(_failure(target.pid, [], error, len(self._targets) > 1))
            return []


def _failure(pid: int, sources: list[str], error: Exception, show_pid: bool) -> WatchFailed:
    if isinstance(error, ReliveError):
        compile_error = isinstance(error, CompileError)
        return WatchFailed(
            time.time(),
            pid,
            sources,
            WatchFailure.COMPILE_ERROR if compile_error else WatchFailure.NOT_RELOADED,
            type(error).__name__,
            error.message,
            error.hint,
            error.details,
            show_pid,
        )
    return WatchFailed(
        time.time(),
        pid,
        sources,
        WatchFailure.INTERNAL_ERROR,
        "InternalError",
        f"relive failed: {type(error).__name__}: {error}",
        "please report this with the details",
        traceback.format_exc(),
        show_pid,
    )

"""``relive watch`` and ``relive run``: the edit loop's commands.

The loop itself is ``relive.watch.Watcher``; this module picks the processes,
installs the signal policy and hands the loop ``relive.attach`` with progress events (the session
layer sits above ``watch``).  Imported only when one of these commands runs.
"""

from __future__ import annotations

import argparse
import signal
from dataclasses import replace

import relive
from relive.cli.render import WATCH_QUIET, Renderer
from relive.cli.targets import follow_executable, resolve_pids
from relive.errors import ReliveError, UsageError
from relive.events import EventSink, ProcessStarted
from relive.watch import Watcher, WatchOptions
from relive.watch.child import TERMINAL_SIGNALS, ChildProgram, wait_for_loader
from relive.watch.signals import Handler, handle_signals, parse_signal, signal_name

__all__ = ["run_program", "watch_process"]


def attach_with_progress(pid: int, on_event: EventSink) -> relive.Session:
    """``relive.attach`` for the watch loop: its status line shows a long reload's progress."""
    return relive.attach(pid, on_event, progress=True)


def _watch_options(args: argparse.Namespace, cflags: list[str] | None) -> WatchOptions:
    """The options ``watch`` and ``run`` share, as parsed."""
    return WatchOptions(
        cflags=cflags,
        compdb=args.compdb,
        trust_build=args.trust_build,
        move_frames=args.move_frames,
        step_ms=args.debounce,
        reinit=args.reinit,
        allow_layout_change=args.allow_layout_change,
    )


def watch_process(args: argparse.Namespace, out: Renderer, cflags: list[str] | None) -> int:
    """``relive watch``: reload the sources of running processes on save."""
    pids = resolve_pids(args.pid, args.name, args.every)
    options = replace(_watch_options(args, cflags), undo_on_exit=args.undo_on_exit)
    if not args.verbose:
        out.hide(WATCH_QUIET)
    discover = follow_executable(pids[0]) if args.every else None
    from relive.session import reload_together

    watcher = Watcher(
        pids,
        args.paths,
        options,
        out,
        attach_with_progress,
        discover=discover,
        together=reload_together if args.every else None,
    )
    watcher.prepare()
    stops: list[str] = []

    def stop(signum: int) -> None:
        stops.append(signal_name(signum))
        if len(stops) > 1:
            raise KeyboardInterrupt  # asked twice: do not wait for the reload in progress
        watcher.request_stop()

    handlers: dict[int, Handler] = {signal.SIGINT: stop, signal.SIGTERM: stop, signal.SIGHUP: stop}
    with handle_signals(handlers):
        out.start_status(f"watching pid {', '.join(map(str, pids))} · Ctrl+C to stop")
        try:
            ended = watcher.run()
        except KeyboardInterrupt:
            ended = "stopped"
        finally:
            out.stop_status()
        reason = "the program exited" if ended == "exited" else (stops[0] if stops else "stopped")
        watcher.finish(reason)
    return 0


def run_program(args: argparse.Namespace, out: Renderer, cflags: list[str] | None) -> int:
    """``relive run``: start the program, reload on save or signal, exit with its status."""
    argv = args.program[1:] if args.program[:1] == ["--"] else args.program
    if not argv:
        raise UsageError("no program to run", "relive run [OPTIONS] -- PROGRAM [ARGS...]")
    trigger = parse_signal(args.on_signal) if args.on_signal else None
    if not args.verbose:
        out.hide(WATCH_QUIET)
    program = ChildProgram(argv, own_group=trigger in TERMINAL_SIGNALS)
    out(ProcessStarted(program.pid, argv))
    options = replace(
        _watch_options(args, cflags), trigger=trigger.name if trigger else "save", poll_ms=100
    )
    try:
        watcher = Watcher(
            [program.pid], args.paths, options, out, attach_with_progress, on_exit=program.reap
        )
    except ReliveError:
        if program.proc.poll() is not None:
            return _exited_at_once(program, out)
        program.terminate()
        raise

    def ignore(signum: int) -> None:
        """The terminal sent it to the program too (same process group)."""

    handlers: dict[int, Handler] = {signal.SIGTERM: program.send, signal.SIGHUP: program.send}
    for signum in TERMINAL_SIGNALS:
        handlers[signum] = program.send if program.own_group else ignore
    if program.own_group:
        handlers[signal.SIGTSTP] = program.suspend_with_relive
    if trigger is not None:
        handlers[trigger] = lambda _signum: watcher.request_reload()
    with handle_signals(handlers):
        try:
            wait_for_loader(program.pid)
            watcher.prepare()
        except ReliveError:
            if program.proc.poll() is not None:
                return _exited_at_once(program, out)
            program.terminate()
            raise
        watcher.run()
        watcher.finish("the program exited")
    return program.exit_status()


def _exited_at_once(program: ChildProgram, out: Renderer) -> int:
    """The program ended before watching began: say how, and exit with its status."""
    out(program.reap(program.pid))
    return program.exit_status()

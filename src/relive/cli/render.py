"""Turn core events into terminal lines (rich) or JSON lines (``--json``).

On a terminal, lines are coloured with rich (imported only then) and the watch
modes may keep a live status line at the bottom; piped, the text is plain; with
``--json`` every event is one JSON object per line, nothing hidden.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from typing import IO, Any

from relive.cli.lines import write_line
from relive.errors import ReliveError
from relive.events import (
    BlockNotReleased,
    CheckResult,
    Compiled,
    ErrorReported,
    Event,
    FlagsFromDwarf,
    FunctionActive,
    FunctionAdded,
    FunctionRedirected,
    FunctionRestored,
    FunctionSkipped,
    FunctionUnchanged,
    Notice,
    ProcessesSwitched,
    ProcessStarted,
    Progress,
    ReloadFinished,
    SaveSkipped,
    SignalReload,
    TargetExited,
    TargetProcess,
    Timings,
    Verdict,
    WatchFailed,
    WatchFollows,
    WatchReloaded,
    WatchStarted,
    WatchStopped,
)

_STYLES: dict[type[Event], str] = {
    FunctionRedirected: "green",
    FunctionAdded: "cyan",
    FunctionUnchanged: "dim",
    FunctionSkipped: "yellow",
    FunctionActive: "yellow",
    FunctionRestored: "magenta",
    Notice: "yellow",
    BlockNotReleased: "yellow",
    Compiled: "dim",
    Timings: "dim",
    ReloadFinished: "bold",
    TargetProcess: "bold",
    ProcessesSwitched: "green",
    ProcessStarted: "bold cyan",
    WatchStarted: "bold cyan",
    WatchFollows: "cyan",
    FlagsFromDwarf: "yellow",
    SaveSkipped: "dim",
    SignalReload: "bold yellow",
    WatchReloaded: "green",
    WatchFailed: "bold red",
    TargetExited: "bold",
    WatchStopped: "bold",
}
_VERDICT_STYLES = {
    Verdict.OK: "green",
    Verdict.WARN: "yellow",
    Verdict.FAIL: "bold red",
    Verdict.SKIP: "dim",
}

#: Always hidden in text output (JSON shows everything).
_INTERNAL: frozenset[type[Event]] = frozenset()
#: Hidden in the watch modes' text output, which prints one line per reload.
WATCH_QUIET: frozenset[type[Event]] = frozenset(
    {
        Compiled,
        FunctionRedirected,
        FunctionAdded,
        FunctionUnchanged,
        FunctionSkipped,
        Timings,
        ReloadFinished,
    }
)


#: Seconds a reload runs before its progress shows: quicker ones never flicker a line.
PROGRESS_AFTER = 0.5
#: The least time between two ``progress`` JSON lines, and the least a reload has
#: run before its first one.
JSON_PROGRESS_EVERY = 1.0
#: Events that end a reload's progress line.
_PROGRESS_ENDS = (ReloadFinished, WatchReloaded, WatchFailed)


class _ProgressLine:
    """The live line of a long reload: spinner, file, phase and the time since it
    began, recomputed at each refresh of rich's Live (so it ticks while the core
    is busy in one long step).

    Until the reload has run ``PROGRESS_AFTER`` seconds it shows ``fallback``
    (nothing, or the watch status line's text).  ``spinner``: draw a spinner of
    its own (the watch status line has one).
    """

    def __init__(self, fallback: Any = None, spinner: bool = True) -> None:
        from rich.spinner import Spinner

        self.spinner = Spinner("dots", style="cyan") if spinner else None
        self.fallback = fallback
        self.event: Progress | None = None
        self.began = 0.0

    def show(self, event: Progress) -> None:
        if self.event is None:
            self.began = time.monotonic() - event.elapsed
        self.event = event

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.text import Text

        elapsed = time.monotonic() - self.began
        if self.event is None or elapsed < PROGRESS_AFTER:
            return Group() if self.fallback is None else self.fallback
        name = self.event.source.rsplit("/", 1)[-1]
        text = Text(f"{name}: {self.event.phase} · {elapsed:.1f} s")
        if self.spinner is None:
            return text
        self.spinner.text = text
        return self.spinner.render(time.monotonic())


class Renderer:
    """Prints events; rich colours on a terminal, plain text when piped, JSON with --json."""

    def __init__(
        self,
        json_lines: bool = False,
        show_timings: bool = False,
        stream: IO[str] | None = None,
        console: Any = None,
    ) -> None:
        """``console``: a rich Console to draw on instead of ``stream`` (tests)."""
        self.json_lines = json_lines
        self.show_timings = show_timings
        self.stream = stream or sys.stdout
        self.hidden: frozenset[type[Event]] = _INTERNAL
        self._console: Any = console
        self._status: Any = None
        self._live: Any = None  # the progress line of a reload (no watch status line)
        self._progress: _ProgressLine | None = None
        self._last_json_progress = float("-inf")
        if console is None and not json_lines and self.stream.isatty():
            from rich.console import Console  # imported lazily: start-up time matters

            self._console = Console(file=self.stream, highlight=False)

    def hide(self, kinds: Iterable[type[Event]]) -> None:
        """Do not print these events as text (JSON output still has them)."""
        self.hidden = self.hidden | frozenset(kinds)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Progress):
            self._show_progress(event)
            return
        if self.json_lines:
            write_line(self.stream, event.to_json())  # whole, at once: editors read as it comes
            return
        if isinstance(event, _PROGRESS_ENDS):
            self._end_progress()
        if type(event) in self.hidden:
            return
        if isinstance(event, Timings) and not self.show_timings:
            return
        self._print(str(event), self._style(event))
        if isinstance(event, WatchFailed) and event.details:
            self._print(event.details.rstrip(), "")
        self._update_status(event)

    def _style(self, event: Event) -> str:
        if isinstance(event, CheckResult):
            return _VERDICT_STYLES.get(event.verdict, "")
        return _STYLES.get(type(event), "")

    def _print(self, text: str, style: str) -> None:
        if self._console is not None:
            from rich.markup import escape

            self._console.print(f"[{style}]{escape(text)}[/]" if style else escape(text))
        else:
            write_line(self.stream, text)

    # -- progress of a long reload --------------------------------------------------

    def _show_progress(self, event: Progress) -> None:
        """A live line on a terminal; at most one JSON line a second, none for a quick
        reload; nothing in plain text."""
        if self.json_lines:
            now = time.monotonic()
            if event.elapsed >= JSON_PROGRESS_EVERY and (
                now - self._last_json_progress >= JSON_PROGRESS_EVERY
            ):
                self._last_json_progress = now
                write_line(self.stream, event.to_json())
            return
        if self._console is None:
            return
        if self._progress is None:
            if self._status is not None:  # watch: the status line shows it
                self._progress = _ProgressLine(self._status.status, spinner=False)
                self._status.update(self._progress)
            else:
                from rich.live import Live

                self._progress = _ProgressLine()
                self._live = Live(
                    self._progress, console=self._console, transient=True, refresh_per_second=8
                )
                self._live.start()
        self._progress.show(event)

    def _end_progress(self) -> None:
        """Remove the progress line (the summary line that follows replaces it)."""
        if self._progress is not None and self._status is not None:
            self._status.update(self._progress.fallback)  # the watch line's own text again
        self._progress = None
        if self._live is not None:
            self._live.stop()
            self._live = None

    def close(self) -> None:
        """Remove any live line (before the program exits)."""
        self._end_progress()
        self.stop_status()

    # -- live status line (watch on a terminal) ------------------------------------

    def start_status(self, text: str) -> None:
        """Show a live status line below the output (only on a terminal)."""
        if self._console is not None and self._status is None:
            self._status = self._console.status(text, spinner="dots")
            self._status.start()

    def stop_status(self) -> None:
        """Remove the live status line."""
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _update_status(self, event: Event) -> None:
        if self._status is None:
            return
        if isinstance(event, WatchReloaded):
            self._status.update(f"watching · last reload {str(event).split(' |')[0]}")
        elif isinstance(event, WatchFailed):
            self._status.update("watching · last save did not reload: fix it and save again")

    # -- outside the event stream ------------------------------------------------

    def error(self, error: ReliveError, pid: int | None = None) -> None:
        """The one-line error (plus details such as compiler diagnostics)."""
        reported = ErrorReported(
            type(error).__name__, error.message, error.hint, error.details, error.exit_code, pid
        )
        if self.json_lines:
            self(reported)
            return
        self.close()
        if error.details:
            write_line(sys.stderr, error.details.rstrip())
        write_line(sys.stderr, str(reported))

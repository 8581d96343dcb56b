"""Turn core events into terminal lines (rich) or JSON lines (``--json``).

On a terminal, lines are coloured with rich (imported only then) and the watch
modes may keep a live status line at the bottom; piped, the text is plain; with
``--json`` every event is one JSON object per line, nothing hidden.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import IO, Any

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


class Renderer:
    """Prints events; rich colours on a terminal, plain text when piped, JSON with --json."""

    def __init__(
        self, json_lines: bool = False, show_timings: bool = False, stream: IO[str] | None = None
    ) -> None:
        self.json_lines = json_lines
        self.show_timings = show_timings
        self.stream = stream or sys.stdout
        self.hidden: frozenset[type[Event]] = _INTERNAL
        self._console: Any = None
        self._status: Any = None
        if not json_lines and self.stream.isatty():
            from rich.console import Console  # imported lazily: start-up time matters

            self._console = Console(file=self.stream, highlight=False)

    def hide(self, kinds: Iterable[type[Event]]) -> None:
        """Do not print these events as text (JSON output still has them)."""
        self.hidden = self.hidden | frozenset(kinds)

    def __call__(self, event: Event) -> None:
        if self.json_lines:
            print(event.to_json(), file=self.stream, flush=True)  # editors read as it comes
            return
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
            print(text, file=self.stream, flush=True)

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
        if error.details:
            print(error.details.rstrip(), file=sys.stderr)
        print(reported, file=sys.stderr, flush=True)

"""Turn core events into terminal lines (rich) or JSON lines (``--json``)."""

from __future__ import annotations

import json
import sys
from typing import IO, Any

from relive.errors import ReliveError
from relive.events import (
    Compiled,
    Event,
    FunctionAdded,
    FunctionRedirected,
    FunctionRestored,
    FunctionSkipped,
    FunctionUnchanged,
    Notice,
    ReloadFinished,
    Timings,
)

_STYLES: dict[type[Event], str] = {
    FunctionRedirected: "green",
    FunctionAdded: "cyan",
    FunctionUnchanged: "dim",
    FunctionSkipped: "yellow",
    FunctionRestored: "magenta",
    Notice: "yellow",
    Compiled: "dim",
    Timings: "dim",
    ReloadFinished: "bold",
}


class Renderer:
    """Prints events; rich colours on a terminal, plain text when piped, JSON with --json."""

    def __init__(
        self, json_lines: bool = False, show_timings: bool = False, stream: IO[str] | None = None
    ) -> None:
        self.json_lines = json_lines
        self.show_timings = show_timings
        self.stream = stream or sys.stdout
        self._console: Any = None
        if not json_lines and self.stream.isatty():
            from rich.console import Console  # imported lazily: start-up time matters

            self._console = Console(file=self.stream, highlight=False)

    def __call__(self, event: Event) -> None:
        if self.json_lines:
            self.write_json(event.to_dict())
            return
        if isinstance(event, Timings) and not self.show_timings:
            return
        text = str(event)
        if self._console is not None:
            from rich.markup import escape

            style = _STYLES.get(type(event), "")
            self._console.print(f"[{style}]{escape(text)}[/]" if style else escape(text))
        else:
            print(text, file=self.stream, flush=True)

    def write_json(self, payload: dict[str, Any]) -> None:
        """One JSON object per line, flushed (editors read it as it comes)."""
        print(json.dumps(payload, default=str), file=self.stream, flush=True)

    def error(self, error: ReliveError) -> None:
        """The one-line error (plus details such as compiler diagnostics)."""
        if self.json_lines:
            self.write_json(
                {
                    "kind": "error",
                    "type": type(error).__name__,
                    "message": error.message,
                    "hint": error.hint,
                    "details": error.details,
                    "exit_code": error.exit_code,
                }
            )
            return
        if error.details:
            print(error.details.rstrip(), file=sys.stderr)
        print(f"relive: error: {error.one_line()}", file=sys.stderr, flush=True)

"""Event objects: the only way the core reports what it does.

The core never prints.  Each operation emits events to a callback; the CLI
renders them with rich or as JSON lines (``--json``).  ``str(event)`` is the
plain one-line text a user reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    """Base class of everything the core reports."""

    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict with a ``kind`` key."""
        return {"kind": self.kind, **dataclasses.asdict(self)}


EventSink = Callable[[Event], None]


def ignore_event(event: Event) -> None:
    """The default sink: drop events."""


@dataclass(frozen=True)
class Compiled(Event):
    """A source file was compiled to an object file."""

    kind: ClassVar[str] = "compiled"
    source: str
    flags_origin: str
    command: list[str]
    milliseconds: float

    def __str__(self) -> str:
        return f"compiled {self.source} ({self.flags_origin} flags) in {self.milliseconds:.0f} ms"


@dataclass(frozen=True)
class FunctionRedirected(Event):
    """An existing function's entry now jumps to new code."""

    kind: ClassVar[str] = "redirected"
    name: str
    old_address: int
    new_address: int

    def __str__(self) -> str:
        return f"redirected {self.name}: {self.old_address:#x} -> {self.new_address:#x}"


@dataclass(frozen=True)
class FunctionAdded(Event):
    """A function that did not exist before now lives in new memory."""

    kind: ClassVar[str] = "new"
    name: str
    new_address: int

    def __str__(self) -> str:
        return f"new {self.name} at {self.new_address:#x}"


@dataclass(frozen=True)
class FunctionUnchanged(Event):
    """A function whose code did not change; it is left alone."""

    kind: ClassVar[str] = "unchanged"
    name: str

    def __str__(self) -> str:
        return f"unchanged {self.name}"


@dataclass(frozen=True)
class FunctionSkipped(Event):
    """A function that was not redirected, and why."""

    kind: ClassVar[str] = "skipped"
    name: str
    reason: str

    def __str__(self) -> str:
        return f"skipped {self.name}: {self.reason}"


@dataclass(frozen=True)
class FunctionActive(Event):
    """A redirected function that a thread is inside of: it finishes in the old code."""

    kind: ClassVar[str] = "active"
    name: str
    tid: int

    def __str__(self) -> str:
        return (
            f"{self.name} is running on thread {self.tid}: the new code applies from its next call"
        )


@dataclass(frozen=True)
class FunctionRestored(Event):
    """An undo put a function's original entry bytes back."""

    kind: ClassVar[str] = "restored"
    name: str
    address: int

    def __str__(self) -> str:
        return f"restored {self.name} at {self.address:#x}"


@dataclass(frozen=True)
class Notice(Event):
    """Something the user should know that does not stop the operation."""

    kind: ClassVar[str] = "notice"
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Timings(Event):
    """Wall time per phase of one operation, and how long threads were held."""

    kind: ClassVar[str] = "timings"
    phases_ms: dict[str, float] = field(default_factory=dict)
    stopped_us: float = 0.0

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v:.1f} ms" for k, v in self.phases_ms.items())
        return f"timings: {parts}; threads stopped {self.stopped_us:.0f} µs"


@dataclass(frozen=True)
class ReloadFinished(Event):
    """A reload (or dry run) completed."""

    kind: ClassVar[str] = "reloaded"
    pid: int
    redirected: int
    added: int
    unchanged: int
    dry_run: bool

    def __str__(self) -> str:
        what = "dry run" if self.dry_run else "reloaded"
        return (
            f"{what} pid {self.pid}: {self.redirected} redirected, {self.added} new, "
            f"{self.unchanged} unchanged"
        )

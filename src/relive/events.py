"""Event objects: the only way the core reports what it does, and the JSON protocol.

The core never prints.  Each operation emits events to a callback; the CLI
renders them with rich or as JSON lines (``--json``).  ``str(event)`` is the
plain one-line text a user reads; :meth:`Event.to_json` is the line ``--json``
writes.  Every JSON line relive writes is an event of this module, the CLI's
own ones included (:class:`ErrorReported`, :class:`PatchStatus`): its ``kind``
and fields are the protocol.
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, dataclass_transform

_MISSING: Any = object()


class _Factory:
    """A default made anew for every event (``field(default_factory=list)``)."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make


def field(*, default_factory: Callable[[], Any]) -> Any:
    """A field whose default is made by ``default_factory``, as in dataclasses."""
    return _Factory(default_factory)


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
class Event:
    """Base class of everything the core reports: frozen, with dataclass-style fields.

    Events are plain classes rather than ``dataclasses.dataclass``: generating
    the methods of some two dozen dataclasses cost about 25 ms of every
    ``relive`` command's start-up.  Fields are the class's annotations (not
    ClassVar), in order, parents first; ``str(event)`` is its one-line text.
    """

    kind: ClassVar[str] = "event"
    #: The line a user reads, a :meth:`str.format` template over the fields (one line
    #: instead of the same ``__str__`` in every event); an event whose line needs more
    #: than its fields' values overrides ``__str__`` instead.
    template: ClassVar[str] = ""
    _fields: ClassVar[tuple[tuple[str, Any], ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        fields = dict(cls._fields)
        # Own annotations only (parents' are in _fields); inspect costs start-up time.
        own = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
        for name, annotation in own.items():
            if not str(annotation).startswith(("ClassVar", "typing.ClassVar")):
                fields[name] = cls.__dict__.get(name, _MISSING)
        cls._fields = tuple(fields.items())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = [name for name, _ in self._fields]
        if len(args) > len(names):
            raise TypeError(f"{type(self).__name__} takes {len(names)} fields")
        values = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in names or name in values:
                raise TypeError(f"{type(self).__name__}: unexpected or repeated field {name}")
            values[name] = value
        for name, default in self._fields:
            if name not in values:
                if default is _MISSING:
                    raise TypeError(f"{type(self).__name__}: missing field {name}")
                values[name] = default.make() if isinstance(default, _Factory) else default
            object.__setattr__(self, name, values[name])

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name, _ in self._fields)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Event)
            and type(other) is type(self)
            and self._values() == other._values()
        )

    def __hash__(self) -> int:
        return hash((type(self), self._values()))

    def __str__(self) -> str:
        return self.template.format_map({name: getattr(self, name) for name, _ in self._fields})

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name, _ in self._fields)
        return f"{type(self).__name__}({inner})"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict with a ``kind`` key."""
        return {"kind": self.kind, **{name: getattr(self, name) for name, _ in self._fields}}

    def to_json(self) -> str:
        """The event as one JSON object on one line (enums as their values)."""
        return json.dumps(self.to_dict(), default=str)


EventSink = Callable[[Event], None]


def ignore_event(event: Event) -> None:
    """The default sink: drop events."""


class Compiled(Event):
    """A source file was compiled to an object file."""

    kind: ClassVar[str] = "compiled"
    source: str
    flags_origin: str
    command: list[str]
    milliseconds: float

    template = "compiled {source} ({flags_origin} flags) in {milliseconds:.0f} ms"


class CompilerWarnings(Event):
    """What the compiler printed while compiling successfully (warnings), as it printed it."""

    kind: ClassVar[str] = "compiler-warnings"
    source: str
    text: str

    def __str__(self) -> str:
        return self.text.rstrip()


class FunctionRedirected(Event):
    """An existing function's entry now jumps to new code."""

    kind: ClassVar[str] = "redirected"
    name: str
    old_address: int
    new_address: int
    #: A --dry-run plan: nothing was written (new_address is 0).
    dry_run: bool = False

    def __str__(self) -> str:
        if self.dry_run:
            return f"would redirect {self.name} (at {self.old_address:#x})"
        return f"redirected {self.name}: {self.old_address:#x} -> {self.new_address:#x}"


class FunctionAdded(Event):
    """A function that did not exist before now lives in new memory."""

    kind: ClassVar[str] = "new"
    name: str
    new_address: int
    #: A --dry-run plan: nothing was loaded (new_address is 0).
    dry_run: bool = False

    def __str__(self) -> str:
        if self.dry_run:
            return f"would add new function {self.name}"
        return f"new {self.name} at {self.new_address:#x}"


class FunctionUnchanged(Event):
    """A function whose code did not change; it is left alone."""

    kind: ClassVar[str] = "unchanged"
    name: str

    template = "unchanged {name}"


class FunctionSkipped(Event):
    """A function that was not redirected, and why."""

    kind: ClassVar[str] = "skipped"
    name: str
    reason: str

    template = "skipped {name}: {reason}"


class FunctionActive(Event):
    """A redirected function that a thread is inside of: it finishes in the old code."""

    kind: ClassVar[str] = "active"
    name: str
    tid: int

    template = "{name} is running on thread {tid}: the new code applies from its next call"


class FrameMoved(Event):
    """A running frame of a redirected function now continues in its new code."""

    kind: ClassVar[str] = "frame-moved"
    tid: int
    function: str
    old: int
    new: int
    how: str

    template = "moved {function} on thread {tid} into the new code: {old:#x} -> {new:#x} ({how})"


class FrameStays(Event):
    """A running frame that cannot move into the new code, and why."""

    kind: ClassVar[str] = "frame-stays"
    tid: int
    function: str
    reason: str
    #: Changed functions inlined into ``function`` (comma-separated; "" if none known).
    inlined: str = ""

    def __str__(self) -> str:
        if self.inlined:
            names = self.inlined.split(", ")
            verb = "is" if len(names) == 1 else "are"
            return (
                f"{', '.join(n + '()' for n in names)} {verb} inlined into {self.function}, "
                f"which is running on thread {self.tid}; its frame cannot move to the new "
                f"code ({self.reason}). The change applies from {self.function}'s next call; "
                f"if it never returns, mark {names[0]} __attribute__((noinline)), or restart"
            )
        return (
            f"{self.function} is running on thread {self.tid} and its frame cannot move to the "
            f"new code: {self.reason}. The new code applies from its next call; if "
            f"{self.function} never returns (a main loop), move the edited code into a "
            "function of its own marked __attribute__((noinline)), or restart"
        )


class FrameStaysNew(Event):
    """After an undo: a thread still inside a function's reloaded code, which it cannot leave."""

    kind: ClassVar[str] = "frame-stays-new"
    tid: int
    function: str

    template = (
        "{function} on thread {tid} keeps running its reloaded code until that "
        "call returns (its frame cannot move back to the original code)"
    )


class FunctionRestored(Event):
    """An undo put a function's original entry bytes back."""

    kind: ClassVar[str] = "restored"
    name: str
    address: int

    template = "restored {name} at {address:#x}"


class Notice(Event):
    """Something the user should know that does not stop the operation."""

    kind: ClassVar[str] = "notice"
    message: str

    template = "{message}"


class BlockNotReleased(Event):
    """A failed reload could not give back a block it had mapped in the target."""

    kind: ClassVar[str] = "block-not-released"
    address: int
    size: int
    reason: str

    template = (
        "could not unmap the {size}-byte block at {address:#x} after the "
        "failed reload ({reason}): it stays mapped, unused"
    )


class Timings(Event):
    """Wall time per phase of one operation, and how long threads were stopped."""

    kind: ClassVar[str] = "timings"
    phases_ms: dict[str, float] = field(default_factory=dict)
    stopped_us: float = 0.0

    def __str__(self) -> str:
        parts = ", ".join(f"{k} {v:.1f} ms" for k, v in self.phases_ms.items())
        return f"timings: {parts}; threads stopped {self.stopped_us:.0f} µs"


class Phase(enum.StrEnum):
    """A step of a reload that may take long enough to show (see :class:`Progress`)."""

    DEBUG_INFO = "reading debug info"
    COMPILE = "compiling"
    OBJECT = "reading the object"
    LINK = "linking"
    TYPES = "checking types"
    WRITE = "writing"


class Progress(Event):
    """A reload is at ``phase`` on ``source``, ``elapsed`` seconds after it began.

    Emitted at each phase boundary and once a second while a compile runs;
    renderers decide what to show (a live line on a terminal, at most one JSON
    line a second, nothing in plain text).
    """

    kind: ClassVar[str] = "progress"
    source: str
    phase: Phase
    elapsed: float

    def __str__(self) -> str:
        return f"{os.path.basename(self.source)}: {self.phase} ({self.elapsed:.1f} s)"


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


# -- the edit loop (``relive watch`` / ``relive run``) and ``relive doctor`` ----------


def _clock(when: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(when))


def _names(paths: Sequence[str], limit: int = 4) -> str:
    shown = [os.path.basename(p) for p in paths[:limit]]
    more = len(paths) - limit
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


class ProcessStarted(Event):
    """``relive run`` started the program."""

    kind: ClassVar[str] = "started"
    pid: int
    argv: list[str]

    def __str__(self) -> str:
        return f"started {' '.join(self.argv)} (pid {self.pid})"


class TargetProcess(Event):
    """The process the following events are about (when there are several)."""

    kind: ClassVar[str] = "process"
    pid: int
    name: str

    template = "pid {pid} ({name}):"


class ProcessesSwitched(Event):
    """``reload --all``: the processes' entry jumps were written one right after the
    other; ``spread_ms`` is the time from the first process's write to the last's."""

    kind: ClassVar[str] = "switched"
    pids: list[int]
    spread_ms: float

    def __str__(self) -> str:
        return (
            f"{len(self.pids)} processes switched to the new code within "
            f"{self.spread_ms:.1f} ms of each other"
        )


class WatchStarted(Event):
    """Watching began: which translation units and files, and what triggers a reload."""

    kind: ClassVar[str] = "watching"
    pids: list[int]
    units: list[str]
    files: list[str]
    trigger: str  # "save", or a signal name such as "SIGINT"

    def __str__(self) -> str:
        pids = ", ".join(str(p) for p in self.pids)
        headers = len(self.files) - len(self.units)
        what = f"{len(self.units)} translation unit{'s' if len(self.units) != 1 else ''}"
        if headers > 0:
            what += f" + {headers} header{'s' if headers != 1 else ''}"
        how = {
            "save": "save to reload",
            "SIGINT": "Ctrl+C (SIGINT) reloads what changed, Ctrl+\\ ends the program",
        }.get(self.trigger, f"send {self.trigger} to reload what changed")
        return f"watching {what} of pid {pids} ({_names(self.units)}); {how}"


class WatchFollows(Event):
    """``watch --all``: a process of the same executable started since watching began
    (a pre-forking server replaced a worker); it is reloaded from now on."""

    kind: ClassVar[str] = "watch-follows"
    pid: int

    template = "following pid {pid}: a new process of the same program"


class FlagsFromDwarf(Event):
    """Sources whose compile flags come only from DWARF, which records no -D/-I."""

    kind: ClassVar[str] = "flags-from-dwarf"
    sources: list[str]

    def __str__(self) -> str:
        return (
            f"flags for {_names(self.sources)} come only from DWARF (no -D/-I): "
            "`bear -- make` writes a compile_commands.json"
        )


class SaveSkipped(Event):
    """A file was saved but its content is what relive last saw: nothing to do."""

    kind: ClassVar[str] = "save-skipped"
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{os.path.basename(self.path)}: {self.reason}, not reloaded"


class PendingSinceBuild(Event):
    """Sources saved after the program was built: the next reload includes them."""

    kind: ClassVar[str] = "pending-since-build"
    sources: list[str]
    trigger: str

    def __str__(self) -> str:
        when = "the next save" if self.trigger == "save" else f"the next {self.trigger}"
        names = _names(self.sources)
        return f"{names} changed after the program was built: reloaded on {when}"


class SignalReload(Event):
    """``--on-signal``: the signal arrived; these translation units are reloaded."""

    kind: ClassVar[str] = "signal"
    signal: str
    sources: list[str]

    def __str__(self) -> str:
        what = _names(self.sources) if self.sources else "nothing changed since the last reload"
        return f"Caught {self.signal}! reloading ... {what}"


class WatchReloaded(Event):
    """One reload of the edit loop, in one process: the line the user reads."""

    kind: ClassVar[str] = "watch-reloaded"
    time: float
    pid: int
    sources: list[str]
    redirected: list[str]
    added: list[str]
    unchanged: list[str]
    skipped: list[str]
    compile_ms: float
    link_ms: float
    stopped_us: float
    #: From the newest changed file's mtime to the new code being live (0 if unknown).
    latency_ms: float = 0.0
    show_pid: bool = False

    def __str__(self) -> str:
        pid = f"pid {self.pid} " if self.show_pid else ""
        redirected = f"{len(self.redirected)} redirected"
        if self.redirected:
            redirected += f" ({_names(self.redirected, 3)})"
        text = (
            f"{_clock(self.time)} {pid}{_names(self.sources)}: {redirected}, "
            f"{len(self.added)} new, {len(self.unchanged)} unchanged"
        )
        if self.skipped:
            text += f", {len(self.skipped)} skipped ({_names(self.skipped, 3)})"
        text += (
            f" | compile {self.compile_ms:.0f} ms, link {self.link_ms:.0f} ms, "
            f"stopped {self.stopped_us:.0f} µs"
        )
        if self.latency_ms > 0:
            text += f", live {self.latency_ms:.0f} ms after save"
        return text


class WatchFailure(enum.StrEnum):
    """Why a reload of the edit loop did not happen (its value is what the line says)."""

    COMPILE_ERROR = "compile error"
    #: Refused or failed: a ReliveError other than a compile error.
    NOT_RELOADED = "not reloaded"
    #: A bug in relive, reported with its traceback; the watch goes on.
    INTERNAL_ERROR = "internal error"


class WatchFailed(Event):
    """A reload of the edit loop failed; the program keeps its last good code."""

    kind: ClassVar[str] = "watch-failed"
    time: float
    pid: int
    sources: list[str]
    failure: WatchFailure
    error: str  # the error's class name, e.g. "CompileError", "LinkError"
    message: str
    hint: str
    details: str
    show_pid: bool = False

    def __str__(self) -> str:
        pid = f"pid {self.pid} " if self.show_pid else ""
        what = self.failure.value
        text = f"{_clock(self.time)} {pid}{_names(self.sources)}: {what}: {self.message}"
        return text + " (the program keeps its last good code)"


class TargetExited(Event):
    """A watched program exited."""

    kind: ClassVar[str] = "exited"
    pid: int
    #: The exit status as a shell reports it (128+N for signal N), when known.
    status: int | None = None
    description: str = ""

    def __str__(self) -> str:
        how = f" ({self.description})" if self.description else ""
        return f"pid {self.pid} exited{how}"


class WatchStopped(Event):
    """Watching ended; the patches stay unless undone."""

    kind: ClassVar[str] = "watch-stopped"
    reason: str
    undone: list[str] = field(default_factory=list)
    #: Functions this watch redirected that stay redirected.
    kept: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        text = f"stopped watching ({self.reason})"
        if self.undone:
            text += f"; undid {_names(self.undone, 5)}"
        if self.kept:
            one = len(self.kept) == 1
            text += (
                f"; {len(self.kept)} reloaded function{'' if one else 's'} "
                f"{'stays' if one else 'stay'} in place (--undo-on-exit reverts "
                f"{'it' if one else 'them'})"
            )
        return text


class Verdict(enum.StrEnum):
    """How one check of ``relive doctor`` came out."""

    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    #: The check could not run (no process given, an earlier check failed).
    SKIP = "skip"


class CheckResult(Event):
    """One check of ``relive doctor``: its verdict, what was found, and the fix."""

    kind: ClassVar[str] = "check"
    name: str
    verdict: Verdict
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.verdict.upper():4} {self.name}: {self.detail}"
        return f"{text}\n     fix: {self.fix}" if self.fix else text


class ErrorReported(Event):
    """A command failed: the error relive reports, with its exit code (``--json``)."""

    kind: ClassVar[str] = "error"
    type: str  # the error's class name, e.g. "CompileError"
    message: str
    hint: str
    details: str
    exit_code: int
    #: The process it concerns, when a command acts on several.
    pid: int | None = None

    def __str__(self) -> str:
        where = f" (pid {self.pid})" if self.pid is not None else ""
        line = f"{self.message} ({self.hint})" if self.hint else self.message
        return f"relive: error{where}: {line}"


class PatchStatus(Event):
    """One patched function: a row of ``Session.status()``, a line of ``relive status``."""

    kind: ClassVar[str] = "patch"
    name: str
    source: str
    address: int
    target: int
    count: int
    updated: float
    #: The jump is really in memory (checked when the status was taken).
    active: bool

    #: The column titles ``relive status`` prints above the rows.
    HEADER: ClassVar[str] = (
        f"{'FUNCTION':24} {'ENTRY':>14} -> {'NEW CODE':14}  {'RELOADS':>7}  "
        f"{'LAST':8}  {'STATE':6}  SOURCE"
    )

    def __str__(self) -> str:
        when = time.strftime("%H:%M:%S", time.localtime(self.updated))
        state = "active" if self.active else "NOT IN MEMORY (overwritten?)"
        return (
            f"{self.name:24} {self.address:>#14x} -> {self.target:<#14x}  {self.count:>7}  "
            f"{when:8}  {state:6}  {self.source or '(inherited from the parent)'}"
        )


class ServerState(Event):
    """``relive server status`` / ``stop``: the command server, if one runs."""

    kind: ClassVar[str] = "server"
    #: The server's pid; 0 when none runs.
    pid: int
    #: Commands it forked a child for, and the pids of those running now.
    served: int = 0
    running: list[int] = field(default_factory=list)
    #: Seconds without a command after which it exits.
    idle_s: float = 0.0
    #: It runs the code on disk now (else it exits at its next command).
    current: bool = True
    #: It has removed its socket and exits once its running commands are done.
    stopping: bool = False
    socket: str = ""
    #: CPU time of the commands it served (their children, gcc, included).
    children_cpu_s: float = 0.0

    def __str__(self) -> str:
        if not self.pid:
            return (
                "no command server runs (the next reload, undo or status starts one,"
                " unless RELIVE_SERVER=0 or --no-server)"
            )
        if self.stopping:
            return f"command server pid {self.pid} stops ({len(self.running)} command(s) running)"
        stale = "" if self.current else "; runs older code than on disk: exits at its next command"
        return (
            f"command server pid {self.pid}: {self.served} command(s) served, "
            f"{len(self.running)} running, exits after {self.idle_s:g} s idle; "
            f"socket {self.socket}{stale}"
        )

"""Shared test helpers: compile C programs at test time and drive them as targets.

Targets run with stdout and stderr merged into one pipe that a daemon thread
reads into ``Target.lines``.  Tests wait for output patterns with a timeout,
never with fixed sleeps.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

import pytest

import relive
from relive.cli.main import main
from relive.events import Event, Notice
from relive.patch.journal import load_journal

DEFAULT_TIMEOUT = 10.0

#: With RELIVE_TEST_STRICT=1 (set by .ci/run) a test that cannot run on this machine
#: fails instead of skipping: CI must not pass by running less.
STRICT = os.environ.get("RELIVE_TEST_STRICT") == "1"

#: The Debian/Ubuntu package of each program the tests may need beyond gcc and make.
PACKAGE_OF = {"clang": "clang", "readelf": "binutils", "strip": "binutils", "ld": "binutils"}


def cannot_run(what: str, why: str, enable: str) -> NoReturn:
    """Skip the calling test with one line: what is skipped, why, the command that enables it.

    Tests skipped for the same reason from the same place are folded into one
    line of pytest's summary.  Under RELIVE_TEST_STRICT=1 the test fails instead.
    """
    reason = f"{what}: {why}; to run them: {enable}"
    if STRICT:
        pytest.fail(f"RELIVE_TEST_STRICT=1 forbids skipping {reason}", pytrace=False)
    pytest.skip(reason)


def need_program(program: str) -> None:
    """Skip (see ``cannot_run``) unless ``program`` is on PATH."""
    if shutil.which(program) is None:
        package = PACKAGE_OF.get(program, program)
        cannot_run(
            f"tests that run {program}",
            f"{program} is not installed",
            f"`sudo apt-get install {package}` (or `sudo make test`)",
        )


class CompileFailed(RuntimeError):
    """The compiler rejected a test program; the message holds its output."""


def compile_c(
    tmp_path: Path,
    source: str,
    name: str = "prog",
    flags: Sequence[str] = ("-g", "-O0"),
    compiler: str = "gcc",
    extra_sources: Mapping[str, str] | None = None,
    link_flags: Sequence[str] = (),
) -> Path:
    """Write ``name.c`` (and ``extra_sources``) into ``tmp_path``; build ``tmp_path/name``.

    Extra files ending in ``.c`` are compiled and linked too; others (headers)
    are only written.  Raises CompileFailed with the compiler's output; skips the
    test when ``compiler`` is not installed.
    """
    need_program(compiler)
    main = tmp_path / f"{name}.c"
    main.write_text(source)
    units = [main]
    for filename, text in (extra_sources or {}).items():
        path = tmp_path / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if filename.endswith(".c"):
            units.append(path)
    exe = tmp_path / name
    cmd = [compiler, *flags, "-o", str(exe), *map(str, units), *link_flags]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise CompileFailed(f"{' '.join(cmd)} failed:\n{proc.stdout}{proc.stderr}")
    return exe


class Target:
    """A running program whose merged output is collected line by line."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self._lines: list[str] = []
        self._consumed = 0
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()

    @classmethod
    def start(
        cls,
        argv: Sequence[str | Path],
        cwd: str | Path | None = None,
        stdin_pipe: bool = False,
        new_session: bool = False,
    ) -> Target:
        """Spawn ``argv`` with stdout+stderr merged into a pipe read in the background.

        ``new_session`` starts it in a session and process group of its own, so a
        test can signal the group as a terminal would (``os.killpg(target.pid, ...)``).
        """
        proc = subprocess.Popen(
            [str(a) for a in argv],
            cwd=cwd,
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
        return cls(proc)

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    @property
    def argv(self) -> list[str]:
        """The command line the program was started with."""
        args = self.proc.args
        assert isinstance(args, list), args
        return [str(arg) for arg in args]

    @property
    def lines(self) -> list[str]:
        """A copy of every output line so far (without newlines)."""
        with self._cond:
            return list(self._lines)

    def mark(self) -> int:
        """The current number of lines, usable as ``wait_for(..., after=mark)``."""
        with self._cond:
            return len(self._lines)

    def _read_output(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\r\n")
            with self._cond:
                self._lines.append(line)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(
        self, pattern: str, timeout: float = DEFAULT_TIMEOUT, after: int | None = None
    ) -> re.Match[str]:
        """Wait for a line matching regex ``pattern`` and return the match.

        Searches lines not yet consumed by an earlier ``wait_for`` (or, with
        ``after``, lines from that index on).  The matching line and those
        before it count as consumed.  Raises AssertionError with the last 20
        lines on timeout or when the program's output ends first.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            index = self._consumed if after is None else after
            while True:
                while index < len(self._lines):
                    match = regex.search(self._lines[index])
                    index += 1
                    if match:
                        self._consumed = max(self._consumed, index)
                        return match
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    break
                self._cond.wait(remaining)
        why = "output ended" if self._eof else f"timed out after {timeout:g} s"
        tail = "\n".join(self.lines[-20:])
        raise AssertionError(f"{why} waiting for {pattern!r}; last lines:\n{tail}")

    def write(self, data: bytes) -> None:
        """Write ``data`` to the program's stdin (needs ``stdin_pipe=True``)."""
        assert self.proc.stdin is not None, "start the target with stdin_pipe=True"
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def wait_exit(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the program to exit by itself and return its exit status."""
        return self.proc.wait(timeout=timeout)

    def alive(self) -> bool:
        """Whether the program is still running."""
        return self.proc.poll() is None

    def stop(self) -> None:
        """Kill the program (SIGKILL) and reap it; idempotent."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=DEFAULT_TIMEOUT)
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):  # EPIPE if the program died first
                self.proc.stdin.close()
        self._reader.join(timeout=DEFAULT_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


class SpawnFactory(Protocol):
    """The type of the ``spawn`` fixture: start a target like ``Target.start``."""

    def __call__(
        self,
        argv: Sequence[str | Path],
        cwd: str | Path | None = None,
        stdin_pipe: bool = False,
        new_session: bool = False,
    ) -> Target: ...


def wait_until(
    predicate: Callable[[], bool], timeout: float = DEFAULT_TIMEOUT, what: str = ""
) -> None:
    """Poll ``predicate()`` until it is true; AssertionError after ``timeout`` seconds.

    For conditions that produce no output (e.g. "blocked in read()").
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting until {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def wait_reading_stdin(target: Target, any_thread: bool = False) -> None:
    """Wait until ``target`` is blocked reading its stdin: its ``main`` runs, so the
    dynamic loader has mapped every library (a reload right after ``spawn`` may
    find the process still inside ``execve`` or the loader).  With ``any_thread``,
    until any of its threads (those it has now) is."""
    pid = target.pid
    tids = os.listdir(f"/proc/{pid}/task") if any_thread else [str(pid)]

    def reading() -> bool:
        for tid in tids:
            fields = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()
            if fields[:2] == ["0", "0x0"]:  # read(0, ...); the loader reads fd 3 and up
                return True
        return False

    wait_until(reading, what=f"pid {pid} reads its stdin")


def children(pid: int) -> set[int]:
    """The pids of ``pid``'s children now."""
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def fork_child(parent: Target, printed: str) -> int:
    """Have ``parent`` fork (a line on its stdin) and return the new child's pid once
    it printed a line matching ``printed`` (a regex with ``{pid}``).

    The new child is the one the parent's children list gained: older children
    still printing the same kind of line are never taken for it.
    """
    before = children(parent.pid)
    parent.write(b"f\n")
    new: set[int] = set()

    def forked() -> bool:
        new.update(children(parent.pid) - before)
        return bool(new)

    wait_until(forked, what=f"pid {parent.pid} forked a child")
    [pid] = new
    parent.wait_for(printed.format(pid=pid), after=0)
    return pid


# --- driving the relive CLI as a separate process ------------------------------

#: The relive command line, run with the interpreter running the tests.
RELIVE = (sys.executable, "-m", "relive")


def wait_event(
    target: Target, kind: str, timeout: float = DEFAULT_TIMEOUT, after: int | None = None
) -> dict[str, Any]:
    """Wait for the next ``--json`` event of ``kind`` in ``target``'s output; return it."""
    match = target.wait_for(rf'^\{{"kind": "{re.escape(kind)}"', timeout=timeout, after=after)
    event: dict[str, Any] = json.loads(match.string)
    return event


def json_events(target: Target, kind: str | None = None) -> list[dict[str, Any]]:
    """Every ``--json`` event (of ``kind``, if given) ``target`` printed so far."""
    events = []
    for line in target.lines:
        if line.startswith('{"kind": '):
            event = json.loads(line)
            if kind is None or event["kind"] == kind:
                events.append(event)
    return events


def save_by_rename(path: Path, text: str) -> None:
    """Save ``text`` to ``path`` as many editors do: write a temporary file, rename it over."""
    temporary = path.with_name(f".{path.name}.swp")
    temporary.write_text(text)
    os.replace(temporary, path)


# --- editing sources, reloading, checking a refused reload changed nothing ----------


def read_memory(pid: int, address: int, size: int) -> bytes:
    """``size`` bytes of process ``pid``'s memory at ``address`` (through /proc/PID/mem)."""
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as mem:  # no read-ahead past it
        mem.seek(address)
        return mem.read(size)


def edit(path: Path, old: str, new: str) -> None:
    """Replace ``old`` (which must occur) with ``new`` in a source file, saving in place."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new))


def reload(pid: int, *paths: Path, **options: Any) -> list[Event]:
    """Reload through the Python API (``Session.reload`` options); return the events."""
    events: list[Event] = []
    relive.attach(pid, on_event=events.append).reload(list(paths), **options)
    return events


def kinds(events: Sequence[Event]) -> dict[str, list[str]]:
    """Function names per event kind (redirected/new/unchanged/skipped)."""
    out: dict[str, list[str]] = {}
    for event in events:
        name = getattr(event, "name", None)
        if name is not None:
            out.setdefault(event.kind, []).append(name)
    return out


def notices(events: Sequence[Event]) -> list[str]:
    """The text of every ``Notice`` among ``events``."""
    return [e.message for e in events if isinstance(e, Notice)]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run relive's CLI in this process; return its exit code and what it wrote to stderr."""
    code = main(list(argv))
    err = capsys.readouterr().err
    return code, err


#: The uid of ``nobody``: another user, for tests of what relive must not trust.
NOBODY = 65534

#: A program that prints "value 1" every 20 ms through two small functions and a table.
VALUE_PROG = r"""
#include <stdio.h>
#include <unistd.h>
int table[4] = {1, 2, 3, 4};
__attribute__((noinline)) int value(void) { return table[0]; }
__attribute__((noinline)) void tick(void) { printf("value %d\n", value()); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { tick(); usleep(20000); }
}
"""

#: ``VALUE_PROG`` whose value(x) is `mov %edi,%eax; ret` at -O1 (``TINY_FLAGS``): 3 bytes,
#: too small for an entry jump; tick() calls it in the same file.
TINY_WITH_CALLER = (
    VALUE_PROG.replace("int value(void) { return table[0]; }", "int value(int x) { return x; }")
    .replace("value())", "value(one))")
    .replace("int table[4]", "volatile int one = 1;\nint table[4]")
)

#: The same tiny value(x) in a file of its own (``tiny.c``): no caller there to
#: reroute through.  ``TINY_MAIN`` prints "value 1" every 20 ms with it.
TINY = "__attribute__((noinline)) int value(int x) { return x; }\n"
TINY_MAIN = r"""
#include <stdio.h>
#include <unistd.h>
int value(int x);
volatile int one = 1;
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("value %d\n", value(one)); usleep(20000); }
}
"""

#: Flags under which value(x) is 3 bytes (no padding after it either).
TINY_FLAGS = ("-g", "-O1", "-fno-align-functions")

#: Loops that jump back into their function's first five bytes, where an entry
#: jump goes: main's at -O0 (to main+4), a -O1 worker's right after its prologue.
LOOP_OVER_ENTRY_MAIN = r"""
#include <stdio.h>
#include <unistd.h>
int counter;
int table[4] = {1, 2, 3, 4};
void tick(void) { counter++; printf("value %d\n", table[0]); fflush(stdout); }
int main(void) { for (;;) { tick(); usleep(20000); } }
"""

LOOP_OVER_ENTRY_WORKER = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
int table[4] = {1, 2, 3, 4};
volatile int counter;
__attribute__((noinline)) void tick(void) { printf("value %d\n", table[0]); fflush(stdout); }
__attribute__((noinline)) void *worker(void *arg) {
    for (;;) { counter++; tick(); usleep(20000); }
    return arg;
}
int main(void) {
    pthread_t thread;
    pthread_create(&thread, NULL, worker, NULL);
    pthread_join(thread, NULL);
    return 0;
}
"""

#: Prints "frames=N" every 20 ms: how many frames backtrace() finds from depth3(), three
#: calls below main (each of them must have unwind information where it runs).
BACKTRACE_PROG = r"""
#include <execinfo.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int depth3(void) { void *f[64]; return backtrace(f, 64); }
__attribute__((noinline)) int depth2(void) { return depth3() + 0; }
__attribute__((noinline)) int depth1(void) { return depth2() + 0; }
int main(void) {
    void *f[4];
    backtrace(f, 4);  /* glibc loads libgcc_s, the unwinder, on the first call */
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("frames=%d\n", depth1()); usleep(20000); }
}
"""

_MAPS_SEEN: dict[int, str] = {}


def remember_maps(target: Target) -> Target:
    """Note the target's memory map, for ``assert_untouched`` to compare with."""
    _MAPS_SEEN[target.pid] = Path(f"/proc/{target.pid}/maps").read_text()
    return target


def assert_maps_unchanged(target: Target) -> None:
    """The target's memory map is the one ``remember_maps`` saw: nothing was mapped."""
    assert Path(f"/proc/{target.pid}/maps").read_text() == _MAPS_SEEN[target.pid]


def assert_untouched(target: Target) -> None:
    """A ``VALUE_PROG`` target is still running the old code: nothing patched or allocated."""
    assert_maps_unchanged(target)
    mark = target.mark()
    target.wait_for(r"^value 1$", after=mark)
    assert target.alive()
    assert relive.attach(target.pid).status() == []
    journal = load_journal(target.pid)
    assert not (journal.regions or journal.arenas or journal.blocks)  # nothing allocated
    state = Path(f"/proc/{target.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    assert state in "RS"


# --- programs around value(x): one function reloaded again and again -----------------

#: The main() of a program that defines ``int value(int x)`` (and includes <stdio.h> and
#: <unistd.h>): prints "value N", N = value(0), every 2 ms.
VALUE_LOOP_MAIN = r"""
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("value %d\n", value(0)); usleep(2000); }
}
"""

#: The same, with a thread that prints "worker N", N = value(1), in a loop (the program
#: includes <pthread.h> and links with -pthread).
VALUE_WORKER_MAIN = r"""
static void *worker(void *arg) {
    for (;;) printf("worker %d\n", value(1));
    return arg;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t thread;
    pthread_create(&thread, NULL, worker, NULL);
    for (;;) { printf("value %d\n", value(0)); usleep(2000); }
}
"""

#: value(0) through a switch whose jump table holds addresses in the function (with
#: PIE, offsets in .rodata; without, absolute addresses); value(0) is 1, as in the others.
SWITCHING = (
    r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int value(int x) {
    switch (x) {
    case 0: return x + 1;
    case 1: return 7;
    case 2: return 11;
    case 3: return 13;
    case 4: return 17;
    case 5: return 19;
    default: return 23;
    }
}
"""
    + VALUE_LOOP_MAIN
)

#: ``has_input()``: whether a byte came on stdin (then read), without waiting (the
#: program includes <poll.h> and <unistd.h>).
HAS_INPUT = r"""
static int has_input(void) {
    struct pollfd in = {.fd = 0, .events = POLLIN};
    char c;
    return poll(&in, 1, 0) == 1 && read(0, &c, 1) == 1;
}
"""


def start_value_program(
    tmp_path: Path,
    spawn: SpawnFactory,
    program: str,
    *argv: str,
    stdin_pipe: bool = False,
    **build: Any,
) -> tuple[Target, Path]:
    """Build ``program`` (``compile_c`` options in ``build``), start it with ``argv`` and
    wait for its "value 1": the target and its source, ``prog.c``."""
    exe = compile_c(tmp_path, program, **build)
    target = spawn([exe, *argv], stdin_pipe=stdin_pipe)
    target.wait_for(r"^value 1$")
    return target, tmp_path / "prog.c"


def start_remembered(tmp_path: Path, spawn: SpawnFactory, program: str, **build: Any) -> Target:
    """``start_value_program``, its memory map remembered for ``assert_untouched`` once it
    printed "value 1": its loader is done (it changes protections at start) and its
    first printf has mapped the heap."""
    target, _ = start_value_program(tmp_path, spawn, program, **build)
    return remember_maps(target)


def set_value(source: Path, n: int) -> None:
    """Make ``value(x)`` in ``source`` return ``x + n``."""
    text = source.read_text()
    start = text.index(" x + ", text.index("int value(")) + len(" x + ")
    source.write_text(text[:start] + str(n) + text[text.index(";", start) :])


def reload_value(target: Target, source: Path, n: int, **options: Any) -> None:
    """``set_value`` and reload (``Session.reload`` options); wait for "value N"."""
    set_value(source, n)
    reload(target.pid, source, **options)
    target.wait_for(rf"^value {n}$", after=target.mark())

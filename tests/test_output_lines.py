"""Every line relive prints reaches its descriptor in one ``write()``, and no forked
child of relive writes into its output.

A line written in two pieces lets another writer of the same pipe in between: the
program ``relive run`` started shares the stderr ``run`` prints its lines on, and a
``--json`` reader got ``{"kind": "redirected", ...}value=2 i=1761`` ("Extra data").
The writes are observed through a SOCK_SEQPACKET socket, which keeps each
``write()`` as one message: a line split in two shows as two messages, every time,
with no load or timing needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from relive.cli.render import Renderer
from relive.errors import CompileError
from relive.events import (
    Event,
    FunctionRedirected,
    Notice,
    PatchStatus,
    Phase,
    Progress,
    WatchStarted,
)
from support import (
    RELIVE,
    VALUE_LOOP_MAIN,
    SpawnFactory,
    compile_c,
    set_value,
    start_value_program,
    wait_until,
)


class Writes:
    """The ``write()`` calls made to one end of a SOCK_SEQPACKET pair, one message each."""

    def __init__(self) -> None:
        self.writer, self._reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._reader.settimeout(30)
        self.messages: list[bytes] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while message := self._reader.recv(1 << 20):
            self.messages.append(message)

    def fileno(self) -> int:
        """The writing end's descriptor."""
        return self.writer.fileno()

    def finish(self) -> list[bytes]:
        """Every message, once every holder of the writing end closed it."""
        self.writer.close()
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "a writer still holds the socket"
        self._reader.close()
        return self.messages


def assert_whole_lines(messages: list[bytes]) -> list[str]:
    """Each message is one whole line (the newline included); returns the lines."""
    assert messages
    for message in messages:
        assert message.endswith(b"\n") and message.count(b"\n") == 1, message[:200]
    return [message.decode().rstrip("\n") for message in messages]


#: Text streams over a descriptor, as Python makes sys.stdout and sys.stderr.
STREAMS: dict[str, Callable[[int], IO[str]]] = {
    # python -u, PYTHONUNBUFFERED=1: every write() of the stream is one of the descriptor
    "unbuffered": lambda fd: io.TextIOWrapper(
        io.FileIO(fd, "wb", closefd=False), encoding="utf-8", write_through=True
    ),
    # stdout into a pipe
    "buffered": lambda fd: io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(fd, "wb", closefd=False)), encoding="utf-8"
    ),
    # stderr
    "line-buffered": lambda fd: io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(fd, "wb", closefd=False)),
        encoding="utf-8",
        errors="backslashreplace",
        line_buffering=True,
    ),
}

#: Events with a short line, a non-ASCII one and one longer than a stream's buffer (8 KiB).
EVENTS: list[Event] = [
    FunctionRedirected("handle_request", 0x401136, 0x7F0000001000),
    Notice("stopped 410 µs"),
    Progress("/src/server.c", Phase.COMPILE, 2.5),
    WatchStarted([4242], [f"/src/unit_{n:04}_with_a_long_name.c" for n in range(400)], [], "save"),
]


@pytest.fixture
def writes() -> Iterator[Writes]:
    found = Writes()
    yield found
    found.writer.close()


@pytest.mark.parametrize("kind", STREAMS)
def test_each_json_event_is_one_write(kind: str, writes: Writes) -> None:
    stream = STREAMS[kind](writes.fileno())
    render = Renderer(json_lines=True, stream=stream)
    for event in EVENTS:
        render(event)
    lines = assert_whole_lines(writes.finish())
    assert [json.loads(line)["kind"] for line in lines] == [e.kind for e in EVENTS]
    assert len(lines[-1]) > 8192  # the long one did take more than a stream's buffer


@pytest.mark.parametrize("kind", STREAMS)
def test_each_text_line_is_one_write(kind: str, writes: Writes) -> None:
    stream = STREAMS[kind](writes.fileno())
    render = Renderer(stream=stream)
    shown = [e for e in EVENTS if not isinstance(e, Progress)]  # plain text shows none
    for event in shown:
        render(event)
    assert assert_whole_lines(writes.finish()) == [str(e) for e in shown]


def test_an_error_and_its_details_are_one_write_each(
    writes: Writes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stderr", STREAMS["unbuffered"](writes.fileno()))
    details = "prog.c:3:1: error: expected ';'\n    3 | }\n      | ^\n"
    Renderer().error(CompileError("prog.c does not compile", "fix it", details))
    messages = writes.finish()
    assert messages[0] == details.encode()
    assert_whole_lines(messages[1:])


def test_a_stream_without_a_descriptor_gets_each_line_in_one_call() -> None:
    class Calls(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.calls: list[str] = []

        def write(self, text: str) -> int:
            self.calls.append(text)
            return super().write(text)

    stream = Calls()
    render = Renderer(json_lines=True, stream=stream)
    for event in EVENTS:
        render(event)
    assert [json.loads(call)["kind"] for call in stream.calls] == [e.kind for e in EVENTS]
    assert all(call.endswith("\n") for call in stream.calls)


# --- the command ------------------------------------------------------------------


def unbuffered_environment() -> dict[str, str]:
    """The environment of a ``python -u`` relive run in-process."""
    return dict(os.environ, PYTHONUNBUFFERED="1", RELIVE_SERVER="0")


def test_run_json_lines_on_stderr_are_one_write_each(tmp_path: Path, writes: Writes) -> None:
    """``run`` prints its lines on the stderr the program shares."""
    exe = compile_c(tmp_path, "int main(void) { return 3; }\n", name="quick")
    code = subprocess.run(
        [*RELIVE, "--json", "run", "--", str(exe)],
        cwd=tmp_path,
        env=unbuffered_environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=writes.fileno(),
        timeout=60,
        check=False,
    ).returncode
    assert code == 3
    kinds = [json.loads(line)["kind"] for line in assert_whole_lines(writes.finish())]
    assert kinds[0] == "started" and "exited" in kinds


VALUE_PROGRAM = (
    "#include <stdio.h>\n#include <unistd.h>\n"
    "__attribute__((noinline)) int value(int x) { return x + 1; }\n" + VALUE_LOOP_MAIN
)


def test_reload_json_lines_and_the_status_table_are_one_write_each(
    tmp_path: Path, spawn: SpawnFactory, writes: Writes
) -> None:
    """The reader of ``reload --json`` sees each event whole, and the end of the output
    when relive ends (the child writing debug objects does not hold it open); the
    reader of ``status`` its whole table."""
    target, source = start_value_program(tmp_path, spawn, VALUE_PROGRAM)
    set_value(source, 2)
    done = subprocess.run(
        [*RELIVE, "--json", "reload", "-p", str(target.pid), str(source)],
        cwd=tmp_path,
        env=unbuffered_environment(),
        stdin=subprocess.DEVNULL,
        stdout=writes.fileno(),
        stderr=subprocess.PIPE,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in assert_whole_lines(writes.finish())]
    assert [e["name"] for e in events if e["kind"] == "redirected"] == ["value"]
    target.wait_for(r"^value 2$", after=target.mark())

    table = Writes()  # and `status` writes its table (header and rows) at once
    subprocess.run(
        [*RELIVE, "status", "-p", str(target.pid)],
        env=unbuffered_environment(),
        stdout=table.fileno(),
        timeout=60,
        check=True,
    )
    [message] = table.finish()
    header, row = message.decode().splitlines()
    assert header.split() == PatchStatus.HEADER.split()
    assert "value" in row and message.endswith(b"\n")


# --- the background child writing debug objects --------------------------------------

#: Leaves unwritten text in a buffered stdout, starts the debug objects' background
#: child (whose work flushes stdout and notes its stdio), waits for it, exits.
FORKING = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from relive.patch.debugfiles import _in_background

    done = Path(sys.argv[1])

    def work():
        sys.stdout.flush()  # what a warning or a stray print would do
        links = [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)]
        done.write_text(" ".join(links))

    sys.stdout.write("written once\\n")
    _in_background(work)
    while not done.exists() or not done.read_text():
        time.sleep(0.01)
    print(done.read_text())
    """
)


def test_the_background_child_never_writes_relives_output_again(tmp_path: Path) -> None:
    """Text buffered when relive forks is written by relive only, once; the child's
    stdin, stdout and stderr are /dev/null."""
    env = dict(os.environ)
    env.pop("PYTHONUNBUFFERED", None)  # stdout buffered, as when piped
    out = subprocess.run(
        [sys.executable, "-c", FORKING, str(tmp_path / "done")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert out == "written once\n/dev/null /dev/null /dev/null\n"


def test_a_descriptor_another_process_made_non_blocking_gets_every_line_whole() -> None:
    """A full non-blocking pipe refuses writes (EAGAIN): relive waits for room."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    stream = STREAMS["unbuffered"](write_end)
    filler = b"x" * 4095 + b"\n"
    with contextlib.suppress(BlockingIOError):
        while True:
            os.write(write_end, filler)
    received = bytearray()
    writer = threading.get_native_id()

    def drain() -> None:
        # Only once the writer waits for room (select or pselect6): it was refused.
        syscall = Path(f"/proc/self/task/{writer}/syscall")
        wait_until(lambda: syscall.read_text().split()[0] in ("23", "270"), what="waiting")
        while chunk := os.read(read_end, 1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    render = Renderer(json_lines=True, stream=stream)
    for event in EVENTS:  # the pipe is full: the first waits until the reader makes room
        render(event)
    os.close(write_end)
    reader.join(timeout=30)
    os.close(read_end)
    lines = [line for line in received.decode().splitlines() if not line.startswith("x")]
    assert [json.loads(line)["kind"] for line in lines] == [e.kind for e in EVENTS]

"""One output line, one ``write()``: what keeps relive's lines whole for their readers.

``print(text, file=stream, flush=True)`` hands the stream the text and then its
newline.  On an unbuffered stream (``python -u``, ``PYTHONUNBUFFERED=1``), or a
line longer than the stream's buffer, they reach the descriptor as two
``write()`` calls, and whatever else writes to the same pipe or terminal between
them lands inside the line: the program ``relive run`` started shares relive's
stderr, where ``run`` prints its lines, so a ``--json`` reader got
``{"kind": "redirected", ...}value=2 i=1761`` and could not parse it.

Here a line is encoded whole and given to the descriptor in one ``write()``
(Linux keeps one write to a pipe whole against other writers up to PIPE_BUF,
4096 bytes; a terminal or a file gets it in one piece too), under one lock so
that relive's own threads never split it either.  A stream without a descriptor
(a test's ``io.StringIO``) gets the whole line in one ``write`` call.
"""

from __future__ import annotations

import _thread  # threading's lock itself: importing threading costs start-up time
import os
from typing import IO

#: Held while a line is written.  Reentrant: a signal handler runs in the main
#: thread between bytecodes, possibly while that thread holds it; one that wrote a
#: line would otherwise wait forever for itself.
_WRITING = _thread.RLock()


def write_line(stream: IO[str], text: str) -> None:
    """Write ``text`` and a newline to ``stream`` as one ``write()`` of the descriptor.

    What the stream still buffers (an earlier ``print``) goes out first, so lines
    keep their order.  Errors are the stream's own: a closed reader gives
    ``BrokenPipeError`` as ``print`` would.
    """
    line = text + "\n"
    with _WRITING:
        stream.flush()
        try:
            fd = stream.fileno()
        except (OSError, ValueError):  # io.UnsupportedOperation is both: no descriptor
            stream.write(line)
            stream.flush()
            return
        encoding = getattr(stream, "encoding", None) or "utf-8"
        errors = getattr(stream, "errors", None) or "strict"
        _write_all(fd, line.encode(encoding, errors))


def _write_all(fd: int, data: bytes) -> None:
    """``data`` to ``fd``: one ``write()``, and more only if the kernel took part of it
    (a line longer than a pipe has room for).

    A descriptor made non-blocking by another process sharing it (the program
    ``relive run`` started may set O_NONBLOCK on its stdout or stderr, which are
    relive's) refuses a write while its pipe or terminal is full: relive then
    waits until it can write, as it would on a blocking one, instead of failing.
    """
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            import select  # only ever needed here

            select.select([], [fd], [])

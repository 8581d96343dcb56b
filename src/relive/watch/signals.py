"""Signal plumbing for the edit loop: a wake-up that signal handlers may set, and handlers.

Python runs signal handlers in the main thread between bytecodes, possibly
while that thread holds a ``threading`` lock; a handler that calls
``threading.Event.set()`` can then deadlock.  :class:`Wakeup` is set with a
plain attribute store and a byte written to a pipe, both safe anywhere.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable, Iterator, Mapping
from types import FrameType

__all__ = ["Wakeup", "handle_signals", "parse_signal", "signal_name"]


class Wakeup:
    """A flag that wakes a waiting loop; ``set`` is safe in a signal handler.

    Its ``fileno`` lets the inotify reader (``watch.notify``) wait on it too.
    """

    def __init__(self) -> None:
        self._flag = False
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def set(self) -> None:
        """Raise the flag and wake a ``wait``."""
        self._flag = True
        with contextlib.suppress(OSError):  # a full pipe already wakes the waiter
            os.write(self._write, b"!")

    def fileno(self) -> int:
        """A descriptor that becomes readable when the flag is raised (for ``select``)."""
        return self._read

    def is_set(self) -> bool:
        """Whether the flag is raised."""
        return self._flag

    def clear(self) -> None:
        """Lower the flag."""
        self._flag = False
        self._drain()

    def wait(self, timeout: float) -> bool:
        """Sleep until ``set`` or ``timeout`` seconds; return the flag."""
        if not self._flag:
            with contextlib.suppress(InterruptedError):
                select.select([self._read], [], [], timeout)
        return self._flag

    def _drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read, 4096):
                pass

    def close(self) -> None:
        """Close the pipe; idempotent."""
        for fd in (self._read, self._write):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._read = self._write = -1


Handler = Callable[[int], None]


@contextlib.contextmanager
def handle_signals(handlers: Mapping[int, Handler]) -> Iterator[None]:
    """Install ``handlers`` (signal number -> callable(signum)); restore the old ones after.

    The handled signals are unblocked meanwhile: a mask inherited from whoever
    started relive (a parent that blocked SIGINT) would otherwise hold them
    forever, and ``run --on-signal INT`` would never reload.
    """
    previous: dict[int, object] = {}

    def adapt(handler: Handler) -> Callable[[int, FrameType | None], None]:
        return lambda signum, _frame: handler(signum)

    mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, handlers.keys())
    try:
        for signum, handler in handlers.items():
            previous[signum] = signal.signal(signum, adapt(handler))
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)  # type: ignore[arg-type]
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def parse_signal(text: str) -> signal.Signals:
    """A signal from "INT", "SIGINT", "int" or "2"; ValueError for anything else."""
    name = text.strip().upper()
    if name.isdigit():
        return signal.Signals(int(name))
    if not name.startswith("SIG"):
        name = "SIG" + name
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f"unknown signal: {text}") from None


def signal_name(signum: int) -> str:
    """ "SIGINT" for 2, and so on."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"

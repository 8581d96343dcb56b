"""Signals to relive held while a reload or undo writes a process.

Ctrl+C, Ctrl+\\, ``kill`` or a closed terminal while entry jumps are written
would leave the process half patched and the journal behind it: so SIGINT,
SIGQUIT, SIGTERM and SIGHUP wait until the transaction is over, then act as
they would have.

Blocking them in the thread that writes is not enough: the kernel gives a
signal sent to the process to any thread that does not block it, and relive has
others at times (rich's refresh of the progress line on a terminal, the
compiler's helpers).  Python then runs its handler in the main thread at once
(a KeyboardInterrupt in the middle of the switch), and a default action (SIGTERM,
SIGHUP, SIGQUIT) ends the whole process.  So, in the main thread, each held signal's
handler is also replaced by one that only notes it, whichever thread the kernel
chose; afterwards the handlers are put back and each noted signal raised again.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None

#: What relive holds: Ctrl+C, Ctrl+\ (SIGQUIT), ``kill``, a closed terminal.
HELD = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def held_signals() -> Iterator[None]:
    """Defer SIGINT/SIGQUIT/SIGTERM/SIGHUP to relive until the block is over."""
    previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HELD)
    if threading.current_thread() is not threading.main_thread():
        try:  # (handlers can be set only from the main thread)
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)
        return
    noted: list[int] = []

    def note(signum: int, _frame: object) -> None:
        noted.append(signum)

    handlers = {signum: signal.signal(signum, note) for signum in HELD}
    try:
        yield
    finally:
        _give_back(handlers, previous_mask, noted)


def _give_back(
    handlers: dict[signal.Signals, _Handler], previous_mask: Iterable[int], noted: list[int]
) -> None:
    """Put the handlers and the mask back, then raise what was noted meanwhile."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [])  # runs the handlers of signals that came
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    # Raised while still blocked here, so that all of them are pending when the
    # mask goes back and are delivered together to the handlers now in place (raised
    # one by one after it, a KeyboardInterrupt from the first lost the others).
    for again in dict.fromkeys(noted):
        signal.raise_signal(again)
    signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)

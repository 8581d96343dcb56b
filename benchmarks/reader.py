"""A child process of a scenario whose output lines a thread reads and keeps, so that
the scenario can wait for a line with a timeout while the child runs on."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

_Line = TypeVar("_Line")
_Found = TypeVar("_Found")


class LineReader(Generic[_Line]):
    """``proc``'s stdout, each line kept as ``parse(line)`` in :attr:`lines`."""

    def __init__(self, proc: subprocess.Popen[str], parse: Callable[[str], _Line]) -> None:
        self.proc = proc
        self.lines: list[_Line] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, args=(parse,), daemon=True).start()

    def _pump(self, parse: Callable[[str], _Line]) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(parse(line))
                self._cond.notify_all()

    def wait(
        self,
        found: Callable[[list[_Line]], _Found | None],
        timeout: float,
        failure: Callable[[list[_Line]], str],
    ) -> _Found:
        """``found(lines)`` once it is not None (it runs again at each new line);
        RuntimeError(``failure(lines)``) after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = found(self.lines)
                if result is not None:
                    return result
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(failure(self.lines))
                self._cond.wait(left)

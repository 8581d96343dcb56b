"""Bursts of saves from inotify, ended as soon as every written file is complete.

A save is over when the editor closes the file it wrote (``IN_CLOSE_WRITE``) or
renames a finished temporary file over it (``IN_MOVED_TO``).  watchfiles does not
report either, so it can only end a burst after a fixed quiet time (20 ms of every
save's latency); this reader ends it at the close, then waits only ``GRACE_S`` for
the next file of a multi-file save.  A file written and kept open (no close)
still ends its burst after the quiet time, as before.

Directories are watched, not files: a rename replaces the file's inode.  Only
changes to names the caller cares about (``relevant``) shape a burst; the others
(swap files, build output) are read and dropped.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from relive.errors import ReliveError

__all__ = ["GRACE_S", "Notifier"]

IN_MODIFY = 0x002
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_Q_OVERFLOW = 0x4000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_MASK = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
#: Events that say a file's new content is complete.
_COMPLETE = IN_CLOSE_WRITE | IN_MOVED_TO
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len

#: How long a burst waits after its last file completed, for the next file of
#: the same save (an editor's "save all", a header and its unit).  Part of every
#: save's latency; an editor writes the files of one save back to back (vim's
#: ``:wa``: the next file's first event 0.1 ms after the last one's close, each
#: file's own fsync falling inside its write, which keeps the burst open), so a
#: millisecond is ample.  A file saved later is reloaded by a reload of its own.
GRACE_S = 0.001


class Notifier:
    """inotify watches on ``directories``; :meth:`bursts` yields what changed in them."""

    def __init__(self, directories: Sequence[Path]) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _watch_error("inotify", ctypes.get_errno())
        self.fd: int = fd
        self._folders: dict[int, Path] = {}
        try:
            for directory in directories:
                wd = self._add_watch(fd, os.fsencode(directory), _MASK)
                if wd < 0:
                    raise _watch_error(str(directory), ctypes.get_errno())
                self._folders[wd] = directory
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the inotify descriptor; idempotent."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def bursts(
        self,
        relevant: Callable[[Path], bool],
        stop_fd: int,
        is_stopped: Callable[[], bool],
        quiet_s: float,
        longest_s: float,
        timeout_s: float,
        grace_s: float | None = GRACE_S,
    ) -> Iterator[set[Path]]:
        """Yield the relevant paths changed by each burst of saves, and an empty
        set after each ``timeout_s`` without any.  The watches are in place from
        the constructor on; a caller looks for earlier saves at the first yield,
        which therefore comes no earlier than the first burst's end (saves made
        just before and just after the watches began are one batch).

        A burst ends ``grace_s`` after every relevant file written in it is
        complete, or after ``quiet_s`` without events, or ``longest_s`` after it
        began.  ``grace_s`` None: only the quiet time ends it (``--debounce``).
        Stops when ``is_stopped()`` (``stop_fd`` becomes readable then).
        """
        while not is_stopped():
            if not self._wait(stop_fd, timeout_s):
                yield set()
                continue
            if is_stopped():
                return
            yield self._burst(relevant, stop_fd, quiet_s, longest_s, grace_s)

    def _burst(
        self,
        relevant: Callable[[Path], bool],
        stop_fd: int,
        quiet_s: float,
        longest_s: float,
        grace_s: float | None,
    ) -> set[Path]:
        changed: set[Path] = set()
        writing: set[Path] = set()  # relevant files whose new content is not complete yet
        began = time.monotonic()
        while True:
            for path, mask in self._read():
                if not relevant(path):
                    continue
                changed.add(path)
                if mask & _COMPLETE:
                    writing.discard(path)
                else:  # written, created, or gone for now (renamed away, deleted)
                    writing.add(path)
            left = longest_s - (time.monotonic() - began)
            if left <= 0:
                return changed
            wait = quiet_s
            if grace_s is not None and changed and not writing:
                wait = grace_s  # complete: wait only for another file of the same save
            if not self._wait(stop_fd, min(wait, left)):
                return changed

    def _wait(self, stop_fd: int, timeout: float) -> bool:
        """Whether events arrived within ``timeout`` seconds (False also when stopped)."""
        try:
            ready, _, _ = select.select([self.fd, stop_fd], [], [], timeout)
        except InterruptedError:
            return False
        return self.fd in ready and stop_fd not in ready

    def _read(self) -> Iterator[tuple[Path, int]]:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
            offset += _HEADER.size
            name = data[offset : offset + length].rstrip(b"\0")
            offset += length
            folder = self._folders.get(wd)
            if mask & IN_Q_OVERFLOW:
                # Events were lost: every file of every folder may have changed.
                for directory in self._folders.values():
                    for entry in _listing(directory):
                        yield entry, IN_CLOSE_WRITE
            elif folder is not None and name:
                yield folder / os.fsdecode(name), mask


def _listing(directory: Path) -> list[Path]:
    try:
        return [directory / name for name in os.listdir(directory)]
    except OSError:
        return []


def _watch_error(what: str, errno: int) -> ReliveError:
    return ReliveError(
        f"cannot watch {what}: {os.strerror(errno)}",
        "raise fs.inotify.max_user_watches / max_user_instances, or watch fewer folders",
    )

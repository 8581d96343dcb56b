"""What was parsed from a file, kept for the next caller while the file is unchanged.

A watch session asks about the same executable on every save, so the readers of
images, compile units and DWARF types keep the last few files' answers.  The key
is the file's *content* identity (device, inode, modification time, size), taken
from the open descriptor, not the name: a rebuilt file gets a new key, and a file
replaced between the lookup and the parse cannot lend its name to other bytes.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from relive.errors import BadObject

__all__ = ["FileCache", "FileIdentity", "file_identity"]

#: (st_dev, st_ino, st_mtime_ns, st_ctime_ns, st_size) of an open file.
FileIdentity = tuple[int, int, int, int, int]

_T = TypeVar("_T")


def file_identity(st: os.stat_result) -> FileIdentity:
    """What changes when a file's content does (a rebuild writes anew or replaces it).
    The ctime too: the file's owner can write it in place at the same size and set
    its mtime back, but no one can set the ctime back (a root relive would reuse
    the parse of the old bytes)."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


class FileCache(Generic[_T]):
    """The last ``size`` files' parse results, least recently used dropped first."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[FileIdentity, _T] = OrderedDict()
        self._lock = threading.Lock()

    def get(
        self,
        path: str | os.PathLike[str],
        parse: Callable[[str, int, os.stat_result], _T],
        missing_hint: str,
    ) -> _T:
        """``parse(name, fd, stat)`` of the file at ``path``, or its cached result.

        ``fd`` is open only during the call.  A file that cannot be opened raises
        :class:`BadObject` with ``missing_hint``; whatever ``parse`` raises passes through
        and nothing is kept.
        """
        name = os.fspath(path)
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise BadObject(f"cannot read {name}: {e.strerror}", missing_hint) from e
        try:
            st = os.fstat(fd)
            identity = file_identity(st)
            with self._lock:
                cached = self._items.get(identity)
                if cached is not None:
                    self._items.move_to_end(identity)
                    return cached
            found = parse(name, fd, st)
        finally:
            os.close(fd)
        with self._lock:
            self._items[identity] = found
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return found

    def clear(self) -> None:
        """Forget every file."""
        with self._lock:
            self._items.clear()

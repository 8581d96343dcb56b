"""Which pages of a mapping hold anything: /proc/PID/pagemap.

A thread stack or an arena is mapped megabytes at a time and touched a few
pages deep; a scan of the program's memory for pointers reads only the pages
that are resident or swapped out.  A private anonymous page that is neither has
never been written (it reads as zeros), a private file page that is neither
still holds the file's bytes.
"""

from __future__ import annotations

import os

from relive.elf.constants import PAGE_SIZE

_PRESENT = 1 << 63
_SWAPPED = 1 << 62
_ENTRY = 8


class PopulatedPages:
    """The pagemap of one process, open for a series of look-ups; a context manager.

    When pagemap cannot be read, every page counts as populated (no page is
    ever left out for want of knowing).
    """

    def __init__(self, pid: int) -> None:
        try:
            self._fd: int | None = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
        except OSError:
            self._fd = None

    def __enter__(self) -> PopulatedPages:
        return self

    def __exit__(self, *_: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def runs(self, start: int, end: int) -> list[tuple[int, int]]:
        """``[lo, hi)`` runs of ``[start, end)`` (page aligned) whose pages are
        resident or swapped out."""
        pages = (end - start) // PAGE_SIZE
        entries = None if self._fd is None else _read_entries(self._fd, start // PAGE_SIZE, pages)
        if entries is None:
            return [(start, end)]
        # The top byte of each little-endian entry holds both flags: one byte per
        # page, 1 where populated, whose runs memchr finds (``bytes.find``: a
        # regular expression walks them byte by byte, and this runs in a stop).
        populated = entries[_ENTRY - 1 :: _ENTRY].translate(_POPULATED)
        runs = []
        first = populated.find(1)
        while first != -1:
            last = populated.find(0, first)
            if last == -1:
                last = pages
            runs.append((start + first * PAGE_SIZE, start + last * PAGE_SIZE))
            first = populated.find(1, last)
        return runs


_POPULATED = bytes(int(bool((b << 56) & (_PRESENT | _SWAPPED))) for b in range(256))


def _read_entries(fd: int, first: int, count: int) -> bytes | None:
    size = count * _ENTRY
    parts: list[bytes] = []
    done = 0
    while done < size:
        try:
            chunk = os.pread(fd, size - done, first * _ENTRY + done)
        except OSError:
            return None
        if not chunk:
            return None
        parts.append(chunk)
        done += len(chunk)
    return b"".join(parts)

"""Reading a process's code in large chunks, each once, while a big unit is compared.

Deciding which of thousands of functions changed reads each one's running code,
and the strings and constants it refers to: two small reads of /proc/PID/mem per
function, most of them on pages read a moment before.  Code and read-only data
do not change while relive holds the process's lock, so the comparison reads
64 KiB at a time and keeps what it read for the rest of the plan.
"""

from __future__ import annotations

from relive.errors import ReliveError
from relive.patch.binder import MemoryReader

CHUNK = 1 << 16


class ChunkedReader:
    """A :data:`MemoryReader` that reads aligned chunks once and answers from them.

    A chunk that cannot be read whole (it runs past the end of a mapping) is
    remembered as such, and reads in it go to the process as asked.
    """

    def __init__(self, read: MemoryReader) -> None:
        self._read = read
        self._chunks: dict[int, bytes | None] = {}

    def __call__(self, address: int, size: int) -> bytes:
        if size <= 0 or address < 0:
            return self._read(address, size)
        first, last = address // CHUNK, (address + size - 1) // CHUNK
        parts = []
        for number in range(first, last + 1):
            chunk = self._chunk(number)
            if chunk is None:
                return self._read(address, size)
            parts.append(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        start = address - first * CHUNK
        return data[start : start + size]

    def _chunk(self, number: int) -> bytes | None:
        try:
            return self._chunks[number]
        except KeyError:
            pass
        try:
            chunk: bytes | None = self._read(number * CHUNK, CHUNK)
        except ReliveError:
            chunk = None
        self._chunks[number] = chunk
        return chunk

"""Reading and writing another process's memory.

The fast path is pread/pwrite on /proc/PID/mem.  For root or the tracer, the
kernel forces writes through page protections (FOLL_FORCE), so read-only or
r-x text can be patched in place.  Linux 6.12 added ``proc_mem.force_override``
which can turn that off; a write that then fails with EIO/EFAULT (or comes up
short) falls back to PTRACE_POKEDATA, which always forces.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import sys
from collections.abc import Callable, Sequence
from itertools import pairwise

from relive.elf.constants import PAGE_SIZE
from relive.errors import ProcessGone, ReliveError
from relive.process import procfs, ptrace

#: errnos of a /proc/PID/mem write the kernel refused for this address, where
#: PTRACE_POKEDATA may still succeed.
_FALLBACK_ERRNOS = (errno.EIO, errno.EFAULT, errno.EPERM)

_UNMAPPED_HINT = "the address is not mapped in the target (see /proc/PID/maps)"


def _group_by_page(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int, list[int]]]:
    """(start, end, indices) of the ranges that lie within one page each; a range
    that crosses a page boundary (or is empty) is a group of its own."""
    pages: dict[int, list[int]] = {}
    alone: list[tuple[int, int, list[int]]] = []
    for k, (address, size) in enumerate(ranges):
        page = address // PAGE_SIZE
        if size > 0 and (address + size - 1) // PAGE_SIZE == page:
            pages.setdefault(page, []).append(k)
        else:
            alone.append((address, address + size, [k]))
    grouped = [
        (
            min(ranges[k][0] for k in members),
            max(ranges[k][0] + ranges[k][1] for k in members),
            members,
        )
        for members in pages.values()
    ]
    return grouped + alone


def _overlap(ranges: Sequence[tuple[int, int]]) -> bool:
    ordered = sorted(ranges)
    return any(a + n > b for (a, n), (b, _) in pairwise(ordered))


#: Most spans one ``process_vm_readv`` takes (the kernel's ``UIO_MAXIOV``).
_MAX_IOV = 1024


class _IoVec(ctypes.Structure):
    _fields_ = (("base", ctypes.c_void_p), ("length", ctypes.c_size_t))


def _read_vm(pid: int, spans: Sequence[tuple[int, int]], out: bytearray) -> bool:
    """Fill ``out`` with ``spans`` of ``pid``'s memory by ``process_vm_readv``;
    False when it cannot (not available, refused, or a short read)."""
    call = _process_vm_readv()
    if call is None:
        return False
    buffer = (ctypes.c_char * len(out)).from_buffer(out) if out else None
    local = ctypes.addressof(buffer) if buffer is not None else 0
    offset = 0
    for first in range(0, len(spans), _MAX_IOV):
        batch = spans[first : first + _MAX_IOV]
        size = sum(end - start for start, end in batch)
        remote = (_IoVec * len(batch))(*(_IoVec(start, end - start) for start, end in batch))
        target = _IoVec(local + offset, size)
        if call(pid, ctypes.byref(target), 1, remote, len(batch), 0) != size:
            return False
        offset += size
    return True


@functools.cache
def _process_vm_readv() -> Callable[..., int] | None:
    function = getattr(ctypes.CDLL(None, use_errno=True), "process_vm_readv", None)
    if function is None:
        return None
    function.argtypes = [
        ctypes.c_int, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong,
        ctypes.c_ulong,
    ]  # fmt: skip
    function.restype = ctypes.c_ssize_t
    return function  # type: ignore[no-any-return]


class ProcessMemory:
    """Read/write access to a live process's address space.

    /proc/PID/mem is opened once, in the constructor.  The PTRACE_POKEDATA
    fallback for writes is only valid while the process is ptrace-stopped by
    this thread (see ``threads.StoppedProcess``); ``poke_tid`` names the stopped
    thread to poke through (default: the main thread).
    """

    def __init__(self, pid: int, *, poke_tid: int | None = None) -> None:
        self.pid = pid
        self.poke_tid = pid if poke_tid is None else poke_tid
        try:
            self._fd: int | None = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        except (FileNotFoundError, ProcessLookupError):
            raise ProcessGone(f"no such process: {pid}") from None
        except PermissionError as exc:
            # A process that has exited (a zombie) refuses the open to anyone but
            # root: that is "gone", not "not permitted".
            if not procfs.is_alive(pid):
                raise ProcessGone(f"no such process: {pid}") from None
            raise procfs.permission_denied(f"open the memory of process {pid}") from exc

    def __enter__(self) -> ProcessMemory:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close /proc/PID/mem; idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _get_fd(self) -> int:
        if self._fd is None:
            raise ReliveError(f"memory of process {self.pid} was already closed")
        return self._fd

    def read(self, addr: int, size: int) -> bytes:
        """Exactly ``size`` bytes at ``addr``; raises ReliveError naming the address."""
        fd = self._get_fd()
        parts: list[bytes] = []
        done = 0
        while done < size:
            try:
                chunk = os.pread(fd, size - done, addr + done)
            except (OSError, OverflowError) as exc:
                raise self._access_error("read", addr + done, size - done, str(exc)) from exc
            if not chunk:  # the next byte is not mapped
                raise self._access_error("read", addr + done, size - done, "unmapped")
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` at ``addr``, even into read-only or executable pages."""
        done = self._pwrite_prefix(addr, data)
        if done < len(data):
            self._poke(addr + done, data[done:])

    def read_many(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each ``(address, size)`` range, in order.

        Ranges on one page are read with one system call: the entries of thousands
        of functions cost tens of reads instead of thousands.
        """
        out: list[bytes] = [b""] * len(ranges)
        for start, end, members in _group_by_page(ranges):
            span = self.read(start, end - start)
            for k in members:
                address, size = ranges[k]
                out[k] = span[address - start : address - start + size]
        return out

    def read_prefix(self, addr: int, size: int) -> bytes:
        """What can be read of ``size`` bytes at ``addr``: one read, which stops
        where the range runs into memory that is not mapped (b"" if none is),
        for a read that may run past the end of a mapping (a stack's top)."""
        try:
            return os.pread(self._get_fd(), size, addr)
        except (OSError, OverflowError):
            return b""

    def read_spans(self, spans: Sequence[tuple[int, int]]) -> bytearray:
        """The bytes of every ``[start, end)`` span, one after the other, read in as
        few system calls as possible: ``process_vm_readv`` takes up to 1,024 spans
        at a time (what a copy made while threads are held wants: one call instead
        of one per span).  Where it is refused or comes up short (a span not
        readable as mapped), each span is read through /proc/PID/mem instead, which
        raises ReliveError naming an address that cannot be read."""
        out = bytearray(sum(end - start for start, end in spans))
        if not _read_vm(self.pid, spans, out):
            offset = 0
            for start, end in spans:
                out[offset : offset + end - start] = self.read(start, end - start)
                offset += end - start
        return out

    def prepare_edits(self, edits: Sequence[tuple[int, bytes, bytes]]) -> PreparedEdits:
        """Get ``(address, expected, new)`` edits ready to apply in a few system calls.

        Call it while the program runs; call :meth:`PreparedEdits.apply` while every
        thread is held.  The edits are grouped by page, and each group's bytes,
        from its first edited byte to its last, are read now: the expected content
        of a group is what is read now with the expected bytes laid over it, and its
        new content the same with the new bytes.  Applying then costs one read and
        one write per page, whatever the number of edits.
        """
        ranges = [(address, len(new)) for address, _, new in edits]
        if any(len(expected) != len(new) for _, expected, new in edits) or _overlap(ranges):
            groups = [(a, a + n, [k]) for k, (a, n) in enumerate(ranges)]
        else:
            groups = _group_by_page(ranges)
        spans: list[tuple[int, bytes, bytes, list[int]]] = []
        for start, end, members in groups:
            if len(members) == 1:
                address, expected, new = edits[members[0]]
                spans.append((address, expected, new, members))
                continue
            expected_span = bytearray(self.read(start, end - start))
            new_span = bytearray(expected_span)
            for k in members:
                address, expected, new = edits[k]
                expected_span[address - start : address - start + len(expected)] = expected
                new_span[address - start : address - start + len(new)] = new
            spans.append((start, bytes(expected_span), bytes(new_span), members))
        return PreparedEdits(list(edits), spans)

    def _pwrite_prefix(self, addr: int, data: bytes) -> int:
        """Write through /proc/PID/mem; return how many leading bytes got written."""
        fd = self._get_fd()
        done = 0
        while done < len(data):
            try:
                written = os.pwrite(fd, data[done:], addr + done)
            except OSError as exc:
                if exc.errno in _FALLBACK_ERRNOS:
                    return done
                raise self._access_error("write", addr + done, len(data) - done, str(exc)) from exc
            except OverflowError as exc:
                raise self._access_error("write", addr, len(data), str(exc)) from exc
            if written <= 0:
                return done
            done += written
        return done

    def _poke(self, addr: int, data: bytes) -> None:
        """Write with PTRACE_POKEDATA, a word at a time (read-modify-write at the edges).

        Words are in host byte order: the tracer runs on the target's machine.
        """
        word = ptrace.WORD_SIZE
        first = addr - addr % word
        end = addr + len(data)
        for base in range(first, end, word):
            lo, hi = max(addr, base), min(end, base + word)
            try:
                if hi - lo == word:
                    new = data[lo - addr : hi - addr]
                else:
                    old = bytearray(self._peek_bytes(base))
                    old[lo - base : hi - base] = data[lo - addr : hi - addr]
                    new = bytes(old)
                ptrace.poke_word(self.poke_tid, base, int.from_bytes(new, sys.byteorder))
            except OSError as exc:
                raise self._access_error("write", lo, end - lo, str(exc)) from exc

    def _peek_bytes(self, addr: int) -> bytes:
        return ptrace.peek_word(self.poke_tid, addr).to_bytes(ptrace.WORD_SIZE, sys.byteorder)

    def _access_error(self, verb: str, addr: int, size: int, reason: str) -> ReliveError:
        if not procfs.is_alive(self.pid):
            return ProcessGone(f"process {self.pid} exited while relive accessed its memory")
        hint = _UNMAPPED_HINT
        if verb == "write":
            hint += "; the PTRACE_POKEDATA fallback needs the process stopped by relive"
        return ReliveError(
            f"cannot {verb} {size} bytes at {addr:#x} in process {self.pid}: {reason}",
            hint=hint,
        )


class PreparedEdits:
    """Edits grouped by page, from :meth:`ProcessMemory.prepare_edits`."""

    def __init__(
        self,
        edits: list[tuple[int, bytes, bytes]],
        spans: list[tuple[int, bytes, bytes, list[int]]],
    ) -> None:
        self.edits = edits
        self._spans = spans

    def apply(self, memory: ProcessMemory) -> list[int]:
        """Check every group holds its expected bytes, then write the new ones.

        Returns the indices of the edits whose bytes differ from what was expected
        (then nothing at all is written), or [] once everything is written.  Bytes
        between the edits that changed since :meth:`ProcessMemory.prepare_edits`
        also count against the edits of their page: never write back stale bytes.
        """
        mismatched: list[int] = []
        for start, expected, _, members in self._spans:
            current = memory.read(start, len(expected))
            if current == expected:
                continue
            for k in members:
                address, want, _ = self.edits[k]
                if current[address - start : address - start + len(want)] != want:
                    mismatched.append(k)
            if not any(k in mismatched for k in members):
                mismatched.extend(members)  # only the bytes in between changed
        if mismatched:
            return sorted(set(mismatched))
        for start, _, new, _ in self._spans:
            memory.write(start, new)
        return []

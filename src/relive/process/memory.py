"""Reading and writing another process's memory.

The fast path is pread/pwrite on /proc/PID/mem.  For root or the tracer, the
kernel forces writes through page protections (FOLL_FORCE), so read-only or
r-x text can be patched in place.  Linux 6.12 added ``proc_mem.force_override``
which can turn that off; a write that then fails with EIO/EFAULT (or comes up
short) falls back to PTRACE_POKEDATA, which always forces.
"""

from __future__ import annotations

import errno
import os
import sys
from types import TracebackType

from relive.errors import PermissionDenied, ProcessGone, ReliveError
from relive.process import procfs, ptrace

#: errnos of a /proc/PID/mem write the kernel refused for this address, where
#: PTRACE_POKEDATA may still succeed.
_FALLBACK_ERRNOS = (errno.EIO, errno.EFAULT, errno.EPERM)

_UNMAPPED_HINT = "the address is not mapped in the target (see /proc/PID/maps)"


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
            raise PermissionDenied(
                f"cannot open the memory of process {pid}: permission denied",
                hint="run relive as the process's user or as root",
            ) from exc

    def __enter__(self) -> ProcessMemory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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

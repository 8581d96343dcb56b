"""Thin ctypes binding to ptrace(2), waitpid(2) and tgkill(2).

Every function raises ``OSError`` carrying the errno; translating that into a
relive error is the caller's job (one level up, where the context is known).
No policy and no retries live here, except the EINTR retry of ``waitpid``.

Every ptrace request must come from the OS thread that seized the tracee: the
kernel records the tracing *thread*, not the process.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
from dataclasses import dataclass

from relive.arch import host_registers
from relive.arch.base import RegisterBlock

# Request numbers from <sys/ptrace.h> / include/uapi/linux/ptrace.h.
PTRACE_PEEKDATA = 2
PTRACE_POKEDATA = 5
PTRACE_CONT = 7
PTRACE_SYSCALL = 24
PTRACE_SINGLESTEP = 9
# GETREGS/SETREGS exist on x86 only (aarch64 needs GETREGSET with NT_PRSTATUS).
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_DETACH = 17
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_GETREGSET = 0x4204
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B

#: PTRACE_SEIZE option: syscall-stops report SIGTRAP|0x80.  Besides telling them
#: from a real SIGTRAP, it matters if relive dies in one: the kernel then "delivers"
#: the stop's code, and 0x85 is no signal at all, where a plain SIGTRAP would kill.
PTRACE_O_TRACESYSGOOD = 0x1
#: The stop signal of a syscall-stop under PTRACE_O_TRACESYSGOOD.
SYSCALL_STOP_SIGNAL = signal.SIGTRAP | 0x80
#: The regset of the x86 extended state (XSAVE layout, user format).
NT_X86_XSTATE = 0x202
#: Large enough for every XSAVE layout (AMX tiles included).
_XSTATE_MAX = 16384

#: Reported in ``status >> 16`` for a PTRACE_INTERRUPT or group-stop of a seized tracee.
PTRACE_EVENT_STOP = 128

#: waitpid flag: wait for all children, clone ("thread") or not.  Without it
#: waitpid on a non-leader thread fails with ECHILD.  The os module lacks it.
WALL = 0x40000000
#: waitpid flag: return at once (None) if no thread changed state.
WNOHANG = os.WNOHANG

#: ``sizeof(siginfo_t)`` in the kernel ABI.
SIGINFO_SIZE = 128
#: ``sizeof(sigset_t)`` as the kernel sees it (64 signals), which
#: PTRACE_GETSIGMASK/SETSIGMASK insist on in ``addr``.
KERNEL_SIGSET_SIZE = 8

#: Bytes moved by one PEEKDATA/POKEDATA.
WORD_SIZE = ctypes.sizeof(ctypes.c_long)
_WORD_MASK = (1 << (8 * WORD_SIZE)) - 1


def _load_libc() -> ctypes.CDLL:
    """The C library: through the interpreter's own symbols (Python links it), else
    by name.  ``ctypes.util.find_library`` runs ``ldconfig -p``: milliseconds."""
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "ptrace") and hasattr(libc, "tgkill"):
        return libc
    from ctypes.util import find_library

    return ctypes.CDLL(find_library("c") or "libc.so.6", use_errno=True)


_libc = _load_libc()
_ptrace = _libc.ptrace
# ptrace is variadic in glibc; passing four integer-sized arguments is what
# every caller does and is correct for the SysV x86-64 and AAPCS64 ABIs.
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long
_tgkill = _libc.tgkill
_tgkill.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
_tgkill.restype = ctypes.c_int


def _raise_errno() -> None:
    err = ctypes.get_errno()
    raise OSError(err, os.strerror(err))


def _call(request: int, tid: int, addr: int | None = 0, data: int | None = 0) -> int:
    result = int(_ptrace(request, tid, addr, data))
    if result == -1:
        _raise_errno()
    return result


def seize(tid: int, options: int = 0) -> None:
    """PTRACE_SEIZE: become the tracer of ``tid`` without stopping it or queueing SIGSTOP."""
    _call(PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    """PTRACE_INTERRUPT: make a seized thread report a PTRACE_EVENT_STOP soon."""
    _call(PTRACE_INTERRUPT, tid)


def detach(tid: int, signo: int = 0) -> None:
    """PTRACE_DETACH: stop tracing a ptrace-stopped thread and let it run.

    ``signo`` is delivered only if the thread sits in a signal-delivery-stop
    (the kernel ignores it for event-stops).
    """
    _call(PTRACE_DETACH, tid, 0, signo)


def cont(tid: int, signo: int = 0) -> None:
    """PTRACE_CONT: resume a ptrace-stopped thread, delivering ``signo`` (0 = none)."""
    _call(PTRACE_CONT, tid, 0, signo)


def syscall(tid: int, signo: int = 0) -> None:
    """PTRACE_SYSCALL: resume a ptrace-stopped thread until its next syscall entry or exit."""
    _call(PTRACE_SYSCALL, tid, 0, signo)


def singlestep(tid: int, signo: int = 0) -> None:
    """PTRACE_SINGLESTEP: run one instruction, then stop with SIGTRAP."""
    _call(PTRACE_SINGLESTEP, tid, 0, signo)


def get_regs(tid: int) -> RegisterBlock:
    """PTRACE_GETREGS: the thread's general-purpose registers."""
    regs = host_registers().new_block()
    _call(PTRACE_GETREGS, tid, 0, ctypes.addressof(regs))
    return regs


def set_regs(tid: int, regs: RegisterBlock) -> None:
    """PTRACE_SETREGS: replace the thread's general-purpose registers."""
    _call(PTRACE_SETREGS, tid, 0, ctypes.addressof(regs))


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def get_xstate(tid: int) -> bytes:
    """PTRACE_GETREGSET(NT_X86_XSTATE): the thread's FPU/SSE/AVX state, XSAVE layout."""
    buf = ctypes.create_string_buffer(_XSTATE_MAX)
    iov = _IoVec(ctypes.addressof(buf), _XSTATE_MAX)
    _call(PTRACE_GETREGSET, tid, NT_X86_XSTATE, ctypes.addressof(iov))
    return buf.raw[: iov.len]


@dataclass(frozen=True)
class SigInfo:
    """The ``siginfo_t`` of a signal-delivery-stop, kept raw so it can be put back."""

    signo: int
    code: int
    raw: bytes

    @property
    def is_user_sent(self) -> bool:
        """Whether a process sent it (kill, tgkill, sigqueue): si_code <= 0.

        Kernel-generated signals (a single-step trap, a fault) have si_code > 0.
        """
        return self.code <= 0


def get_siginfo(tid: int) -> SigInfo:
    """PTRACE_GETSIGINFO: the siginfo of the signal that caused the current stop."""
    buf = ctypes.create_string_buffer(SIGINFO_SIZE)
    _call(PTRACE_GETSIGINFO, tid, 0, ctypes.addressof(buf))
    raw = buf.raw
    signo, _errno, code = struct.unpack_from("iii", raw)
    return SigInfo(signo=signo, code=code, raw=raw)


def set_siginfo(tid: int, info: SigInfo) -> None:
    """PTRACE_SETSIGINFO: replace the siginfo the thread will see if a signal is injected."""
    buf = ctypes.create_string_buffer(info.raw, SIGINFO_SIZE)
    _call(PTRACE_SETSIGINFO, tid, 0, ctypes.addressof(buf))


def get_sigmask(tid: int) -> int:
    """PTRACE_GETSIGMASK: the thread's blocked-signal mask (bit n-1 = signal n).

    While a thread is stopped inside ppoll/pselect/sigsuspend the kernel returns
    the saved (user) mask, not the temporary one.
    """
    mask = ctypes.c_uint64()
    _call(PTRACE_GETSIGMASK, tid, KERNEL_SIGSET_SIZE, ctypes.addressof(mask))
    return mask.value


def set_sigmask(tid: int, mask: int) -> None:
    """PTRACE_SETSIGMASK: replace the thread's blocked-signal mask."""
    value = ctypes.c_uint64(mask)
    _call(PTRACE_SETSIGMASK, tid, KERNEL_SIGSET_SIZE, ctypes.addressof(value))


def peek_word(tid: int, addr: int) -> int:
    """PTRACE_PEEKDATA: one machine word (unsigned) at ``addr``; the thread must be stopped."""
    # -1 is a valid word, so errno is the only failure signal.
    ctypes.set_errno(0)
    result = int(_ptrace(PTRACE_PEEKDATA, tid, addr, 0))
    if result == -1 and ctypes.get_errno() != 0:
        _raise_errno()
    return result & _WORD_MASK


def poke_word(tid: int, addr: int, word: int) -> None:
    """PTRACE_POKEDATA: write one machine word at ``addr``; the thread must be stopped."""
    _call(PTRACE_POKEDATA, tid, addr, word & _WORD_MASK)


def tgkill(tgid: int, tid: int, signo: int) -> None:
    """Send ``signo`` to one thread of a process (tgkill(2))."""
    if int(_tgkill(tgid, tid, signo)) == -1:
        _raise_errno()


@dataclass(frozen=True)
class WaitStatus:
    """A decoded waitpid status for one thread."""

    tid: int
    status: int

    @property
    def exited(self) -> bool:
        """The thread is gone: it exited or a signal killed it."""
        return os.WIFEXITED(self.status) or os.WIFSIGNALED(self.status)

    @property
    def stopped(self) -> bool:
        """The thread is in a ptrace-stop (signal-delivery, event or group stop)."""
        return os.WIFSTOPPED(self.status)

    @property
    def stop_signal(self) -> int:
        """The signal of a stop (SIGTRAP for a PTRACE_INTERRUPT stop)."""
        return os.WSTOPSIG(self.status)

    @property
    def event(self) -> int:
        """The PTRACE_EVENT_* number (0 for a plain signal-delivery-stop)."""
        return (self.status >> 16) & 0xFF

    @property
    def is_event_stop(self) -> bool:
        """A PTRACE_EVENT_STOP: PTRACE_INTERRUPT or a group-stop of a seized thread."""
        return self.stopped and self.event == PTRACE_EVENT_STOP

    @property
    def is_syscall_stop(self) -> bool:
        """A syscall-entry or -exit stop (PTRACE_SYSCALL with PTRACE_O_TRACESYSGOOD)."""
        return self.stopped and self.event == 0 and self.stop_signal == SYSCALL_STOP_SIGNAL

    @property
    def is_signal_stop(self) -> bool:
        """A signal-delivery-stop: a signal is waiting for the tracer's verdict."""
        return self.stopped and self.event == 0 and self.stop_signal != SYSCALL_STOP_SIGNAL

    def describe(self) -> str:
        """A short human description, for error messages."""
        if os.WIFEXITED(self.status):
            return f"exited with status {os.WEXITSTATUS(self.status)}"
        if os.WIFSIGNALED(self.status):
            return f"killed by {_signal_name(os.WTERMSIG(self.status))}"
        if self.is_event_stop:
            return f"event-stop ({_signal_name(self.stop_signal)})"
        if self.is_syscall_stop:
            return "syscall-stop"
        return f"stopped by {_signal_name(self.stop_signal)}"


def _signal_name(signo: int) -> str:
    try:
        return signal.Signals(signo).name
    except ValueError:
        return f"signal {signo}"


def waitpid(tid: int, flags: int = 0) -> WaitStatus | None:
    """waitpid(tid, flags | __WALL); None when WNOHANG is given and nothing changed.

    Retries on EINTR (os.waitpid does too since PEP 475, unless a Python signal
    handler raised; the loop keeps this function's contract independent of that).
    """
    while True:
        try:
            pid, status = os.waitpid(tid, flags | WALL)
        except InterruptedError:
            continue
        if pid == 0:
            return None
        return WaitStatus(tid=pid, status=status)

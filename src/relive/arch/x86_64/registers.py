"""x86-64 user registers and the Linux syscall ABI.

``UserRegs`` mirrors ``struct user_regs_struct`` from ``<sys/user.h>``: the
layout ``PTRACE_GETREGS``/``PTRACE_SETREGS`` read and write.  Everything here
is plain data; nothing calls ptrace.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

_U64 = ctypes.c_uint64
_MASK64 = (1 << 64) - 1

#: The two bytes of the ``syscall`` instruction.
SYSCALL_INSN = b"\x0f\x05"
#: Length of ``SYSCALL_INSN``: after a single step over it, rip has moved this far.
SYSCALL_INSN_SIZE = len(SYSCALL_INSN)

# Syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
MMAP = 9
MPROTECT = 10
MUNMAP = 11

SYSCALL_NAMES = {MMAP: "mmap", MPROTECT: "mprotect", MUNMAP: "munmap"}

#: The kernel's syscall ABI passes at most six arguments, in this order.
SYSCALL_ARG_REGISTERS = ("rdi", "rsi", "rdx", "r10", "r8", "r9")

#: Highest errno the kernel returns as ``-errno`` in rax (include/linux/err.h).
MAX_ERRNO = 4095


class UserRegs(ctypes.Structure):
    """``struct user_regs_struct`` for x86-64 (27 unsigned 64-bit fields)."""

    _fields_ = [
        (name, _U64)
        for name in (
            "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8",
            "rax", "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags",
            "rsp", "ss", "fs_base", "gs_base", "ds", "es", "fs", "gs",
        )
    ]  # fmt: skip

    # Declared for type checkers only; ctypes creates the real descriptors.
    r15: int
    r14: int
    r13: int
    r12: int
    rbp: int
    rbx: int
    r11: int
    r10: int
    r9: int
    r8: int
    rax: int
    rcx: int
    rdx: int
    rsi: int
    rdi: int
    orig_rax: int
    rip: int
    cs: int
    eflags: int
    rsp: int
    ss: int
    fs_base: int
    gs_base: int
    ds: int
    es: int
    fs: int
    gs: int

    def copy(self) -> UserRegs:
        """An independent copy of these registers."""
        return UserRegs.from_buffer_copy(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UserRegs):
            return NotImplemented
        return bytes(self) == bytes(other)

    def __hash__(self) -> int:
        return hash(bytes(self))

    def __repr__(self) -> str:
        return f"UserRegs(rip={self.rip:#x}, rsp={self.rsp:#x}, rax={self.rax:#x})"


def _signed64(value: int) -> int:
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


def get_pc(regs: UserRegs) -> int:
    """The program counter (rip)."""
    return regs.rip


def set_pc(regs: UserRegs, value: int) -> None:
    """Set the program counter (rip) in place."""
    regs.rip = value & _MASK64


def get_sp(regs: UserRegs) -> int:
    """The stack pointer (rsp)."""
    return regs.rsp


def set_sp(regs: UserRegs, value: int) -> None:
    """Set the stack pointer (rsp) in place."""
    regs.rsp = value & _MASK64


def cancel_syscall(regs: UserRegs) -> UserRegs:
    """A copy of ``regs`` (of a thread at a syscall's entry stop) that makes the
    kernel skip the syscall: orig_rax = -1."""
    new = regs.copy()
    new.orig_rax = _MASK64
    return new


def get_syscall_nr(regs: UserRegs) -> int:
    """The number of the syscall the thread is stopped in, or -1 when it is not in one.

    The kernel keeps the number in orig_rax; rax already holds the (error) result,
    e.g. -ERESTARTSYS for a read() interrupted by a ptrace stop.
    """
    return _signed64(regs.orig_rax)


def prepare_syscall(regs: UserRegs, nr: int, args: Sequence[int]) -> UserRegs:
    """A copy of ``regs`` set up to execute syscall ``nr`` with ``args``; rip is unchanged.

    orig_rax is set to -1: if the thread was stopped inside an interrupted
    syscall, the kernel would otherwise "restart" that syscall (rewinding rip
    by two bytes and reloading rax from orig_rax) instead of running ours.
    """
    if len(args) > len(SYSCALL_ARG_REGISTERS):
        raise ValueError(f"a syscall takes at most 6 arguments, got {len(args)}")
    new = regs.copy()
    new.rax = nr & _MASK64
    new.orig_rax = _MASK64  # -1
    padded = [*args, *([0] * (len(SYSCALL_ARG_REGISTERS) - len(args)))]
    for name, value in zip(SYSCALL_ARG_REGISTERS, padded, strict=True):
        setattr(new, name, value & _MASK64)
    return new


def syscall_result(regs: UserRegs) -> int:
    """The syscall's return value: rax as a signed integer (-errno on failure)."""
    return _signed64(regs.rax)


def is_syscall_error(result: int) -> bool:
    """Whether a signed syscall result encodes ``-errno`` (-4095..-1)."""
    return -MAX_ERRNO <= result < 0


def syscall_name(nr: int) -> str:
    """A readable name for a syscall number (``syscall 123`` when unknown)."""
    return SYSCALL_NAMES.get(nr, f"syscall {nr}")


#: epoll_wait, epoll_pwait, epoll_pwait2: the kernel fails them with EINTR
#: (fs/eventpoll.c) whenever the thread is woken for a ptrace stop, even when
#: no signal is delivered, where read(), select(), poll() or nanosleep() get an
#: internal ERESTART* code and are transparently restarted.
_EINTR_ONLY_SYSCALLS = frozenset({232, 281, 441})
_EINTR = 4
#: Restart the syscall unless a signal handler runs (then the program sees EINTR).
_ERESTARTNOHAND = 514


def make_interrupted_syscall_restart(regs: UserRegs) -> bool:
    """Turn an EINTR that only a ptrace stop caused into a transparent restart.

    Returns True if ``regs`` were changed.  The kernel's restart check runs
    after the ptrace stop, so a thread in one of these syscalls re-enters it
    (with its original arguments) instead of returning EINTR to the program.
    If a real signal with a handler is delivered meanwhile, the kernel turns
    the code back into EINTR, exactly as without relive.
    """
    if get_syscall_nr(regs) in _EINTR_ONLY_SYSCALLS and syscall_result(regs) == -_EINTR:
        regs.rax = (-_ERESTARTNOHAND) & ((1 << 64) - 1)
        return True
    return False


#: epoll_wait and epoll_pwait take their timeout in milliseconds as the 4th
#: argument (r10); epoll_pwait2's is a pointer to the program's timespec.
_EPOLL_MS_TIMEOUT_SYSCALLS = frozenset({232, 281})


def epoll_wait_call(nr: int, args: Sequence[int]) -> tuple[int, int] | None:
    """(epfd, timeout ms) of an epoll_wait/epoll_pwait call with a finite timeout.

    ``args`` are the six syscall arguments, as /proc/PID/syscall shows them.
    """
    if nr not in _EPOLL_MS_TIMEOUT_SYSCALLS or len(args) < 4:
        return None
    timeout = _signed64(args[3])
    if not 0 < timeout < (1 << 31):
        return None
    return args[0], timeout


def epoll_wait_of(regs: UserRegs) -> tuple[int, int] | None:
    """(epfd, timeout ms) of the epoll wait ``regs`` are stopped in, as ``epoll_wait_call``."""
    args = [getattr(regs, name) for name in SYSCALL_ARG_REGISTERS]
    return epoll_wait_call(get_syscall_nr(regs), args)


def set_epoll_timeout(regs: UserRegs, milliseconds: int) -> None:
    """Make the restart of an epoll wait wait ``milliseconds`` (the 4th argument)."""
    regs.r10 = max(0, milliseconds) & _MASK64


_CALL_ARG_REGISTERS = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")


def prepare_call(regs: UserRegs, function: int, args: Sequence[int], slot: int) -> UserRegs:
    """A copy of ``regs`` set up to call ``function(*args)`` (System V ABI).

    ``slot`` holds the return address (the caller writes it): at a function's
    entry rsp points at it and (rsp + 8) is 16-byte aligned.
    """
    if len(args) > len(_CALL_ARG_REGISTERS):
        raise ValueError(f"at most 6 register arguments, got {len(args)}")
    if (slot + 8) % 16:
        raise ValueError(f"return address slot {slot:#x} breaks the stack alignment")
    new = regs.copy()
    new.rsp = slot
    new.rip = function
    new.rax = 0  # no vector registers used (matters for variadic callees)
    new.orig_rax = _MASK64  # not in a syscall: nothing to restart
    for name, value in zip(_CALL_ARG_REGISTERS, args, strict=False):
        setattr(new, name, value & _MASK64)
    return new


def call_result(regs: UserRegs, *, from_syscall_entry: bool = False) -> int:
    """The integer a called function returned: rax, or, at the entry stop of the
    syscall it returned into, orig_rax (rax then holds -ENOSYS)."""
    value: int = regs.orig_rax if from_syscall_entry else regs.rax
    return value

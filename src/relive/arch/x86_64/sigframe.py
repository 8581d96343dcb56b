"""Self-restoring injection: an ``rt_sigreturn`` frame that puts a thread back.

relive runs syscalls (mmap, mprotect, munmap) and functions (IFUNC resolvers)
on a thread of the target.  If relive dies half-way (SIGKILL, OOM killer), the
kernel detaches and the thread runs on from wherever relive left it.  So the
thread is never pointed at anything that does not end by restoring it:

* a syscall runs at a ``syscall; ret`` sequence of the program's own code, with
  the stack pointer at a frame built here whose first word is the address of a
  ``mov $15,%rax; syscall`` sequence (libc's ``__restore_rt``);
* a function returns to that ``syscall; ret`` (its result, an address, is no
  syscall: ENOSYS) and then to the same frame.

``rt_sigreturn`` then loads every general register, rip, rflags, the FPU/SSE/
AVX state and the signal mask from the frame: the thread continues exactly
where it was.  When relive does not die it restores the thread itself (with
PTRACE_SETREGS) and the frame is never used.  The frame lies below the
thread's stack pointer and its 128-byte red zone, which the program does not
use, so nothing of the program's is overwritten.

Layout (``struct rt_sigframe``, arch/x86/include/asm/sigframe.h)::

    +0    pretcode          address of the sigreturn sequence
    +8    uc_flags, uc_link
    +24   uc_stack          (ss_flags invalid: sigreturn leaves sigaltstack alone)
    +48   uc_mcontext       struct sigcontext: r8..r15, rdi, rsi, rbp, rbx, rdx, rax,
                            rcx, rsp, rip, eflags, cs, gs, fs, ss, err, trapno,
                            oldmask, cr2, fpstate, reserved
    +304  uc_sigmask
    +448  fpstate           XSAVE area (64-byte aligned), then FP_XSTATE_MAGIC2
"""

from __future__ import annotations

import struct

from relive.arch.x86_64.registers import UserRegs

#: ``syscall; ret``: the syscall, then on to the frame's pretcode.
SYSCALL_RET = b"\x0f\x05\xc3"
#: ``mov $15,%rax; syscall``: rt_sigreturn (glibc's and musl's ``__restore_rt``).
SIGRETURN = b"\x48\xc7\xc0\x0f\x00\x00\x00\x0f\x05"
#: Bytes below rsp a leaf function may use without moving rsp (System V ABI).
RED_ZONE = 128

_UC_FP_XSTATE = 0x1
_UC_SIGCONTEXT_SS = 0x2
_UC_STRICT_RESTORE_SS = 0x4
#: sigaltstack modes are 0, SS_ONSTACK (1) and SS_DISABLE (2): 3 is refused with
#: EINVAL, which rt_sigreturn ignores, so the thread's alternate stack stays.
_SS_FLAGS_IGNORED = 3
_MCONTEXT = 48
_SIGMASK = 304
_FPSTATE = 448
_FP_XSTATE_MAGIC1 = 0x46505853
_FP_XSTATE_MAGIC2 = 0x46505845
#: struct _fpx_sw_bytes sits in the reserved tail of the FXSAVE area.
_SW_BYTES = 464
_FXSAVE_SIZE = 512
#: Interrupted-syscall results the kernel turns into a restart
#: (ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK).
_RESTART_CODES = frozenset({512, 513, 514, 516})
_MASK64 = (1 << 64) - 1


def frame_size(xstate: bytes) -> int:
    """Bytes the frame for this XSAVE area takes."""
    return _FPSTATE + len(xstate) + 4


def frame_address(rsp: int, size: int) -> int:
    """Where the frame goes: below the red zone, 64-byte aligned (XRSTOR needs it)."""
    return (rsp - RED_ZONE - size - 16) & ~63


def resume_state(regs: UserRegs) -> UserRegs:
    """The registers that continue the thread as the kernel would after a stop.

    A thread stopped inside a syscall has rax = -ERESTART* and rip after the
    ``syscall``; the kernel restarts it on resumption.  rt_sigreturn does not,
    so the frame holds the restart itself: rip back on the ``syscall`` and rax
    the syscall number.  (A restart block, as nanosleep's, is replaced by the
    original call with its original arguments: rt_sigreturn clears the block.)
    """
    new = regs.copy()
    nr = regs.orig_rax - (1 << 64) if regs.orig_rax >> 63 else regs.orig_rax
    result = regs.rax - (1 << 64) if regs.rax >> 63 else regs.rax
    if nr >= 0 and -result in _RESTART_CODES:
        new.rax = nr
        new.rip = (regs.rip - 2) & _MASK64
    new.orig_rax = _MASK64
    return new


def build_frame(regs: UserRegs, sigmask: int, xstate: bytes, address: int) -> bytes:
    """The rt_sigreturn frame at ``address`` that resumes ``regs`` (see module doc).

    ``pretcode`` is left 0: the caller puts the sigreturn sequence's address there.
    """
    if address % 64:
        raise ValueError(f"frame address {address:#x} is not 64-byte aligned")
    state = resume_state(regs)
    frame = bytearray(frame_size(xstate))
    flags = _UC_FP_XSTATE | _UC_SIGCONTEXT_SS | _UC_STRICT_RESTORE_SS
    struct.pack_into("<QQQiiQ", frame, 8, flags, 0, 0, _SS_FLAGS_IGNORED, 0, 0)
    names = (
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rdi", "rsi", "rbp", "rbx",
        "rdx", "rax", "rcx", "rsp", "rip", "eflags",
    )  # fmt: skip
    struct.pack_into("<18Q", frame, _MCONTEXT, *(getattr(state, n) for n in names))
    # cs, gs, fs, ss; then err, trapno, oldmask, cr2, fpstate.
    struct.pack_into("<4H", frame, _MCONTEXT + 144, state.cs, 0, 0, state.ss)
    struct.pack_into("<5Q", frame, _MCONTEXT + 152, 0, 0, 0, 0, address + _FPSTATE)
    struct.pack_into("<Q", frame, _SIGMASK, sigmask & _MASK64)
    frame[_FPSTATE : _FPSTATE + len(xstate)] = _with_sw_bytes(xstate)
    struct.pack_into("<I", frame, _FPSTATE + len(xstate), _FP_XSTATE_MAGIC2)
    return bytes(frame)


def _with_sw_bytes(xstate: bytes) -> bytes:
    """The XSAVE area with the software bytes sigreturn checks (magic, sizes, features).

    PTRACE_GETREGSET leaves XCR0 (the enabled features) in the first word of
    those bytes; a signal frame needs ``struct _fpx_sw_bytes`` there instead.
    """
    area = bytearray(xstate)
    if len(area) <= _FXSAVE_SIZE:
        return bytes(area)  # FXSAVE only: sigreturn restores x87/SSE from it
    xstate_bv = struct.unpack_from("<Q", area, _FXSAVE_SIZE)[0]
    (xcr0,) = struct.unpack_from("<Q", area, _SW_BYTES)
    struct.pack_into(
        "<IIQI", area, _SW_BYTES, _FP_XSTATE_MAGIC1, len(area) + 4, xcr0 | xstate_bv, len(area)
    )
    return bytes(area)

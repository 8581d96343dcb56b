"""Run syscalls and functions inside a stopped target, self-restoring at every instant.

relive may be killed at any moment (SIGKILL, the OOM killer, a closed
terminal).  The kernel then detaches, and every thread runs on from the state
relive left it in.  So a thread relive borrows is only ever pointed at code
that ends by restoring it, and relive never stops it with a single-step trap
(a tracer that dies there leaves a SIGTRAP that kills the program):

1. save the thread's registers, signal mask and FPU state, and write below its
   stack pointer (past the red zone) an ``rt_sigreturn`` frame holding them
   (``Arch.registers``; on x86-64 ``arch.x86_64.sigframe``);
2. point rip at a ``syscall; ret`` in the program's own code with the syscall's
   arguments in registers and rsp at the frame, whose first word is the address
   of a ``mov $15,%rax; syscall`` (libc's ``__restore_rt``);
3. run it to the syscall's exit stop (PTRACE_SYSCALL) and read the result;
4. stop it again with PTRACE_INTERRUPT and restore the saved registers exactly.

If relive dies anywhere in 2-4 the thread finishes the syscall, returns into
the frame, and rt_sigreturn puts every register, the mask and the FPU state
back: the program carries on (at worst with a mapping nobody uses).  When
relive lives, step 4 restores the thread and the frame is never used.

A thread blocked in a syscall (read, nanosleep, futex...) keeps its interrupted
call's orig_rax and -ERESTART* rax in step 4, so the kernel restarts it on
release and the program sees no EINTR; the frame instead re-enters the call
itself.  A function is called the same way: it returns to the ``syscall; ret``
(its result, an address, is no syscall number; relive reads it at the syscall's
entry stop and skips the call) and then into the frame.
"""

from __future__ import annotations

import errno as errno_codes
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from relive.arch import host_registers
from relive.arch.base import RegisterBlock
from relive.errors import ProcessGone, ReliveError
from relive.process import procfs
from relive.process.memory import ProcessMemory
from relive.process.threads import StoppedProcess

# <sys/mman.h>; the same values on x86-64 and aarch64.
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
#: Like MAP_FIXED but fails with EEXIST instead of replacing an existing
#: mapping (Linux 4.17+; older kernels treat it as a mere hint).
MAP_FIXED_NOREPLACE = 0x100000

_FIRST_CHUNK = 4096
_SCAN_CHUNK = 1 << 20
#: Room below the thread's stack pointer left to a called function's own frames.
CALL_STACK_GAP = 1024


@dataclass(frozen=True)
class Gadgets:
    """Code of the program that injected work runs through (see the module doc)."""

    syscall_ret: int  # ``syscall; ret``
    sigreturn: int  # ``mov $15,%rax; syscall``
    #: The maps-line prefixes of the mappings that hold them (see ``_is_still_valid``).
    keys: tuple[str, str]


#: pid -> the gadgets found in that process.
_gadget_cache: dict[int, Gadgets] = {}


class RemoteSyscallError(ReliveError):
    """A syscall run inside the target returned an error."""

    def __init__(self, message: str, *, syscall: str, errno: int, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.syscall = syscall
        self.errno = errno


def _iter_candidate_mappings(maps: list[procfs.Mapping]) -> list[procfs.Mapping]:
    """Executable file-backed mappings, libc first (it surely holds both sequences)."""
    code = [m for m in maps if m.is_executable and m.is_file_backed]
    return sorted(code, key=lambda m: "libc" not in os.path.basename(m.path))


def _scan_mapping(memory: ProcessMemory, mapping: procfs.Mapping, pattern: bytes) -> int | None:
    # Chunks grow from one page: libc has both sequences within its first pages,
    # and this may run while threads are held.
    overlap = len(pattern) - 1  # a sequence may straddle two chunks
    start, size = mapping.start, _FIRST_CHUNK
    while start < mapping.end:
        end = min(start + size + overlap, mapping.end)
        try:
            chunk = memory.read(start, end - start)
        except ReliveError:
            return None  # e.g. a mapping of a truncated file
        offset = chunk.find(pattern)
        if offset >= 0:
            return start + offset
        start += size
        size = min(size * 4, _SCAN_CHUNK)
    return None


def _find_sequence(
    memory: ProcessMemory, maps: list[procfs.Mapping], pattern: bytes
) -> tuple[int, str] | None:
    """The address of ``pattern`` in an executable mapping, and that mapping's key.

    Any occurrence works, even inside another instruction: the CPU decodes from
    wherever rip points.
    """
    for mapping in _iter_candidate_mappings(maps):
        found = _scan_mapping(memory, mapping, pattern)
        if found is not None:
            return found, _maps_key(mapping)
    return None


def _find_gadgets(pid: int) -> Gadgets:
    # May run while threads are held: parse only the lines of executable mappings.
    lines = procfs.read_maps_text(pid).splitlines()
    maps = [procfs.parse_maps_line(line) for line in lines if "xp " in line or "xs " in line]
    with ProcessMemory(pid) as memory:
        syscall_ret = _find_sequence(memory, maps, host_registers().syscall_ret)
        sigreturn = _find_sequence(memory, maps, host_registers().sigreturn)
    if syscall_ret is None or sigreturn is None:
        missing = "syscall; ret" if syscall_ret is None else "an rt_sigreturn sequence"
        raise ReliveError(
            f"process {pid} maps no code with {missing}, which relive runs its injected "
            "syscalls through so that the program survives relive being killed",
            hint="the program links no C library relive knows; link it with glibc or musl",
        )
    return Gadgets(syscall_ret[0], sigreturn[0], (syscall_ret[1], sigreturn[1]))


def _maps_key(mapping: procfs.Mapping) -> str:
    """How /proc/PID/maps starts the line of ``mapping`` (``%08lx-%08lx perms``)."""
    return f"{mapping.start:08x}-{mapping.end:08x} {mapping.perms} "


def _is_still_valid(pid: int, gadgets: Gadgets) -> bool:
    """Whether cached gadgets still hold their bytes in the same executable mappings.

    May run while threads are held, so it looks for the mappings' lines in the
    raw maps text (the same range and permissions) rather than parsing every line.
    """
    text = procfs.read_maps_text(pid)
    for key in gadgets.keys:
        if not (text.startswith(key) or f"\n{key}" in text):
            return False
    abi = host_registers()
    with ProcessMemory(pid) as memory:
        return (
            memory.read(gadgets.syscall_ret, len(abi.syscall_ret)) == abi.syscall_ret
            and memory.read(gadgets.sigreturn, len(abi.sigreturn)) == abi.sigreturn
        )


def get_gadgets(pid: int) -> Gadgets:
    """The self-restoring sequences of ``pid``; searched once and cached."""
    cached = _gadget_cache.get(pid)
    if cached is not None and _is_still_valid(pid, cached):
        return cached
    found = _find_gadgets(pid)
    _gadget_cache[pid] = found
    return found


def _pick_thread(stopped: StoppedProcess) -> int:
    tids = stopped.tids
    if not tids:
        raise ReliveError(f"no thread of process {stopped.pid} is stopped")
    return stopped.pid if stopped.pid in tids else tids[0]


def remote_syscall(stopped: StoppedProcess, nr: int, *args: int, tid: int | None = None) -> int:
    """Run syscall ``nr`` with ``args`` on one stopped thread; return its result.

    The thread's registers are restored exactly afterwards; if relive dies
    meanwhile, the thread restores itself (see the module doc).  An error result
    (-4095..-1) raises RemoteSyscallError naming the syscall and errno.
    """
    tid = _pick_thread(stopped) if tid is None else tid
    try:
        gadgets = get_gadgets(stopped.pid)
    except ProcessGone:
        raise ProcessGone(f"process {stopped.pid} exited during the reload") from None
    abi = host_registers()
    saved = stopped.get_regs(tid)
    with _restoring_frame(stopped, tid, saved, abi.get_sp(saved), gadgets) as frame:
        regs = abi.prepare_syscall(saved, nr, args)
        abi.set_pc(regs, gadgets.syscall_ret)
        abi.set_sp(regs, frame)  # the ``ret`` after the syscall goes to the frame's pretcode
        after = _run(stopped, tid, saved, regs, gadgets, to_exit=True, timeout=0.0)
    done = gadgets.syscall_ret + abi.syscall_insn_size
    if abi.get_pc(after) != done:
        raise ReliveError(
            f"{abi.syscall_name(nr)} in process {stopped.pid} did not run: the thread "
            f"stopped at {abi.get_pc(after):#x} instead of {done:#x}",
            hint="another tracer or a signal handler may have moved it; retry the reload",
        )
    return _check_result(stopped.pid, nr, abi.syscall_result(after))


def _run(
    stopped: StoppedProcess,
    tid: int,
    saved: RegisterBlock,
    regs: RegisterBlock,
    gadgets: Gadgets,
    *,
    to_exit: bool,
    timeout: float,
) -> RegisterBlock:
    """Run the prepared thread to the ``syscall; ret`` gadget's syscall; restore it."""
    try:
        stopped.set_regs(tid, regs)
        return stopped.run_injected(
            tid,
            gadgets.syscall_ret + host_registers().syscall_insn_size,
            to_exit=to_exit,
            cancel=not to_exit,
            timeout=timeout,
        )
    finally:
        if tid in stopped.tids:  # a thread that died has nothing to restore
            stopped.set_regs(tid, saved)


@contextmanager
def _restoring_frame(
    stopped: StoppedProcess, tid: int, saved: RegisterBlock, below: int, gadgets: Gadgets
) -> Iterator[int]:
    """Write the frame that restores ``saved`` below ``below``; yield its address.

    The stack bytes it covers (below the red zone: unused) are put back after.
    """
    abi = host_registers()
    xstate = stopped.get_xstate(tid)
    size = abi.frame_size(xstate)
    address = abi.frame_address(below, size)
    stack = procfs.find_mapping(procfs.read_maps(stopped.pid), address)
    if stack is None or stack.end < address + size or "w" not in stack.perms:
        raise ReliveError(
            f"thread {tid} of process {stopped.pid} has no room on its stack at "
            f"{address:#x} for relive's {size}-byte restore frame",
            hint="retry when the thread is not on a small alternate signal stack",
        )
    frame = bytearray(abi.build_frame(saved, stopped.get_sigmask(tid), xstate, address))
    frame[0:8] = gadgets.sigreturn.to_bytes(8, "little")
    with ProcessMemory(stopped.pid, poke_tid=tid) as memory:
        backup = memory.read(address - 8, size + 8)
        memory.write(address, bytes(frame))
        try:
            yield address
        finally:
            if tid in stopped.tids:
                memory.write(address - 8, backup)


def _check_result(pid: int, nr: int, result: int) -> int:
    if not host_registers().is_syscall_error(result):
        return result
    code = -result
    name = host_registers().syscall_name(nr)
    symbol = errno_codes.errorcode.get(code, str(code))
    raise RemoteSyscallError(
        f"{name} in process {pid} failed: {symbol} ({os.strerror(code)})",
        syscall=name,
        errno=code,
    )


def remote_mmap(stopped: StoppedProcess, length: int, prot: int, flags: int, addr: int = 0) -> int:
    """mmap(addr, length, prot, flags, -1, 0) in the target; the mapping's address."""
    return remote_syscall(stopped, host_registers().mmap, addr, length, prot, flags, -1, 0)


def try_remote_mmap_at(
    stopped: StoppedProcess,
    addr: int,
    length: int,
    prot: int,
    flags: int = MAP_PRIVATE | MAP_ANONYMOUS,
) -> int | None:
    """Map exactly at ``addr`` without replacing anything; None if the range is taken.

    Callers walk candidate addresses (e.g. gaps near the code to patch) until
    one succeeds.
    """
    try:
        got = remote_mmap(stopped, length, prot, flags | MAP_FIXED_NOREPLACE, addr)
    except RemoteSyscallError as exc:
        if exc.errno == errno_codes.EEXIST:
            return None
        raise
    if got != addr:  # a pre-4.17 kernel took the flag as a hint: give it back
        remote_munmap(stopped, got, length)
        return None
    return got


def remote_mprotect(stopped: StoppedProcess, addr: int, length: int, prot: int) -> None:
    """mprotect(addr, length, prot) in the target."""
    remote_syscall(stopped, host_registers().mprotect, addr, length, prot)


def remote_munmap(stopped: StoppedProcess, addr: int, length: int) -> None:
    """munmap(addr, length) in the target."""
    remote_syscall(stopped, host_registers().munmap, addr, length)


def remote_call(stopped: StoppedProcess, function: int, *args: int) -> int:
    """Call ``function(*args)`` on one held thread (the others stay held); its result.

    The thread's registers and the stack bytes below it are restored exactly
    afterwards; if relive dies meanwhile, the function returns into the restore
    frame (see the module doc).  The result must not be a small number (it is
    taken for a syscall number on the way): meant for IFUNC resolvers, which
    return an address, are short and take no locks.
    """
    tid = _pick_thread(stopped)
    gadgets = get_gadgets(stopped.pid)
    abi = host_registers()
    saved = stopped.get_regs(tid)
    below = abi.get_sp(saved) - CALL_STACK_GAP
    with _restoring_frame(stopped, tid, saved, below, gadgets) as frame:
        regs = abi.prepare_call(saved, function, args, frame - 8)
        with ProcessMemory(stopped.pid, poke_tid=tid) as memory:
            memory.write(frame - 8, gadgets.syscall_ret.to_bytes(8, "little"))
        at_entry = _run(stopped, tid, saved, regs, gadgets, to_exit=False, timeout=2.0)
    # At the syscall's entry stop the called function's result is the syscall number.
    return abi.call_result_at_syscall_entry(at_entry)

"""Run syscalls inside a stopped target: mmap, mprotect and munmap on its behalf.

The target's own ``syscall`` instruction is borrowed (libc always has one, a
static executable has its own), so no code is written into the target:

1. save the thread's registers;
2. point rip at a ``syscall`` instruction with the arguments in registers;
3. single-step it and read the result from rax;
4. restore the saved registers exactly.

This works on a thread blocked in a syscall (read, nanosleep, futex...): the
interrupted call's orig_rax and -ERESTART* rax come back in step 4, so the
kernel restarts it when the thread resumes and the program sees no EINTR.
"""

from __future__ import annotations

import errno as errno_codes
import os

from relive.arch.x86_64.registers import (
    CALL_RETURN_ADDRESS,
    MMAP,
    MPROTECT,
    MUNMAP,
    SYSCALL_INSN,
    SYSCALL_INSN_SIZE,
    call_result,
    get_pc,
    is_syscall_error,
    prepare_call,
    prepare_syscall,
    set_pc,
    syscall_name,
    syscall_result,
)
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
#: Stack bytes below the call's frame saved and restored around a remote call.
_CALL_STACK_BACKUP = 16 * 1024

#: pid -> address of a ``syscall`` instruction found in that process, and the
#: maps-line prefix of its mapping (see ``_is_still_valid``).
_syscall_insn_cache: dict[int, tuple[int, str]] = {}


class RemoteSyscallError(ReliveError):
    """A syscall run inside the target returned an error."""

    def __init__(self, message: str, *, syscall: str, errno: int, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.syscall = syscall
        self.errno = errno


def _iter_candidate_mappings(maps: list[procfs.Mapping]) -> list[procfs.Mapping]:
    """Executable file-backed mappings, libc first (it surely holds a ``syscall``)."""
    code = [m for m in maps if m.is_executable and m.is_file_backed]
    return sorted(code, key=lambda m: "libc" not in os.path.basename(m.path))


def _scan_mapping(memory: ProcessMemory, mapping: procfs.Mapping) -> int | None:
    # Chunks grow from one page: libc has a ``syscall`` within its first few pages,
    # and this runs while the threads are held.
    overlap = len(SYSCALL_INSN) - 1  # an instruction may straddle two chunks
    start, size = mapping.start, _FIRST_CHUNK
    while start < mapping.end:
        end = min(start + size + overlap, mapping.end)
        try:
            chunk = memory.read(start, end - start)
        except ReliveError:
            return None  # e.g. a mapping of a truncated file
        offset = chunk.find(SYSCALL_INSN)
        if offset >= 0:
            return start + offset
        start += size
        size = min(size * 4, _SCAN_CHUNK)
    return None


def find_syscall_insn(pid: int) -> int | None:
    """Address of a ``syscall`` instruction in the target's executable file mappings.

    Any occurrence of the two bytes works, even inside another instruction: the
    CPU decodes from wherever rip points.
    """
    found = _find_syscall_insn(pid)
    return None if found is None else found[0]


def _find_syscall_insn(pid: int) -> tuple[int, str] | None:
    """The address and the maps-line prefix of the mapping that holds it."""
    # Runs while the threads are held: parse only the lines of executable mappings.
    lines = procfs.read_maps_text(pid).splitlines()
    maps = [procfs.parse_maps_line(line) for line in lines if "xp " in line or "xs " in line]
    with ProcessMemory(pid) as memory:
        for mapping in _iter_candidate_mappings(maps):
            found = _scan_mapping(memory, mapping)
            if found is not None:
                return found, _maps_key(mapping)
    return None


def _maps_key(mapping: procfs.Mapping) -> str:
    """How /proc/PID/maps starts the line of ``mapping`` (``%08lx-%08lx perms``)."""
    return f"{mapping.start:08x}-{mapping.end:08x} {mapping.perms} "


def _is_still_valid(pid: int, addr: int, key: str) -> bool:
    """Whether a cached address still holds ``syscall`` in the same executable mapping.

    Runs while the threads are held, so it looks for the mapping's line in the raw
    maps text (the same range and permissions) rather than parsing every line.
    """
    text = procfs.read_maps_text(pid)
    if not (text.startswith(key) or f"\n{key}" in text):
        return False
    with ProcessMemory(pid) as memory:
        return memory.read(addr, len(SYSCALL_INSN)) == SYSCALL_INSN


def get_syscall_insn(pid: int) -> int:
    """Address of a ``syscall`` instruction in ``pid``; searched once and cached."""
    cached = _syscall_insn_cache.get(pid)
    if cached is not None and _is_still_valid(pid, *cached):
        return cached[0]
    found = _find_syscall_insn(pid)
    if found is None:
        raise ReliveError(
            f"no syscall instruction found in the executable mappings of process {pid}",
            hint="the program maps no code file relive can borrow the instruction from",
        )
    _syscall_insn_cache[pid] = found
    return found[0]


def _pick_thread(stopped: StoppedProcess) -> int:
    tids = stopped.tids
    if not tids:
        raise ReliveError(f"no thread of process {stopped.pid} is stopped")
    return stopped.pid if stopped.pid in tids else tids[0]


def remote_syscall(stopped: StoppedProcess, nr: int, *args: int, tid: int | None = None) -> int:
    """Run syscall ``nr`` with ``args`` on one stopped thread; return its result.

    The thread's registers are restored exactly afterwards.  An error result
    (-4095..-1) raises RemoteSyscallError naming the syscall and errno.
    """
    tid = _pick_thread(stopped) if tid is None else tid
    try:
        insn = get_syscall_insn(stopped.pid)
    except ProcessGone:
        raise ProcessGone(f"process {stopped.pid} exited during the reload") from None
    saved = stopped.get_regs(tid)
    regs = prepare_syscall(saved, nr, args)
    set_pc(regs, insn)
    try:
        stopped.set_regs(tid, regs)
        stopped.single_step(tid)
        after = stopped.get_regs(tid)
    finally:
        if tid in stopped.tids:  # a thread that died has nothing to restore
            stopped.set_regs(tid, saved)
    if get_pc(after) != insn + SYSCALL_INSN_SIZE:
        raise ReliveError(
            f"{syscall_name(nr)} in process {stopped.pid} did not run: the thread "
            f"stopped at {get_pc(after):#x} instead of {insn + SYSCALL_INSN_SIZE:#x}"
        )
    return _check_result(stopped.pid, nr, syscall_result(after))


def _check_result(pid: int, nr: int, result: int) -> int:
    if not is_syscall_error(result):
        return result
    code = -result
    name = syscall_name(nr)
    symbol = errno_codes.errorcode.get(code, str(code))
    raise RemoteSyscallError(
        f"{name} in process {pid} failed: {symbol} ({os.strerror(code)})",
        syscall=name,
        errno=code,
    )


def remote_mmap(stopped: StoppedProcess, length: int, prot: int, flags: int, addr: int = 0) -> int:
    """mmap(addr, length, prot, flags, -1, 0) in the target; the mapping's address."""
    return remote_syscall(stopped, MMAP, addr, length, prot, flags, -1, 0)


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
    remote_syscall(stopped, MPROTECT, addr, length, prot)


def remote_munmap(stopped: StoppedProcess, addr: int, length: int) -> None:
    """munmap(addr, length) in the target."""
    remote_syscall(stopped, MUNMAP, addr, length)


def remote_call(stopped: StoppedProcess, function: int, *args: int) -> int:
    """Call ``function(*args)`` on one held thread (the others stay held); its result.

    The thread's registers and every stack byte the call may touch are
    restored exactly afterwards.  The call returns to an address that faults,
    so nothing is written into the program's code.  Meant for short functions
    that take no locks (IFUNC resolvers).
    """
    tid = _pick_thread(stopped)
    saved = stopped.get_regs(tid)
    regs, slot = prepare_call(saved, function, args)
    stack = procfs.find_mapping(procfs.read_maps(stopped.pid), slot)
    if stack is None:
        raise ReliveError(f"thread {tid} of process {stopped.pid} has no stack below {slot:#x}")
    low = max(stack.start, slot - _CALL_STACK_BACKUP)
    with ProcessMemory(stopped.pid, poke_tid=tid) as memory:
        backup = memory.read(low, slot + 8 - low)
        try:
            memory.write(slot, CALL_RETURN_ADDRESS.to_bytes(8, "little"))
            stopped.set_regs(tid, regs)
            stopped.run_until_fault_at(tid, CALL_RETURN_ADDRESS)
            result = call_result(stopped.get_regs(tid))
        finally:
            if tid in stopped.tids:
                stopped.set_regs(tid, saved)
                memory.write(low, backup)
    return result

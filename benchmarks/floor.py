"""The minimal ptrace floor: what any ptrace-based patcher has to pay, and nothing more.

    python benchmarks/floor.py PID ADDR=HEX [ADDR=HEX | ADDR]...

Seizes and interrupts every thread of PID, writes each HEX at ADDR through
/proc/PID/mem (a bare ADDR re-writes the 5 bytes already there, a write that costs
the same as a jump), detaches, and prints one JSON line: when the script started
(``time.monotonic()``, after its imports) and how long the threads were stopped.

It deliberately does none of relive's work (no rescan for new threads, no signal
bookkeeping, no check of thread positions): it is the floor relive is compared with.
Imports nothing of relive.
"""

import ctypes
import json
import os
import sys
import time

STARTED = time.monotonic()

PTRACE_DETACH = 17
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
WALL = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_ptrace.restype = ctypes.c_long


def _call(request: int, tid: int) -> None:
    if _ptrace(request, tid, None, None) == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")


def main(argv: list[str]) -> int:
    """Patch, print the JSON line, return the exit code."""
    pid = int(argv[0])
    writes: list[tuple[int, bytes | None]] = []
    for spec in argv[1:]:
        addr, _, data = spec.partition("=")
        writes.append((int(addr, 0), bytes.fromhex(data) if data else None))
    fd = os.open(f"/proc/{pid}/mem", os.O_RDWR)
    stopped_from = time.monotonic()
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    for tid in tids:
        _call(PTRACE_SEIZE, tid)
        _call(PTRACE_INTERRUPT, tid)
    for tid in tids:
        os.waitpid(tid, WALL)
    for address, new in writes:
        os.pwrite(fd, os.pread(fd, 5, address) if new is None else new, address)
    for tid in tids:
        _call(PTRACE_DETACH, tid)
    stopped_until = time.monotonic()
    os.close(fd)
    print(json.dumps({"started": STARTED, "stopped_s": stopped_until - stopped_from}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

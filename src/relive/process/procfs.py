"""Reading /proc: mappings, threads, identity and tracer of a process.

Nothing here attaches to or writes into a process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from relive.errors import PermissionDenied, ProcessGone, ReliveError, UsageError

PROC = Path("/proc")

#: Lowest address mmap hands out by default (vm.mmap_min_addr on most distributions).
MMAP_MIN_ADDR = 0x10000
#: End of the user address space with 4-level paging (TASK_SIZE_MAX on x86-64:
#: 2**47 minus one guard page).  The kernel never maps user memory at or above it
#: unless a program explicitly asks for 5-level addresses.
USER_SPACE_END = 0x7FFFFFFFF000

_GONE_HINT = "check the pid (e.g. with `pgrep NAME`); the program may have exited"


class Mapping(NamedTuple):
    """One line of /proc/PID/maps (a named tuple: a process has hundreds of them)."""

    start: int
    end: int
    perms: str
    offset: int
    dev: str
    inode: int
    path: str

    @property
    def size(self) -> int:
        """Length of the mapping in bytes."""
        return self.end - self.start

    @property
    def is_executable(self) -> bool:
        """Whether the mapping's pages may be executed."""
        return "x" in self.perms

    @property
    def is_file_backed(self) -> bool:
        """Whether a file backs the mapping (pseudo paths like [stack] do not count)."""
        return self.inode != 0 and self.path.startswith("/")

    def contains(self, addr: int) -> bool:
        """Whether ``addr`` lies inside the mapping."""
        return self.start <= addr < self.end


def _gone(pid: int) -> ProcessGone:
    return ProcessGone(f"no such process: {pid}", hint=_GONE_HINT)


def permission_denied(action: str) -> PermissionDenied:
    """The error for what another user's process refuses to relive: ``cannot ACTION``."""
    return PermissionDenied(
        f"cannot {action}: permission denied", hint="run relive as the process's user or as root"
    )


def _read_file(path: str) -> str:
    """A /proc file's text, read with plain system calls (pathlib and text I/O cost
    more than the read itself for these small files)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def _read_text(pid: int, name: str) -> str:
    """Read /proc/PID/NAME, turning "no such file" into ProcessGone."""
    try:
        return _read_file(f"/proc/{pid}/{name}")
    except (FileNotFoundError, ProcessLookupError):
        raise _gone(pid) from None
    except PermissionError as exc:
        raise permission_denied(f"read /proc/{pid}/{name}") from exc


def parse_maps_line(line: str) -> Mapping:
    """Parse one /proc/PID/maps line (the path may contain spaces or be empty)."""
    fields = line.rstrip("\n").split(maxsplit=5)
    start, _, end = fields[0].partition("-")
    path = fields[5] if len(fields) > 5 else ""
    return Mapping(
        int(start, 16), int(end, 16), fields[1], int(fields[2], 16), fields[3], int(fields[4]), path
    )


def read_maps(pid: int) -> list[Mapping]:
    """All mappings of a process, in address order."""
    return [parse_maps_line(line) for line in read_maps_text(pid).splitlines() if line]


def read_maps_text(pid: int) -> str:
    """/proc/PID/maps as the kernel writes it."""
    return _read_text(pid, "maps")


def find_mapping(maps: Iterable[Mapping], addr: int) -> Mapping | None:
    """The mapping containing ``addr``, or None."""
    return next((m for m in maps if m.contains(addr)), None)


def iter_thread_ids(pid: int) -> Iterator[int]:
    """The thread ids of a process (from /proc/PID/task), sorted; raises ProcessGone."""
    try:
        names = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        raise _gone(pid) from None
    yield from sorted(int(n) for n in names if n.isdigit())


def _stat_fields(text: str) -> list[str]:
    # comm (field 2) may contain spaces and ')', so split after the *last* ')':
    # the result starts at field 3 (state).
    return text.rpartition(")")[2].split()


def get_start_time(pid: int) -> int:
    """Start time of the process in clock ticks since boot (field 22 of /proc/PID/stat).

    Together with the pid it identifies a process across pid reuse.
    """
    return int(_stat_fields(_read_text(pid, "stat"))[22 - 3])


def find_thread_state(pid: int, tid: int) -> str | None:
    """The one-letter state of a thread (R, S, D, T, t, Z, X...), or None if it is gone."""
    try:
        text = _read_file(f"/proc/{pid}/task/{tid}/stat")
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = _stat_fields(text)
    return fields[0] if fields else None


def get_exe_path(pid: int) -> str:
    """The executable's path (readlink /proc/PID/exe); may end in " (deleted)"."""
    try:
        return os.readlink(PROC / str(pid) / "exe")
    except (FileNotFoundError, ProcessLookupError):
        raise _gone(pid) from None
    except PermissionError as exc:
        raise permission_denied(f"read the executable of process {pid}") from exc


def read_status(pid: int) -> dict[str, str]:
    """/proc/PID/status as a dict of field name to (stripped) value."""
    fields: dict[str, str] = {}
    for line in _read_text(pid, "status").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key] = value.strip()
    return fields


def find_anonymous_resident(pid: int) -> int | None:
    """Bytes of anonymous memory ``pid`` has resident (``RssAnon``), None if unknown."""
    try:
        value = read_status(pid).get("RssAnon", "")
    except ReliveError:
        return None
    number, _, unit = value.partition(" ")
    if not number.isdigit() or unit != "kB":
        return None
    return int(number) * 1024


def find_tracer_pid(pid: int) -> int | None:
    """The (thread) id of the process tracing ``pid``, or None if it is not traced."""
    tracer = int(read_status(pid).get("TracerPid", "0"))
    return tracer or None


def get_tgid(pid: int) -> int:
    """The process a thread id belongs to (itself for a process id).

    /proc/TID works for any thread, so ``-p TID`` would otherwise act on the
    process under another name: its journal, lock and status must be the process's.
    """
    return int(read_status(pid).get("Tgid", pid))


def get_uids(pid: int) -> tuple[int, int, int, int]:
    """Real, effective, saved and filesystem uid of a process."""
    real, effective, saved, fs = (int(x) for x in read_status(pid)["Uid"].split())
    return real, effective, saved, fs


def get_process_name(pid: int) -> str:
    """The process's command name (/proc/PID/comm, at most 15 characters)."""
    return _read_text(pid, "comm").rstrip("\n")


def is_alive(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie counts as exited)."""
    try:
        fields = _stat_fields(_read_file(f"/proc/{pid}/stat"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return bool(fields) and fields[0] not in ("Z", "X")


def check_alive(pid: int) -> None:
    """Raise ProcessGone unless the process exists and has not exited, and
    UsageError for a kernel thread (it has no user code to reload)."""
    if not is_alive(pid):
        raise _gone(pid)
    if is_kernel_thread(pid):
        raise UsageError(
            f"process {pid} ({get_process_name(pid)}) is a kernel thread: it runs no user "
            "code to reload",
            hint="pass the pid of a user program (e.g. from `pgrep NAME`)",
        )


#: ``PF_KTHREAD`` in the flags of /proc/PID/stat (field 9).
_PF_KTHREAD = 0x00200000


def is_kernel_thread(pid: int) -> bool:
    """Whether ``pid`` is a kernel thread (kthreadd and its children)."""
    try:
        fields = _stat_fields(_read_file(f"/proc/{pid}/stat"))
    except (FileNotFoundError, ProcessLookupError):
        return False
    return len(fields) > 6 and bool(int(fields[9 - 3]) & _PF_KTHREAD)


def _argv0_name(pid: str) -> str:
    try:
        argv0 = (PROC / pid / "cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return ""
    return os.path.basename(argv0.decode(errors="replace"))


def _comm(pid: str) -> str:
    try:
        return (PROC / pid / "comm").read_text(errors="replace").rstrip("\n")
    except OSError:
        return ""


def iter_pids_by_name(name: str) -> Iterator[int]:
    """Pids whose comm or basename of argv[0] equals ``name``, in ascending order.

    comm is truncated by the kernel to 15 characters, so it is compared with
    ``name[:15]``; argv[0] catches longer names.
    """
    candidates = sorted((e for e in os.listdir(PROC) if e.isdigit()), key=int)
    for entry in candidates:
        if _comm(entry) == name[:15] or _argv0_name(entry) == name:
            yield int(entry)


def find_free_gaps(
    maps: Iterable[Mapping], low: int = MMAP_MIN_ADDR, high: int = USER_SPACE_END
) -> list[tuple[int, int]]:
    """Unmapped address ranges ``(start, end)`` between ``low`` and ``high``, in order."""
    gaps: list[tuple[int, int]] = []
    cursor = low
    for mapping in sorted(maps, key=lambda m: m.start):
        if mapping.start >= high:
            break
        if mapping.start > cursor:
            gaps.append((cursor, mapping.start))
        cursor = max(cursor, mapping.end)
    if cursor < high:
        gaps.append((cursor, high))
    return gaps

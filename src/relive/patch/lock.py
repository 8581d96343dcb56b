"""One relive at a time per process: an advisory lock in the state directory.

Two relives patching one process at once would each read the journal, patch,
and save their own version: the second save loses the first one's patches,
which then stay in memory unknown to ``status`` and ``undo``.  Every command
that reads the journal to change the process holds ``flock`` on
``PID-START.lock`` for the whole transaction; a second one waits a little,
then names the holder.  The kernel drops the lock when its holder dies, even
by SIGKILL, so a killed relive never leaves a process locked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator

from relive.errors import ReliveError
from relive.process.procfs import get_start_time
from relive.statedir import open_state_dir, state_file_path

#: How long a second relive waits for the first one to finish.
WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.02


class ProcessLocked(ReliveError):
    """Another relive is working on the same process."""


@contextlib.contextmanager
def process_lock(pid: int, wait: float | None = None) -> Iterator[None]:
    """Hold the lock of process ``pid`` (waiting up to ``wait`` seconds for it)."""
    name = f"{pid}-{get_start_time(pid)}.lock"
    fd = _open_lock_file(name)
    try:
        _acquire(fd, pid, name, WAIT_SECONDS if wait is None else wait)
        _write_holder(fd)
        yield
    finally:
        os.close(fd)  # releases the flock


def _open_lock_file(name: str) -> int:
    _, dir_fd = open_state_dir()
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, 0o600, dir_fd=dir_fd)
    except OSError as e:
        path = state_file_path(name)
        raise ReliveError(
            f"cannot open the lock file {path}: {e.strerror}",
            hint=f"remove {path} if it is not a regular file, or set RELIVE_STATE_DIR",
        ) from e
    finally:
        os.close(dir_fd)


def _acquire(fd: int, pid: int, name: str, wait: float) -> None:
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ReliveError(
                    f"cannot lock {state_file_path(name)}: {e.strerror}",
                    hint="set RELIVE_STATE_DIR to a folder on a local file system",
                ) from e
        if time.monotonic() >= deadline:
            raise ProcessLocked(
                f"another relive is working on process {pid} ({_describe_holder(fd)}); "
                f"waited {wait:g} s",
                hint="wait for it to finish (or stop it), then retry",
            )
        time.sleep(_POLL_SECONDS)


def _write_holder(fd: int) -> None:
    """Say who holds the lock, for the message of the relive that waits.

    Written over the last holder's line, then cut to its length: never cut to
    nothing first, which on ext4 makes the close flush the file (``auto_da_alloc``:
    1.3 ms a reload, at times 10).  Only the first line counts, so a relive killed
    in between leaves a line that reads as its own."""
    line = f"{os.getpid()} {_command_of(os.getpid())}\n".encode()
    with contextlib.suppress(OSError):
        os.pwrite(fd, line, 0)
        os.ftruncate(fd, len(line))


def _describe_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").partition("\n")[0].strip()
    except OSError:
        text = ""
    holder, _, command = text.partition(" ")
    if not holder.isdigit():
        return "holder unknown"
    return f"pid {holder}: {command}" if command else f"pid {holder}"


def _command_of(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return ""
    words = raw.replace(b"\0", b" ").decode(errors="replace").split()
    return " ".join(words)[:200]  # one line, whatever the arguments hold

"""relive's private state directory: journals, locks and scratch folders.

relive often runs as root on other users' processes, and its journals say
which bytes ``undo`` writes into a process.  A directory another user created,
can write, or swapped for a symlink would let that user read the process's
addresses, forge what ``undo`` writes, or have root overwrite a file through a
planted link.  So the directory is used only when it is a real directory (not
a symlink), owned by relive's user and closed to group and others; it is
opened once and every file in it is reached through that descriptor, created
with ``O_EXCL | O_NOFOLLOW`` and moved into place by rename (an exchange with
the file it replaces, where the file system can).

Where it is: ``$RELIVE_STATE_DIR`` if set, else ``$XDG_RUNTIME_DIR/relive``
when that runtime directory is private to the user, else ``/tmp/relive-UID``.

The command's client (``relive.cli.client``) opens this directory too, to find the
command server's socket, and must start in a few milliseconds: so this module
imports only ``os``, ``stat``, ``sys`` and ``errno`` up front (``pathlib``,
``tempfile``, ``shutil``, ``contextlib`` and ``functools`` would cost it more than
the rest of its work).
"""

from __future__ import annotations

import errno
import os
import stat
import sys

from relive.errors import ReliveError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator
    from contextlib import AbstractContextManager
    from pathlib import Path

__all__ = [
    "StateDirError",
    "checked_state_dir",
    "find_state_dir",
    "list_state_files",
    "open_state_dir",
    "open_state_dir_fd",
    "read_state_file",
    "remove_state_files",
    "replace_file",
    "scratch_dir",
    "state_file_path",
    "write_state_file",
]

#: Scratch folders are named ``scratch-PID-XXXX`` after the relive that made them.
SCRATCH_PREFIX = "scratch-"


class StateDirError(ReliveError):
    """The state directory is unsafe to use (someone else could read or forge it)."""


def find_state_dir() -> Path:
    """The state directory's path (not yet created or checked)."""
    from pathlib import Path

    return Path(_state_dir_name())


def _state_dir_name() -> str:
    override = os.environ.get("RELIVE_STATE_DIR")
    if override:
        return override
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _is_private_dir(runtime):
        return os.path.join(runtime, "relive")
    return os.path.join(_temp_dir(), f"relive-{os.geteuid()}")


def _temp_dir() -> str:
    """``tempfile.gettempdir()``, without importing ``tempfile`` (and ``shutil``,
    ``random``, ``re`` with it) where its answer is plain: no TMPDIR, TEMP or TMP
    and a /tmp this user may create files in.  (It would differ only when /tmp
    passes that check but a file cannot be created there, e.g. a full disk:
    relive cannot write its state there then either.)"""
    plain = "tempfile" not in sys.modules and not any(
        os.environ.get(name) for name in ("TMPDIR", "TEMP", "TMP")
    )
    if plain and os.access("/tmp", os.W_OK | os.X_OK, effective_ids=True):
        return "/tmp"
    import tempfile

    return tempfile.gettempdir()


def _is_private_dir(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def open_state_dir() -> tuple[Path, int]:
    """Create (0700) or open the state directory and check it is ours alone.

    Returns the path and a descriptor of the very directory that was checked;
    the caller closes it.  Raises StateDirError naming what is wrong and the fix.
    """
    from pathlib import Path

    path, fd = open_state_dir_fd()
    return Path(path), fd


def open_state_dir_fd() -> tuple[str, int]:
    """``open_state_dir`` with the path as a string (no ``pathlib``: the client)."""
    path = _state_dir_name()
    try:  # noqa: SIM105 (no contextlib here: see the module's docstring)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise _unsafe(path, _why_not_opened(path, e)) from e
    try:
        _check_private(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    return path, fd


def _why_not_opened(path: str, error: OSError) -> str:
    try:
        st = os.lstat(path)
    except OSError:
        return f"cannot create it: {error.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return "it is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    return f"cannot open it: {error.strerror}"


def _check_private(path: str, st: os.stat_result) -> None:
    me = os.geteuid()
    if st.st_uid != me:
        raise _unsafe(path, f"it belongs to uid {st.st_uid}, not to uid {me}")
    if st.st_mode & 0o077:
        raise StateDirError(
            f"state directory {path} is open to other users (mode {st.st_mode & 0o777:o}): "
            "they could read or forge relive's journals",
            hint=f"`chmod 700 {path}`, or set RELIVE_STATE_DIR to a private folder",
        )


def _unsafe(path: str, why: str) -> StateDirError:
    return StateDirError(
        f"state directory {path} is unsafe: {why}; another user could read or forge "
        "relive's journals",
        hint=f"remove {path} (check who made it), or set RELIVE_STATE_DIR to a folder "
        "only you can write",
    )


def state_file_path(name: str) -> Path:
    """Where the state file ``name`` is (for messages)."""
    return find_state_dir() / name


def read_state_file(name: str) -> bytes | None:
    """The contents of state file ``name``, or None if there is none.

    A symlink or anything but a regular file there raises StateDirError: relive
    never puts one there.
    """
    _, dir_fd = open_state_dir()
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _not_regular(name, e.strerror or "cannot open") from e
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise _not_regular(name, "not a regular file")
            if st.st_uid != os.geteuid():
                raise _not_regular(name, f"it belongs to uid {st.st_uid}")
            with os.fdopen(fd, "rb", closefd=False) as f:
                return f.read()
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)


def checked_state_dir() -> Path:
    """The state directory's path, once it is checked ours alone (StateDirError if not):
    for walking folders relive made in it."""
    path, dir_fd = open_state_dir()
    os.close(dir_fd)
    return path


def list_state_files() -> list[str]:
    """The names in the state directory, once it is checked (StateDirError if unsafe)."""
    _, dir_fd = open_state_dir()
    try:
        return os.listdir(dir_fd)
    finally:
        os.close(dir_fd)


def remove_state_files(names: Iterable[str]) -> None:
    """Remove state files ``names`` from the checked state directory (a link
    there is removed itself, never what it points to); one gone already is fine."""
    _, dir_fd = open_state_dir()
    try:
        for name in names:
            _unlink_quietly(name, dir_fd)
    finally:
        os.close(dir_fd)


def _not_regular(name: str, why: str) -> StateDirError:
    path = state_file_path(name)
    return StateDirError(
        f"{path} is not a file relive wrote ({why})",
        hint=f"remove {path}; relive re-creates it",
    )


def write_state_file(name: str, data: bytes) -> None:
    """Replace state file ``name`` with ``data`` atomically (write, fsync-free exchange).

    The data goes to a new file created with ``O_EXCL | O_NOFOLLOW`` (so a link
    planted at its name is never followed) and is renamed over ``name``, so a
    killed relive leaves the old file or the new one, never half of one.
    """
    _, dir_fd = open_state_dir()
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        fd = _create_exclusive(tmp, dir_fd)
        try:
            with os.fdopen(fd, "wb", closefd=False) as f:
                f.write(data)
        finally:
            os.close(fd)
        _move_into_place(tmp, name, dir_fd)
    except OSError as e:  # a full disk, a file size limit, a read-only file system
        _unlink_quietly(tmp, dir_fd)
        raise StateDirError(
            f"cannot write {state_file_path(name)}: {e.strerror or e}",
            hint="free some space in the state directory, or set RELIVE_STATE_DIR",
        ) from e
    except BaseException:
        _unlink_quietly(tmp, dir_fd)
        raise
    finally:
        os.close(dir_fd)


def _unlink_quietly(name: str, dir_fd: int | None = None) -> None:
    try:  # noqa: SIM105 (no contextlib here: see the module's docstring)
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def replace_file(tmp: Path, path: Path) -> None:
    """Make ``tmp`` the file at ``path`` (same folder) atomically, as state files are
    (see :func:`_move_into_place`); OSError if it cannot."""
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _move_into_place(tmp.name, path.name, dir_fd)
    finally:
        os.close(dir_fd)


def _move_into_place(tmp: str, name: str, dir_fd: int) -> None:
    """Make ``tmp`` the file called ``name``, atomically.

    A file already there is swapped with ``tmp`` (``renameat2(RENAME_EXCHANGE)``)
    and the old content, now at ``tmp``, removed: on ext4 a rename *over* a
    file flushes the new file's data first (``auto_da_alloc``), 3-4 ms per save,
    and a reload saves its journal three times, twice before its new code runs.
    An exchange is as atomic (a reader, or a relive killed at any point, sees the
    old file or the new one) and flushes nothing; it was never needed, since a
    journal describes a running process, which no crash of the machine outlives.
    Where the exchange is not supported (or nothing is there yet), a plain rename.
    """
    try:
        existing = os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        existing = None
    if existing is not None and stat.S_ISREG(existing.st_mode) and _exchange(tmp, name, dir_fd):
        _unlink_quietly(tmp, dir_fd)  # a leftover is replaced or swept later
        return
    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


#: ``renameat2``'s flag: swap the two names.
_RENAME_EXCHANGE = 2
#: errno values that say the exchange is not available here (old kernel or libc,
#: a file system without it) or not now (the file went meanwhile): a plain rename.
_NO_EXCHANGE = {errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOENT}


def _exchange(first: str, second: str, dir_fd: int) -> bool:
    """Swap two names in ``dir_fd``; False when the system cannot (then nothing changed)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    code = renameat2(dir_fd, os.fsencode(first), dir_fd, os.fsencode(second), _RENAME_EXCHANGE)
    if code == 0:
        return True
    if code in _NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), second)


_RENAMEAT2: list[Callable[[int, bytes, int, bytes, int], int] | None] = []


def _renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    """libc's ``renameat2`` (glibc 2.28 and later) returning 0 or the errno; None
    without it.  (ctypes is imported only when a state file is first replaced;
    the answer is kept in ``_RENAMEAT2``.)"""
    if not _RENAMEAT2:
        _RENAMEAT2.append(_load_renameat2())
    return _RENAMEAT2[0]


def _load_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    import ctypes

    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is None:
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
    function.argtypes += [ctypes.c_uint]
    function.restype = ctypes.c_int

    def call(old_fd: int, old: bytes, new_fd: int, new: bytes, flags: int) -> int:
        return 0 if function(old_fd, old, new_fd, new, flags) == 0 else ctypes.get_errno()

    return call


def _create_exclusive(name: str, dir_fd: int) -> int:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, 0o600, dir_fd=dir_fd)
    except FileExistsError:
        # Left by a killed relive whose pid came round again: ours to replace.
        # (unlink removes a symlink itself, never what it points to.)
        os.unlink(name, dir_fd=dir_fd)
        return os.open(name, flags, 0o600, dir_fd=dir_fd)
    except OSError as e:
        raise StateDirError(
            f"cannot write {state_file_path(name)}: {e.strerror}",
            hint="free some space in the state directory, or set RELIVE_STATE_DIR",
        ) from e


def scratch_dir() -> AbstractContextManager[Path]:
    """A private scratch folder in the state directory, removed afterwards.

    Scratch folders and half-written state files that relives killed before they
    could clean up left behind (their pid no longer runs) are removed first.
    """
    import contextlib

    return contextlib.contextmanager(_scratch_dir)()


def _scratch_dir() -> Iterator[Path]:
    import shutil
    import tempfile
    import time
    from pathlib import Path

    path, dir_fd = open_state_dir()
    os.close(dir_fd)
    now = time.monotonic()
    if now - _scratch_swept_at.get(path, -SCRATCH_SWEEP_EVERY) >= SCRATCH_SWEEP_EVERY:
        _scratch_swept_at[path] = now
        _remove_stale_scratch(path)
    scratch = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=path))
    try:
        yield scratch
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


#: How often one relive looks for what killed relives left in the state directory,
#: in seconds: at its first reload, then at most this often (each look lists the
#: folder: a third of a millisecond of every reload of a long ``watch`` otherwise).
SCRATCH_SWEEP_EVERY = 60.0
#: When this relive last looked, per state directory (``time.monotonic()``).
_scratch_swept_at: dict[Path, float] = {}


def _remove_stale_scratch(state: Path) -> None:
    import shutil

    try:
        names = os.listdir(state)
    except OSError:
        return
    for name in names:
        if name.startswith(SCRATCH_PREFIX):
            owner = name[len(SCRATCH_PREFIX) :].partition("-")[0]
            if owner.isdigit() and not _pid_exists(int(owner)):
                shutil.rmtree(state / name, ignore_errors=True)
        elif name.startswith(".") and name.endswith(".tmp"):
            # ".NAME.PID.tmp": a state file a killed relive was writing.
            owner = name.removesuffix(".tmp").rpartition(".")[2]
            if owner.isdigit() and not _pid_exists(int(owner)):
                _unlink_quietly(str(state / name))


def _pid_exists(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")

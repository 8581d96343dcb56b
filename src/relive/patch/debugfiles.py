"""Files that let debuggers and profilers see the new code: debug objects and perf maps.

For every reload relive writes a *debug object* (an ELF file with the new
block's code, symbols, ``.eh_frame`` and DWARF at their runtime addresses, see
:mod:`relive.link.debuginfo`) into a folder of the state directory named after
the process like its journal (``debug/PID-START/NNNN-SOURCE.debug``), listed in
that folder's ``manifest.json`` with whether its code is still live.
``relive gdb`` loads the live ones into gdb; for a core dump it loads those
that were live when the process last changed.  Each new function is also
appended to ``/tmp/perf-PID.map``, the symbol map perf reads for JIT code.

Debug objects are kept after the process exits (a core may still need them)
until ``relive clean``, or for :data:`KEEP_SECONDS` after their last change.
The state directory is private to relive's user (``relive.statedir`` checks
it), so the folders relive creates in it cannot be swapped by anyone else;
files are still created ``O_EXCL | O_NOFOLLOW`` and renamed into place.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import shutil
import stat
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relive.errors import ReliveError
from relive.link import LinkedImage
from relive.link.debuginfo import (
    build_debug_object,
    debug_relocation_count,
    iter_function_spans,
)
from relive.patch.journal import Journal
from relive.process.procfs import get_start_time
from relive.statedir import StateDirError, checked_state_dir, replace_file

#: How long debug objects of a process that has exited are kept: one week.
KEEP_SECONDS = 7 * 24 * 3600
#: How often :func:`prune_expired` looks for what exited processes left, in seconds.
PRUNE_EVERY = 3600

_DEBUG = "debug"
_MANIFEST = "manifest.json"
_PRUNE_STAMP = ".pruned"


@dataclass(frozen=True)
class DebugObject:
    """One reload's debug object, as the manifest lists it."""

    path: Path
    source: str
    base: int
    size: int
    live: bool


#: Above this many relocations in an object's DWARF, its debug object is written by a
#: background process: relocating the DWARF of a 10,000-function unit takes seconds,
#: which the reload need not wait for (``relive gdb`` skips a file not there yet).
BACKGROUND_RELOCATIONS = 20_000


def write_debug_objects(
    journal: Journal, blocks: Sequence[tuple[str, LinkedImage]], registered: Collection[int] = ()
) -> list[Path]:
    """Write the debug object of each reloaded ``(source, block)``; update the manifest once.

    ``registered``: the unwind tables that were registered with the program's
    unwinder (undo deregisters them once their code no longer runs).  Objects
    with much DWARF are written in the background (:data:`BACKGROUND_RELOCATIONS`).
    """
    folder = _process_folder(journal.pid, journal.start_time, create=True)
    entries = _read_manifest(folder)
    paths = []
    later: list[tuple[Path, str, LinkedImage]] = []
    for source, image in blocks:
        name = f"{len(entries) + 1:04d}-{Path(source).stem}.debug"
        if debug_relocation_count(image) > BACKGROUND_RELOCATIONS:
            later.append((folder / name, source, image))
        else:
            _write(folder / name, build_debug_object(image, source))
        table = image.eh_frame_address
        entries.append(
            {
                "file": name,
                "source": source,
                "base": image.code_range[0],
                "size": image.code_range[1],
                "data_base": image.data_range[0],
                "data_size": image.data_range[1],
                "live": True,
                "unwind_table": table if table in registered else None,
            }
        )
        paths.append(folder / name)
    # Superseded code keeps its table registered (a thread may still run it) until
    # undo retires it or the code is reclaimed: the manifest must keep knowing it.
    _mark_live(journal, entries, retire=False)
    _write_manifest(folder, entries)
    if later:
        _in_background(lambda: _write_all(later))
    return paths


def _write_all(objects: Sequence[tuple[Path, str, LinkedImage]]) -> None:
    for path, source, image in objects:
        _write(path, build_debug_object(image, source))


def _in_background(work: Callable[[], object]) -> None:
    """Run ``work`` in a detached grandchild process; return at once.

    The double fork leaves no zombie behind a long-lived relive (``watch``), and
    the grandchild closes every inherited descriptor (the process lock among them)
    before it starts, so it holds nothing a later reload waits for.  Its stdin,
    stdout and stderr become /dev/null: it has nothing to say, a reader of
    relive's output sees its end when relive ends, and nothing the grandchild
    might write (a warning, text a stream inherited unwritten) can land inside
    relive's lines.  The streams are flushed before the fork, so no child holds a
    copy of unwritten output to write it a second time; the children leave
    through ``os._exit``, which writes nothing.
    """
    _flush_stdio()
    child = os.fork()
    if child:
        os.waitpid(child, 0)
        return
    try:
        if os.fork() == 0:
            _stdio_to_devnull()
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            with contextlib.suppress(ReliveError, OSError):
                work()
    finally:
        os._exit(0)


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError, AttributeError):  # closed, or None
            stream.flush()


def _stdio_to_devnull() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def refresh_liveness(journal: Journal) -> list[int]:
    """Mark each debug object live while a patch or a definition still uses its block.

    Returns the registered unwind tables of blocks that are no longer live (the
    caller deregisters them); the manifest forgets them.
    """
    folder = _process_folder(journal.pid, journal.start_time, create=False)
    entries = _read_manifest(folder)
    if not entries:
        return []
    retired = _mark_live(journal, entries)
    _write_manifest(folder, entries)
    return retired


def _mark_live(journal: Journal, entries: list[dict[str, Any]], retire: bool = True) -> list[int]:
    """Set each entry's liveness; with ``retire``, the unwind tables of entries that are
    no longer live (forgotten here: the caller deregisters them)."""
    used = sorted(
        [p.target for p in journal.patches.values()]
        + [d.address for r in journal.sources.values() for d in r.definitions.values()]
    )
    retired = []
    for entry in entries:
        spans = [(entry["base"], entry["size"])]
        spans.append((entry.get("data_base", 0), entry.get("data_size", 0)))
        entry["live"] = not entry.get("reclaimed", False) and any(
            _holds_any(used, start, start + size) for start, size in spans if size
        )
        if retire and not entry["live"] and entry.get("unwind_table") is not None:
            retired.append(entry["unwind_table"])
            entry["unwind_table"] = None
    return retired


def reclaim_debug_objects(
    journal: Journal,
    ranges: Collection[tuple[int, int]],
    may_deregister: Callable[[], bool] = lambda: True,
) -> list[int] | None:
    """Mark the debug objects of code in ``ranges`` (``(address, size)``) as no longer
    live, for good (later code may reuse the addresses), and forget their unwind
    tables; return those tables, which the caller then deregisters.

    When there are tables and ``may_deregister()`` says they cannot be, nothing is
    changed and None is returned (the code must then be kept).
    """
    folder = _process_folder(journal.pid, journal.start_time, create=False)
    entries = _read_manifest(folder)
    chosen = [entry for entry in entries if _reclaims(entry, ranges)]
    tables = [e["unwind_table"] for e in chosen if e.get("unwind_table") is not None]
    if tables and not may_deregister():
        return None
    for entry in chosen:
        entry["reclaimed"], entry["live"], entry["unwind_table"] = True, False, None
    if chosen:
        _write_manifest(folder, entries)
    return tables


def _reclaims(entry: dict[str, Any], ranges: Collection[tuple[int, int]]) -> bool:
    return (entry["base"], entry["size"]) in ranges and not entry.get("reclaimed", False)


def prune_perf_map(pid: int, ranges: Collection[tuple[int, int]]) -> None:
    """Take the functions in reclaimed code (``(address, size)`` in ``ranges``) out of
    ``/tmp/perf-PID.map``: later code may reuse their addresses.  Opened with the
    checks of :func:`append_perf_map`; left alone if those fail."""
    path = Path(f"/tmp/perf-{pid}.map")
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        info = os.fstat(fd)
        owners = {os.geteuid(), _owner_of(pid)}
        if not stat.S_ISREG(info.st_mode) or info.st_uid not in owners or info.st_nlink != 1:
            return
        with os.fdopen(os.dup(fd), "rb") as f:
            lines = f.read().decode(errors="replace").splitlines(keepends=True)
        kept = [line for line in lines if not _in_ranges(line, ranges)]
        if len(kept) != len(lines):
            data = "".join(kept).encode()
            os.pwrite(fd, data, 0)  # then cut: never to nothing (ext4 flushes it then)
            os.ftruncate(fd, len(data))
    except OSError:
        return
    finally:
        os.close(fd)


def _in_ranges(line: str, ranges: Collection[tuple[int, int]]) -> bool:
    try:
        address = int(line.split(" ", 1)[0], 16)
    except ValueError:
        return False
    return any(start <= address < start + size for start, size in ranges)


def _holds_any(used: list[int], start: int, end: int) -> bool:
    """Whether any of the sorted addresses ``used`` lies in ``[start, end)``."""
    at = bisect.bisect_left(used, start)
    return at < len(used) and used[at] < end


def list_debug_objects(pid: int, start_time: int | None = None) -> list[DebugObject]:
    """The debug objects of a process in reload order (its newest run for a bare pid)."""
    if start_time is not None:
        folder = _process_folder(pid, start_time, create=False)
    else:
        folder = _newest_folder(pid)
    return [
        DebugObject(folder / e["file"], e["source"], e["base"], e["size"], e["live"])
        for e in _read_manifest(folder)
    ]


def append_perf_map(
    pid: int, images: Sequence[LinkedImage], reclaimed: Collection[tuple[int, int]] = ()
) -> Path | None:
    """Add the functions of new blocks to ``/tmp/perf-PID.map`` (``START SIZE name``, hex).

    The file is opened without following symlinks and used only if it is a
    regular file owned by us or by the target's owner: /tmp is shared, and a
    planted link must not make root append to another file.  Returns None when
    the file cannot be used that way.  Functions in ``reclaimed`` code
    (``(address, size)``) are taken out first (see :func:`prune_perf_map`).
    """
    if reclaimed:
        prune_perf_map(pid, reclaimed)
    lines = [
        f"{span.address:x} {max(span.size, 1):x} {span.name}\n"
        for image in images
        for span in iter_function_spans(image)
    ]
    if not lines:
        return None
    path = Path(f"/tmp/perf-{pid}.map")
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        owners = {os.geteuid(), _owner_of(pid)}
        if not stat.S_ISREG(info.st_mode) or info.st_uid not in owners or info.st_nlink != 1:
            return None
        os.write(fd, "".join(lines).encode())
    finally:
        os.close(fd)
    return path


def clean() -> list[str]:
    """Remove the debug objects of processes that are gone (``relive clean``)."""
    gone = [f for f in _process_folders() if _process_gone(f.name)]
    for folder in gone:
        shutil.rmtree(folder, ignore_errors=True)
    return [folder.name for folder in gone]


def prune_expired(now: float | None = None) -> None:
    """Remove what processes that are gone left in the state directory: their debug
    objects once unchanged for :data:`KEEP_SECONDS`, and their lock files.

    Runs at most once every :data:`PRUNE_EVERY` seconds (it reads the directory).
    """
    now = time.time() if now is None else now
    state = checked_state_dir()
    stamp = state / _PRUNE_STAMP
    with contextlib.suppress(OSError):
        if now - stamp.stat().st_mtime < PRUNE_EVERY:
            return
    _write(stamp, b"")
    for folder in _process_folders():
        with contextlib.suppress(OSError):
            changed = (folder / _MANIFEST).stat().st_mtime
            if now - changed > KEEP_SECONDS and _process_gone(folder.name):
                shutil.rmtree(folder, ignore_errors=True)
    for name in _list(state):
        prefix = name.removesuffix(".lock")
        if prefix != name and _process_gone(prefix):
            with contextlib.suppress(OSError):
                os.unlink(state / name)


def _process_folder(pid: int, start_time: int, create: bool) -> Path:
    """The folder of one process's debug objects (made private, if ``create``)."""
    root = checked_state_dir() / _DEBUG
    folder = root / f"{pid}-{start_time}"
    if create:
        for path in (root, folder):
            with contextlib.suppress(FileExistsError):
                path.mkdir(mode=0o700)
            info = path.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
                raise StateDirError(
                    f"{path} is not a folder relive made",
                    hint=f"remove {path}; relive re-creates it",
                )
    return folder


def _process_folders() -> Iterator[Path]:
    root = checked_state_dir() / _DEBUG
    for name in _list(root):
        path = root / name
        if path.is_dir() and not path.is_symlink():
            yield path


def _newest_folder(pid: int) -> Path:
    candidates = [f for f in _process_folders() if f.name.startswith(f"{pid}-")]
    newest = max(candidates, key=lambda f: f.stat().st_mtime, default=None)
    return newest if newest is not None else checked_state_dir() / _DEBUG / f"{pid}-0"


def _list(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _process_gone(name: str) -> bool:
    """Whether the process ``PID-START`` names no longer runs."""
    pid_text, _, start_text = name.partition("-")
    try:
        return get_start_time(int(pid_text)) != int(start_text)
    except (ValueError, ReliveError):
        return True


def _owner_of(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return os.geteuid()


def _read_manifest(folder: Path) -> list[dict[str, Any]]:
    try:
        with open(folder / _MANIFEST, "rb", opener=_open_no_follow) as f:
            raw = json.loads(f.read())
    except (OSError, ValueError):
        return []
    if not isinstance(raw, list):
        return []
    return [e for e in raw if _valid_entry(e)]


def _valid_entry(entry: object) -> bool:
    if not isinstance(entry, dict):
        return False
    name = entry.get("file")
    return (
        isinstance(name, str)
        and name.endswith(".debug")
        and "/" not in name
        and not name.startswith(".")
        and isinstance(entry.get("source"), str)
        and isinstance(entry.get("base"), int)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("live"), bool)
        and isinstance(entry.get("unwind_table"), int | None)
        and isinstance(entry.get("data_base", 0), int)
        and isinstance(entry.get("data_size", 0), int)
        and isinstance(entry.get("reclaimed", False), bool)
    )


def _write_manifest(folder: Path, entries: Iterable[dict[str, Any]]) -> None:
    _write(folder / _MANIFEST, json.dumps(list(entries)).encode())


def _open_no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _write(path: Path, data: bytes) -> None:
    """Write ``path`` whole (a new file, never through a link, renamed into place)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)  # left by a killed relive whose pid came round again
        with os.fdopen(os.open(tmp, flags, 0o600), "wb") as f:
            f.write(data)
        replace_file(tmp, path)  # swapped in: no flush on ext4
    except OSError as error:
        raise StateDirError(
            f"cannot write {path}: {error.strerror}",
            hint="free some space in the state directory, or set RELIVE_STATE_DIR",
        ) from error

"""Files that let debuggers and profilers see the new code: debug objects and perf maps.

For every reload relive writes a *debug object* (an ELF file with the new
block's code, symbols, ``.eh_frame`` and DWARF at their runtime addresses, see
:mod:`relive.link.debuginfo`) into the state directory, named after the
process like its journal (``PID-START.NNNN-SOURCE.debug``), and lists it in
``PID-START.debug.json`` with whether its code is still live.
``relive gdb`` loads the live ones into gdb; for a core dump it loads those
that were live when the process last changed.  Each new function is also
appended to ``/tmp/perf-PID.map``, the symbol map perf reads for JIT code.

Debug objects are kept after the process exits (a core may still need them)
until ``relive clean``, or for :data:`KEEP_SECONDS` after their last change.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import stat
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relive.errors import ReliveError
from relive.link import LinkedImage
from relive.link.debuginfo import build_debug_object, iter_function_spans
from relive.patch.journal import Journal
from relive.process.procfs import get_start_time
from relive.statedir import find_state_dir, read_state_file, state_file_path, write_state_file

#: How long debug objects of a process that has exited are kept: one week.
KEEP_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class DebugObject:
    """One reload's debug object, as the manifest lists it."""

    path: Path
    source: str
    base: int
    size: int
    live: bool


def _prefix(pid: int, start_time: int) -> str:
    """Debug files of a process start with its pid and start time, like its journal."""
    return f"{pid}-{start_time}"


def _manifest_name(prefix: str) -> str:
    return f"{prefix}.debug.json"


def write_debug_objects(
    journal: Journal, blocks: Sequence[tuple[str, LinkedImage]], registered: Collection[int] = ()
) -> list[Path]:
    """Write the debug object of each reloaded ``(source, block)``; update the manifest once.

    ``registered``: the unwind tables that were registered with the program's
    unwinder (undo deregisters them once their code no longer runs).
    """
    prefix = _prefix(journal.pid, journal.start_time)
    entries = _read_manifest(prefix)
    paths = []
    for source, image in blocks:
        name = f"{prefix}.{len(entries) + 1:04d}-{Path(source).stem}.debug"
        write_state_file(name, build_debug_object(image, source))
        table = image.eh_frame_address
        entries.append(
            {
                "file": name,
                "source": source,
                "base": image.base,
                "size": len(image.data),
                "live": True,
                "unwind_table": table if table in registered else None,
            }
        )
        paths.append(state_file_path(name))
    _mark_live(journal, entries)
    _write_manifest(prefix, entries)
    return paths


def refresh_liveness(journal: Journal) -> list[int]:
    """Mark each debug object live while a patch or a definition still uses its block.

    Returns the registered unwind tables of blocks that are no longer live (the
    caller deregisters them); the manifest forgets them.
    """
    prefix = _prefix(journal.pid, journal.start_time)
    entries = _read_manifest(prefix)
    if not entries:
        return []
    retired = _mark_live(journal, entries)
    _write_manifest(prefix, entries)
    return retired


def _mark_live(journal: Journal, entries: list[dict[str, Any]]) -> list[int]:
    """Set each entry's liveness; the unwind tables of entries that are no longer live."""
    used = sorted(
        [p.target for p in journal.patches.values()]
        + [d.address for r in journal.sources.values() for d in r.definitions.values()]
    )
    retired = []
    for entry in entries:
        start, end = entry["base"], entry["base"] + entry["size"]
        at = bisect.bisect_left(used, start)
        entry["live"] = at < len(used) and used[at] < end
        if not entry["live"] and entry.get("unwind_table") is not None:
            retired.append(entry["unwind_table"])
            entry["unwind_table"] = None
    return retired


def list_debug_objects(pid: int, start_time: int | None = None) -> list[DebugObject]:
    """The debug objects of a process in reload order (its newest run for a bare pid)."""
    prefix = _prefix(pid, start_time) if start_time is not None else _newest_prefix(pid)
    if prefix is None:
        return []
    return [
        DebugObject(state_file_path(e["file"]), e["source"], e["base"], e["size"], e["live"])
        for e in _read_manifest(prefix)
    ]


def append_perf_map(pid: int, images: Sequence[LinkedImage]) -> Path | None:
    """Add the functions of new blocks to ``/tmp/perf-PID.map`` (``START SIZE name``, hex).

    The file is opened without following symlinks and used only if it is a
    regular file owned by us or by the target's owner: /tmp is shared, and a
    planted link must not make root append to another file.  Returns None when
    the file cannot be used that way.
    """
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
    """Remove the debug files of processes that are gone (``relive clean``)."""
    removed = []
    for prefix in _iter_prefixes():
        if _process_gone(prefix):
            _remove(prefix)
            removed.append(prefix)
    return removed


def prune_expired(now: float | None = None) -> None:
    """Remove debug files of gone processes whose manifest is older than a week."""
    now = time.time() if now is None else now
    for prefix in _iter_prefixes():
        with contextlib.suppress(OSError):
            changed = state_file_path(_manifest_name(prefix)).stat().st_mtime
            if now - changed > KEEP_SECONDS and _process_gone(prefix):
                _remove(prefix)


def _iter_prefixes() -> Iterator[str]:
    try:
        names = os.listdir(find_state_dir())
    except OSError:
        return
    for name in names:
        if name.endswith(".debug.json"):
            yield name.removesuffix(".debug.json")


def _remove(prefix: str) -> None:
    folder = find_state_dir()
    for name in os.listdir(folder):
        if name.startswith(f"{prefix}.") and (name.endswith(".debug") or name.endswith(".json")):
            with contextlib.suppress(OSError):
                (folder / name).unlink()


def _process_gone(prefix: str) -> bool:
    pid_text, _, start_text = prefix.partition("-")
    try:
        return get_start_time(int(pid_text)) != int(start_text)
    except (ValueError, ReliveError):
        return True


def _newest_prefix(pid: int) -> str | None:
    candidates = [p for p in _iter_prefixes() if p.startswith(f"{pid}-")]
    return max(
        candidates,
        key=lambda p: state_file_path(_manifest_name(p)).stat().st_mtime,
        default=None,
    )


def _owner_of(pid: int) -> int:
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return os.geteuid()


def _read_manifest(prefix: str) -> list[dict[str, Any]]:
    try:
        raw = json.loads(read_state_file(_manifest_name(prefix)) or b"[]")
    except (ReliveError, ValueError):
        return []
    if not isinstance(raw, list):
        return []
    return [e for e in raw if _valid_entry(e, prefix)]


def _valid_entry(entry: object, prefix: str) -> bool:
    if not isinstance(entry, dict):
        return False
    name = entry.get("file")
    return (
        isinstance(name, str)
        and name.startswith(f"{prefix}.")
        and "/" not in name
        and isinstance(entry.get("source"), str)
        and isinstance(entry.get("base"), int)
        and isinstance(entry.get("size"), int)
        and isinstance(entry.get("live"), bool)
        and isinstance(entry.get("unwind_table"), int | None)
    )


def _write_manifest(prefix: str, entries: Iterable[dict[str, Any]]) -> None:
    write_state_file(_manifest_name(prefix), json.dumps(list(entries)).encode())

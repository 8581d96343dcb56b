"""What relive has done to a process, kept in a file that survives relive exiting.

The file is keyed by PID *and* the process start time, so a recycled PID never
inherits another process's record; every entry is checked against the bytes
actually in memory before it is trusted.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from relive.process.procfs import get_start_time


@dataclass
class EntryPatch:
    """A function entry relive overwrote with a jump."""

    name: str
    source: str
    module: str
    entry: int  # address of the first overwritten byte
    original: str  # hex of the bytes that were there before relive
    written: str  # hex of the jump now there
    target: int  # where the jump goes
    count: int = 1
    updated: float = field(default_factory=time.time)


@dataclass
class Definition:
    """A function or variable that lives in memory relive allocated."""

    name: str
    address: int
    size: int
    kind: str  # "function", "data", "rodata", "tls"
    file: str | None  # STT_FILE group for file-local symbols
    fingerprint: str = ""


@dataclass
class SourceRecord:
    """Everything relive loaded from one source file, newest generation first."""

    generations: int = 0
    definitions: dict[str, Definition] = field(default_factory=dict)
    #: Fingerprints of every function of the file as last loaded (or found unchanged).
    fingerprints: dict[str, str] = field(default_factory=dict)


@dataclass
class Journal:
    """The persistent record for one process."""

    pid: int
    start_time: int
    patches: dict[str, EntryPatch] = field(default_factory=dict)
    sources: dict[str, SourceRecord] = field(default_factory=dict)
    regions: list[tuple[int, int]] = field(default_factory=list)

    @staticmethod
    def patch_key(module: str, entry: int) -> str:
        """Patches are keyed by the entry address within a module."""
        return f"{module}@{entry:#x}"


def state_dir() -> Path:
    """Where journals live: $RELIVE_STATE_DIR, else a per-user folder in /tmp."""
    override = os.environ.get("RELIVE_STATE_DIR")
    base = Path(override) if override else Path(tempfile.gettempdir()) / f"relive-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    return base


def _journal_path(pid: int, start_time: int) -> Path:
    return state_dir() / f"{pid}-{start_time}.json"


def load_journal(pid: int) -> Journal:
    """The journal of a live process, or an empty one if relive never touched it."""
    start = get_start_time(pid)
    path = _journal_path(pid, start)
    if not path.exists():
        return Journal(pid=pid, start_time=start)
    raw: dict[str, Any] = json.loads(path.read_text())
    return Journal(
        pid=pid,
        start_time=start,
        patches={k: EntryPatch(**v) for k, v in raw.get("patches", {}).items()},
        sources={k: _load_source(v) for k, v in raw.get("sources", {}).items()},
        regions=[(a, n) for a, n in raw.get("regions", [])],
    )


def _load_source(raw: dict[str, Any]) -> SourceRecord:
    return SourceRecord(
        generations=raw.get("generations", 0),
        definitions={k: Definition(**v) for k, v in raw.get("definitions", {}).items()},
        fingerprints=dict(raw.get("fingerprints", {})),
    )


def save_journal(journal: Journal) -> None:
    """Write the journal atomically (rename), so a killed relive leaves a whole file."""
    path = _journal_path(journal.pid, journal.start_time)
    tmp = path.with_suffix(".tmp")
    # Plain dicts, no indent: dataclasses.asdict deep-copies, which for thousands
    # of functions costs more than the reload itself.
    tmp.write_text(json.dumps(_as_plain(journal), separators=(",", ":")))
    os.replace(tmp, path)


def _as_plain(journal: Journal) -> dict[str, Any]:
    return {
        "pid": journal.pid,
        "start_time": journal.start_time,
        "patches": {k: vars(p) for k, p in journal.patches.items()},
        "sources": {
            k: {
                "generations": r.generations,
                "definitions": {n: vars(d) for n, d in r.definitions.items()},
                "fingerprints": r.fingerprints,
            }
            for k, r in journal.sources.items()
        },
        "regions": journal.regions,
    }

"""Turning file-system events into saves: editors' save styles alike, unchanged saves skipped.

Editors save in place (truncate and write) or write a temporary file and rename
it over the original; some also touch backup files.  Events are therefore
taken for the *directories* holding watched files (a rename replaces the
file's inode, which a watch on the file itself would lose) and reduced to the
watched paths that exist afterwards.  What counts is content: a save is a
change only if the file's bytes differ from the last ones relive saw.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from relive import digests
from relive.watch.paths import real_path

__all__ = ["ContentTracker", "saved_paths"]


def saved_paths(changed: Iterable[Path], watched: set[Path]) -> set[Path]:
    """The watched files among the ``changed`` paths that exist now.

    Deletions are ignored as such: a write-and-rename save shows the old name
    deleted and re-added, and only the end state matters.
    """
    out: set[Path] = set()
    for name in changed:
        path = real_path(name)
        if path in watched and path.is_file():
            out.add(path)
    return out


def _digest(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data:
        # An in-place save caught between truncate and write: the write's own
        # event follows.  (An empty C file is no edit worth reloading.)
        return None
    return digests.blake2b(data, digest_size=16).hexdigest()


class ContentTracker:
    """The last content seen of each file, as a hash."""

    def __init__(self) -> None:
        self._seen: dict[Path, str] = {}

    def remember(self, paths: Iterable[Path]) -> None:
        """Take the current content of ``paths`` as the baseline (files not seen before only)."""
        for path in paths:
            if path not in self._seen:
                digest = _digest(path)
                if digest is not None:
                    self._seen[path] = digest

    def differs(self, path: Path) -> bool:
        """Whether ``path``'s content is not the last seen (without remembering it)."""
        digest = _digest(path)
        return digest is not None and self._seen.get(path) != digest

    def update(self, path: Path) -> bool | None:
        """Whether ``path``'s content changed since last seen (and remember it).

        None when the file cannot be read or is empty (a save in progress).
        """
        digest = _digest(path)
        if digest is None:
            return None
        changed = self._seen.get(path) != digest
        self._seen[path] = digest
        return changed

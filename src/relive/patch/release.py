"""What an undo gives back: the code and data of reloads nothing uses any more, and
the arenas left empty (``patch.reclaim`` proves what is dead, ``patch.arena``
unmaps)."""

from __future__ import annotations

from relive.errors import ReliveError
from relive.patch.arena import release_empty_arenas
from relive.patch.journal import Journal, save_journal
from relive.patch.reclaim import DeadCodeCheck, drop_blocks
from relive.patch.tooling import reclaim_code


def free_undone_blocks(pid: int, journal: Journal, check: DeadCodeCheck) -> list[str]:
    """After an undo's stop: free the dead code, forget blocks whose data is free too,
    and unmap arenas no block uses; the notices."""
    notices = reclaim_code(pid, journal, check.dead)
    free_data = [id(b) for b in check.dead_data]
    gone = [b for b in journal.blocks if b.reclaimed and (not b.data[1] or id(b) in free_data)]
    # Freeing the code already forgot the blocks that hold no data: arenas may be
    # empty then too.
    if not gone and not check.dead:
        return notices
    drop_blocks(journal, gone)
    try:
        release_empty_arenas(pid, journal)
        save_journal(journal)
    except ReliveError as error:
        notices.append(f"empty arenas left mapped ({error.message})")
    return notices

"""The journal is written ahead: an entry write is recorded before it is made.

relive can be killed between writing jumps into a process and saving its
journal.  A jump nobody recorded is a patch ``status`` and ``undo`` cannot see,
and a later reload would take it for the function's original bytes.  So every
entry write (a jump, or the original bytes put back by ``undo``) is first
saved as *pending*, then made, then committed.  A journal found with pending
writes (its relive died) is reconciled with memory when it is loaded: a write
whose bytes are in memory happened, any other did not.
"""

from __future__ import annotations

from relive.errors import ReliveError
from relive.patch.entries import EntryWrite
from relive.patch.journal import EntryPatch, Journal, PendingPatch
from relive.process.memory import ProcessMemory


def stage_jumps(journal: Journal, writes: list[EntryWrite]) -> None:
    """Record the entry jumps about to be written (keeping each function's first
    original bytes and its fingerprint before this reload)."""
    for write in writes:
        key = Journal.patch_key(write.module, write.address)
        existing = journal.patches.get(key)
        record = journal.sources.get(write.source)
        after = EntryPatch(
            name=write.name,
            source=write.source,
            module=write.module,
            entry=write.address,
            original=existing.original if existing else write.expected.hex(),
            written=write.new.hex(),
            target=write.target,
            count=(existing.count + 1) if existing else 1,
        )
        previous = record.fingerprints.get(write.name) if record else None
        journal.pending[key] = PendingPatch(after, previous)


def stage_undo(journal: Journal, keys: list[str]) -> None:
    """Record that the original bytes of these patches are about to go back."""
    for key in keys:
        journal.pending[key] = PendingPatch(None)


def commit(journal: Journal, done: set[str] | None = None) -> None:
    """Apply the pending writes in ``done`` (all when None) to the journal; forget the rest.

    A jump that was not written leaves the function running what it ran before,
    so its fingerprint goes back to the one from before the reload.
    """
    _settle_blocks(journal, done)
    for key, pending in journal.pending.items():
        happened = done is None or key in done
        if pending.after is None:
            if happened:
                _forget_patch(journal, key)
            continue
        if happened:
            journal.patches[key] = pending.after
            continue
        record = journal.sources.get(pending.after.source)
        if record is None:
            continue
        if pending.previous_fingerprint is None:
            record.fingerprints.pop(pending.after.name, None)
        else:
            record.fingerprints[pending.after.name] = pending.previous_fingerprint
    journal.pending.clear()


def _settle_blocks(journal: Journal, done: set[str] | None) -> None:
    """Commit the blocks recorded ahead of their jumps (all when ``done`` is None);
    forget those no written jump leads to and no definition lives in: their
    space is free again."""
    if not any(block.pending for block in journal.blocks):
        return
    targets = [
        p.after.target
        for key, p in journal.pending.items()
        if p.after is not None and (done is None or key in done)
    ]
    addresses = [d.address for r in journal.sources.values() for d in r.definitions.values()]
    kept = []
    for block in journal.blocks:
        if block.pending and done is not None:
            code, data = block.code, block.data
            inside = [a for a in targets if code[0] <= a < code[0] + code[1]]
            inside += [
                a
                for a in addresses
                if code[0] <= a < code[0] + code[1] or data[0] <= a < data[0] + data[1]
            ]
            if not inside:
                continue
        block.pending = False
        kept.append(block)
    journal.blocks = kept


def _forget_patch(journal: Journal, key: str) -> None:
    if key in journal.patches:
        journal.forget_patch(key)


def find_done(journal: Journal, memory: ProcessMemory) -> set[str]:
    """The pending writes whose bytes are in memory now."""
    done = set()
    for key, pending in journal.pending.items():
        if pending.after is not None:
            address, want = pending.after.entry, pending.after.written
        elif key in journal.patches:
            address, want = journal.patches[key].entry, journal.patches[key].original
        else:
            continue
        data = bytes.fromhex(want)
        try:
            if memory.read(address, len(data)) == data:
                done.add(key)
        except ReliveError:  # an unreadable entry holds nothing relive wrote
            continue
    return done


def reconcile(journal: Journal) -> None:
    """Settle the pending writes of a relive that died: what memory holds happened
    (and the blocks recorded for jumps that never were are free again)."""
    with ProcessMemory(journal.pid) as memory:
        commit(journal, find_done(journal, memory))

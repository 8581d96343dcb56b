"""Never trust a journal's bytes: check them against the module files, rebuild when corrupt.

A journal says which bytes ``undo`` writes into a process.  What it says relive
wrote is checked against memory when the entries are written (``write_entries``
refuses an entry that does not hold them); what it says was there before must
be what the module file holds at that address (the build in memory being the
file's, by build id).  A journal that does not parse is not guessed at: what is
patched is found again by comparing each module's code in memory with its file
(``patch.inherit``), with the originals taken from the files.
"""

from __future__ import annotations

from collections.abc import Iterable

from relive.errors import ReliveError
from relive.events import EventSink, Notice
from relive.patch.inherit import find_entry_jumps
from relive.patch.journal import CorruptJournal, EntryPatch, Journal, journal_path, load_journal
from relive.patch.modules import RunningModule, load_running_modules
from relive.patch.original import read_original_code
from relive.process.memory import ProcessMemory
from relive.process.procfs import get_start_time

__all__ = ["check_originals", "load_or_rebuild_journal", "rebuild_journal"]


def load_or_rebuild_journal(
    pid: int, emit: EventSink, verify_originals: bool = False
) -> tuple[Journal, bool]:
    """The journal of ``pid``; if it is corrupt (or, with ``verify_originals``, would
    put back bytes the module files do not hold), one rebuilt from memory and the
    module files, said in a notice, and True."""
    try:
        journal = load_journal(pid)
        if verify_originals:
            check_originals(pid, journal, journal.patches.values())
        return journal, False
    except CorruptJournal as corrupt:
        journal, unchecked = rebuild_journal(pid, get_start_time(pid))
        skipped = f" (not compared: {', '.join(unchecked)})" if unchecked else ""
        emit(
            Notice(
                f"{corrupt.message}; what is patched was found again by comparing memory "
                f"with the module files{skipped}"
            )
        )
        return journal, True


def rebuild_journal(pid: int, start_time: int) -> tuple[Journal, list[str]]:
    """A journal of every entry jump found in the code of ``pid``'s modules.

    Returns it and the modules that could not be compared (their file is not
    the build in memory); jumps into code relive loaded earlier (regions the
    lost journal listed) cannot be found.
    """
    journal = Journal(pid=pid, start_time=start_time)
    modules = load_running_modules(pid)
    patches, unchecked = find_entry_jumps(pid, modules)
    for patch in patches:
        journal.patches[Journal.patch_key(patch.module, patch.entry)] = patch
    return journal, unchecked


def check_originals(pid: int, journal: Journal, patches: Iterable[EntryPatch]) -> None:
    """Raise CorruptJournal unless each patch's original bytes are the module file's.

    Entries in memory relive allocated (a function an earlier reload added) have
    no file to compare with; memory is checked for those when they are written.
    """
    modules = load_running_modules(pid)
    with ProcessMemory(pid) as memory:
        for patch in patches:
            module = _module_at(modules, patch)
            if module is None:
                continue
            original = bytes.fromhex(patch.original)
            try:
                on_file = read_original_code(module, patch.entry, len(original), memory.read)
            except ReliveError:
                continue  # not the build in memory: refused where it matters (reload)
            if on_file != original:
                raise CorruptJournal(
                    journal_path(journal.pid, journal.start_time),
                    f"the bytes it would put back at {patch.name} ({original.hex()}) are not "
                    f"what {module.name} holds there ({on_file.hex()})",
                )


def _module_at(modules: list[RunningModule], patch: EntryPatch) -> RunningModule | None:
    for module in modules:
        if module.path == patch.module and module.start <= patch.entry < module.end:
            return module
    return None

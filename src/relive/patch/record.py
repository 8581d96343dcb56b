"""Record in the journal what a reload did, so later reloads, status and undo know."""

from __future__ import annotations

from relive.elf.objfile import ObjSymbol
from relive.link import LinkedImage
from relive.link.layout import MIN_CODE_ROOM
from relive.patch.apply import EntryWrite
from relive.patch.journal import Definition, EntryPatch, Journal, SourceRecord
from relive.patch.plan import ReloadPlan


def record_reload(journal: Journal, plan: ReloadPlan, image: LinkedImage) -> None:
    """Remember what a reload loaded: fingerprints, new functions and variables."""
    record = journal.sources.setdefault(plan.source, SourceRecord())
    record.generations += 1
    for d in plan.decisions:
        if d.status != "skipped":
            record.fingerprints[d.name] = d.fingerprint
        if d.status == "new":
            record.definitions[d.name] = Definition(
                d.name,
                image.get_symbol_address(d.symbol),
                _room(plan, d.symbol),
                "function",
                d.symbol.file if d.symbol.is_local else None,
                d.fingerprint,
            )
    for symbol in plan.new_data:
        section = plan.obj.sections[symbol.shndx]
        if section.is_write:
            record.definitions[symbol.name] = Definition(
                symbol.name,
                image.get_symbol_address(symbol),
                symbol.size,
                "data",
                symbol.file if symbol.is_local else None,
            )


def _room(plan: ReloadPlan, symbol: ObjSymbol) -> int:
    """Bytes a new function may have overwritten by a later entry jump."""
    alone = [s for s in plan.obj.iter_section_symbols(symbol.shndx) if s.is_function] == [symbol]
    return max(symbol.size, MIN_CODE_ROOM) if alone and symbol.value == 0 else symbol.size


def record_entry_patch(journal: Journal, write: EntryWrite) -> None:
    """Remember an entry jump (keeping the original bytes of the first one)."""
    key = Journal.patch_key(write.module, write.address)
    existing = journal.patches.get(key)
    journal.patches[key] = EntryPatch(
        name=write.name,
        source=write.source,
        module=write.module,
        entry=write.address,
        original=existing.original if existing else write.expected.hex(),
        written=write.new.hex(),
        target=write.target,
        count=(existing.count + 1) if existing else 1,
    )

"""The façade: attach to a process, reload sources, undo, report status.

This is the Python API the CLI uses::

    import relive
    session = relive.attach(pid)
    session.reload(["demo.c"])
    session.status()
    session.undo()
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from relive.arch import get_arch
from relive.arch.base import Arch
from relive.elf.dwarf import find_compile_unit
from relive.elf.objfile import ObjectFile
from relive.errors import BadObject, ReliveError, UnsafePatch, UsageError
from relive.events import (
    Compiled,
    DependenciesFound,
    EventSink,
    FunctionActive,
    FunctionAdded,
    FunctionRedirected,
    FunctionRestored,
    FunctionSkipped,
    FunctionUnchanged,
    Notice,
    ReloadFinished,
    Timings,
    ignore_event,
)
from relive.link import LinkedImage
from relive.patch.active import iter_active_functions
from relive.patch.apply import (
    EntryWrite,
    allocate_and_link,
    held_signals,
    protect_code,
    release_block,
    write_block,
    write_entries,
)
from relive.patch.binder import Binder
from relive.patch.entries import EntrySite, iter_entry_sites
from relive.patch.identify import check_object_belongs, check_source_belongs
from relive.patch.initial import (
    DataChange,
    choose_reinit,
    describe_initial_change,
    write_initial_values,
)
from relive.patch.journal import Journal, load_journal, save_journal
from relive.patch.lock import process_lock
from relive.patch.loops import refuse_running_loop_heads
from relive.patch.modules import (
    RunningModule,
    find_module_defining,
    get_main_module,
    load_running_modules,
)
from relive.patch.plan import FarDataReference, ReloadPlan, build_plan, iter_orphan_clones
from relive.patch.record import record_entry_patch, record_reload
from relive.process.memory import ProcessMemory
from relive.process.procfs import check_alive
from relive.process.remote import remote_call
from relive.process.threads import stop_all
from relive.statedir import scratch_dir
from relive.toolchain.choice import get_compile_command
from relive.toolchain.command import ORIGIN_COMPDB, CompileCommand
from relive.toolchain.compiler import compile_object
from relive.toolchain.lto import without_lto


@dataclass(frozen=True)
class PatchStatus:
    """One patched function as ``status`` reports it."""

    name: str
    source: str
    address: int
    target: int
    count: int
    updated: float
    active: bool  # the jump is really in memory


@dataclass
class ReloadResult:
    """What a reload did, per function."""

    redirected: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    stopped_us: float = 0.0
    phases_ms: dict[str, float] = field(default_factory=dict)


def attach(pid: int, on_event: EventSink | None = None) -> Session:
    """A session on a running process (raises ProcessGone if there is none)."""
    check_alive(pid)
    return Session(pid, on_event or ignore_event)


class Session:
    """Reload, undo and inspect patches of one process."""

    def __init__(self, pid: int, on_event: EventSink) -> None:
        self.pid = pid
        self.emit = on_event

    # -- reload ------------------------------------------------------------------

    def reload(
        self,
        paths: Sequence[str | Path],
        functions: Collection[str] | None = None,
        dry_run: bool = False,
        cflags: Sequence[str] | None = None,
        compdb: Path | None = None,
        trust_build: bool = False,
        reinit: Collection[str] = (),
        new_file: bool = False,
    ) -> ReloadResult:
        """Compile (``.c``) or take (``.o``) each path and redirect its changed functions.

        ``reinit`` names variables whose changed initial value is copied into the
        running storage (otherwise the program keeps their current value).
        ``new_file`` accepts a file the program was not built from: it may then only
        add functions, or replace those named in ``functions``."""
        options = _Options(functions, cflags, compdb, trust_build, new_file)
        with process_lock(self.pid):
            return self._reload(paths, options, dry_run, reinit)

    def _reload(
        self,
        paths: Sequence[str | Path],
        options: _Options,
        dry_run: bool,
        reinit: Collection[str],
    ) -> ReloadResult:
        if not paths:
            raise UsageError("nothing to reload", hint="name at least one .c or .o file")
        for path in map(Path, paths):
            if path.suffix not in (".c", ".o"):
                raise UsageError(
                    f"{path}: relive reloads C sources (.c) and objects (.o)",
                    hint="name the .c file that defines the functions you changed",
                )
            if not path.exists():
                raise UsageError(f"no such file: {path}", hint="check the path")
            if not path.is_file():  # a FIFO or a device would hang the compile or the read
                raise UsageError(
                    f"{path} is not a regular file", hint="name a .c or .o file on disk"
                )
        result = ReloadResult()
        phases = result.phases_ms
        started = time.perf_counter()
        journal = load_journal(self.pid)
        modules = load_running_modules(self.pid)
        arch = get_arch(get_main_module(modules).image.machine)
        _lap(phases, "attach", started)
        with (
            ProcessMemory(self.pid) as memory,
            scratch_dir() as scratch,
        ):
            ctx = _Context(modules, journal, memory, arch, Path(scratch), phases, options)
            plans = [self._plan(Path(p), i, ctx) for i, p in enumerate(paths)]
            reinits = self._announce(plans, reinit)
            mark = time.perf_counter()
            if dry_run:
                self._report(plans, None, result)
                self.emit(
                    ReloadFinished(
                        self.pid,
                        len(result.redirected),
                        len(result.added),
                        len(result.unchanged),
                        True,
                    )
                )
                return result
            self._apply(plans, journal, memory, result, arch, reinits)
            _lap(phases, "patch", mark)
        self.emit(Timings(dict(phases), result.stopped_us))
        self.emit(
            ReloadFinished(
                self.pid, len(result.redirected), len(result.added), len(result.unchanged), False
            )
        )
        return result

    def _plan(self, path: Path, index: int, ctx: _Context) -> ReloadPlan:
        mark = time.perf_counter()
        if path.suffix == ".o":
            _lap(ctx.phases, "compile", mark)
            return self._plan_object(path, path, None, ctx)
        command, module = self._find_command(path, ctx)
        out_dir = ctx.scratch / str(index)
        obj_path = self._compile(command, out_dir)
        _lap(ctx.phases, "compile", mark)
        try:
            return self._plan_object(path, obj_path, module, ctx)
        except FarDataReference as far:
            extra = ctx.arch.indirect_extern_data_flags.get(_family(command))
            if not extra:
                raise
            # The program reaches these variables through its GOT (no copy relocation,
            # e.g. an LTO build); compile so that the new code does the same.
            self.emit(
                Notice(
                    f"{', '.join(far.names)} out of direct reach: recompiling "
                    f"{path.name} with {' '.join(extra)}"
                )
            )
            command = dataclasses.replace(command, flags=(*command.flags, *extra))
            mark = time.perf_counter()
            obj_path = self._compile(command, out_dir)
            _lap(ctx.phases, "compile", mark)
            return self._plan_object(path, obj_path, module, ctx)

    def _plan_object(
        self, path: Path, obj_path: Path, module: RunningModule | None, ctx: _Context
    ) -> ReloadPlan:
        mark = time.perf_counter()
        obj = ObjectFile.open(obj_path, expected_machines=(ctx.arch.elf_machine,))
        if module is None:
            module = find_module_defining(obj, ctx.modules)
            if not ctx.options.new_file:
                check_object_belongs(obj, module)
        if not module.image.has_symtab:
            raise BadObject(
                f"{module.name} is stripped: relive needs its symbol table to find the running "
                "functions and variables",
                hint="run an unstripped build (no -s, no strip) of the program",
            )
        key = str(path.resolve())
        record = ctx.journal.sources.get(key)
        binder = Binder(
            obj,
            module,
            ctx.modules,
            record,
            ctx.memory.read,
            ctx.arch.dtpmod_reloc_type,
            ctx.arch.tpoff_reloc_type,
            call_function=self._call_in_target,
        )
        fingerprints = record.fingerprints if record else None
        plan = build_plan(key, obj, binder, ctx.arch, fingerprints, ctx.functions)
        _lap(ctx.phases, "link", mark)
        return plan

    def _announce(self, plans: list[ReloadPlan], reinit: Collection[str]) -> list[list[DataChange]]:
        """Say what the plans keep or change that is not a function; the --reinit choices."""
        changes = [change for plan in plans for change in plan.initial_changed]
        chosen, unmatched = choose_reinit(changes, reinit)
        for plan in plans:
            for note in plan.notices:
                self.emit(Notice(note))
            for change in plan.initial_changed:
                self.emit(Notice(describe_initial_change(change, change in chosen)))
        if unmatched:
            self.emit(
                Notice(
                    f"--reinit {', '.join(unmatched)}: no variable of the reloaded files by that "
                    "name has a changed initial value; nothing copied"
                )
            )
        return [[c for c in plan.initial_changed if c in chosen] for plan in plans]

    def _call_in_target(self, function: int) -> int:
        """Run ``function()`` in the target (an IFUNC resolver nobody has run yet)."""
        with stop_all(self.pid) as stopped:
            return remote_call(stopped, function)

    def _find_command(self, source: Path, ctx: _Context) -> tuple[CompileCommand, RunningModule]:
        """The compile command of ``source`` and the module it was built into."""
        module, unit = ctx.modules[0], None
        for candidate in ctx.modules:
            unit = find_compile_unit(candidate.file, source)
            if unit is not None:
                module = candidate
                break
        command = without_lto(
            get_compile_command(
                source,
                cli_flags=ctx.cflags,
                compdb=ctx.compdb,
                compile_unit=unit,
                trust_build=ctx.trust_build,
            )
        )
        known = str(source.resolve()) in ctx.journal.sources  # loaded before (--new-file)
        if not ctx.options.new_file and not known:
            check_source_belongs(source, unit, command.origin == ORIGIN_COMPDB, ctx.modules)
        for note in command.notes:
            self.emit(Notice(note))
        return command, module

    def _compile(self, command: CompileCommand, out_dir: Path) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        compiled = compile_object(command, out_dir)
        self.emit(
            Compiled(str(command.source), command.origin, compiled.command, compiled.milliseconds)
        )
        self.emit(DependenciesFound(str(command.source), [str(p) for p in compiled.dependencies]))
        return compiled.object_path

    def _apply(
        self,
        plans: list[ReloadPlan],
        journal: Journal,
        memory: ProcessMemory,
        result: ReloadResult,
        arch: Arch,
        reinits: list[list[DataChange]],
    ) -> None:
        # Every entry is checked before the first byte is allocated or written.
        sites = [self._entry_sites(plan, journal, memory, arch) for plan in plans]
        refuse_running_loop_heads(self.pid, itertools.chain(*sites), memory, arch)
        images: list[LinkedImage] = []
        report = None
        with held_signals():
            try:
                for plan in plans:
                    images.append(allocate_and_link(self.pid, plan, arch))
                writes = [
                    site.jump_to(image.get_symbol_address(site.decision.symbol), arch)
                    for image, plan_sites in zip(images, sites, strict=True)
                    for site in plan_sites
                ]
                values = [
                    (change.bound.address or 0, plan.link_initial_value(change, image))
                    for plan, image, changes in zip(plans, images, reinits, strict=True)
                    for change in changes
                ]
                for image in images:
                    write_block(memory, image)
                    protect_code(self.pid, image)
                write_initial_values(self.pid, values)
                if writes:
                    report = write_entries(self.pid, writes, arch)
                    result.stopped_us = report.held_seconds * 1e6
            except BaseException:
                for image in images:
                    release_block(self.pid, image)
                raise
            for plan, image in zip(plans, images, strict=True):
                record_reload(journal, plan, image)
            for write in writes:
                record_entry_patch(journal, write)
            journal.regions.extend((i.base, len(i.data)) for i in images)
            # Still inside held_signals: a SIGINT/SIGTERM that came meanwhile must not
            # leave patches in memory that status and undo know nothing about.
            save_journal(journal)
        self._report(plans, images, result)
        if report is not None:
            self._report_active(plans, memory, arch, report.positions)

    def _entry_sites(
        self, plan: ReloadPlan, journal: Journal, memory: ProcessMemory, arch: Arch
    ) -> list[EntrySite]:
        """Entry sites of the changed functions; callers stand in for too-small ones."""
        while True:
            try:
                changed = plan.iter_with_status("changed")
                return list(
                    iter_entry_sites(changed, plan.source, plan.module, journal, memory, arch)
                )
            except UnsafePatch as error:
                tiny = next(d for d in plan.iter_with_status("changed") if d.name == error.function)
                callers = plan.redirect_callers_instead(tiny)
                if not callers:
                    raise
                self.emit(
                    Notice(
                        f"{tiny.name} is too small for an entry jump: reloading its callers "
                        f"{', '.join(callers)} instead (calls from other files or through "
                        "pointers still reach the old code)"
                    )
                )

    def _report_active(
        self,
        plans: list[ReloadPlan],
        memory: ProcessMemory,
        arch: Arch,
        positions: list[tuple[int, int, int]],
    ) -> None:
        ranges = {
            d.name: (d.old.address, d.old.address + max(d.old.size, 1))
            for plan in plans
            for d in plan.iter_with_status("changed")
            if d.old is not None
        }
        if not ranges:
            return
        for name, tid in iter_active_functions(self.pid, memory, arch, ranges, positions):
            self.emit(FunctionActive(name, tid))

    def _report(
        self, plans: list[ReloadPlan], images: list[LinkedImage] | None, result: ReloadResult
    ) -> None:
        for i, plan in enumerate(plans):
            image = images[i] if images else None
            for d in plan.decisions:
                loaded = image is not None and d.status in ("changed", "new")
                new = image.get_symbol_address(d.symbol) if loaded and image else 0
                if d.status == "changed":
                    assert d.old is not None
                    result.redirected.append(d.name)
                    self.emit(FunctionRedirected(d.name, d.old.address, new))
                elif d.status == "new":
                    result.added.append(d.name)
                    self.emit(FunctionAdded(d.name, new))
                elif d.status == "unchanged":
                    result.unchanged.append(d.name)
                    self.emit(FunctionUnchanged(d.name))
                else:
                    result.skipped.append(d.name)
                    self.emit(FunctionSkipped(d.name, d.reason))
            for clone in iter_orphan_clones(plan):
                self.emit(
                    Notice(
                        f"{clone} (a compiler clone in the running program) has no counterpart "
                        "in the new code: its callers were reloaded instead"
                    )
                )

    # -- undo and status ------------------------------------------------------------

    def status(self) -> list[PatchStatus]:
        """Every patch relive applied to this process, checked against memory."""
        journal = load_journal(self.pid)
        out = []
        with ProcessMemory(self.pid) as memory:
            for patch in journal.patches.values():
                written = bytes.fromhex(patch.written)
                active = memory.read(patch.entry, len(written)) == written
                out.append(
                    PatchStatus(
                        patch.name,
                        patch.source,
                        patch.entry,
                        patch.target,
                        patch.count,
                        patch.updated,
                        active,
                    )
                )
        return out

    def undo(self, functions: Collection[str] | None = None) -> list[str]:
        """Put back the original entry bytes of all (or the named) patched functions."""
        with process_lock(self.pid):
            return self._undo(functions)

    def _undo(self, functions: Collection[str] | None) -> list[str]:
        journal = load_journal(self.pid)
        chosen = {
            k: p for k, p in journal.patches.items() if functions is None or p.name in functions
        }
        if functions is not None:
            unknown = set(functions) - {p.name for p in chosen.values()}
            if unknown:
                raise ReliveError(
                    f"not patched: {', '.join(sorted(unknown))}",
                    hint="`relive status -p PID` lists what is patched",
                )
        writes = [
            EntryWrite(p.name, p.entry, bytes.fromhex(p.written), bytes.fromhex(p.original))
            for p in chosen.values()
        ]
        if writes:
            with held_signals():
                write_entries(self.pid, writes)
                for key, patch in chosen.items():
                    del journal.patches[key]
                    # The original code runs again: the next reload must compare with it.
                    record = journal.sources.get(patch.source)
                    if record is not None:
                        record.fingerprints.pop(patch.name, None)
                save_journal(journal)
        for p in chosen.values():
            self.emit(FunctionRestored(p.name, p.entry))
        return [p.name for p in chosen.values()]


@dataclass
class _Context:
    """What every file of one reload shares."""

    modules: list[RunningModule]
    journal: Journal
    memory: ProcessMemory
    arch: Arch
    scratch: Path
    phases: dict[str, float]
    options: _Options

    @property
    def functions(self) -> Collection[str] | None:
        """The functions to redirect (None: every changed one).  A --new-file file
        replaces only those named."""
        if self.options.new_file and self.options.functions is None:
            return ()
        return self.options.functions

    @property
    def cflags(self) -> Sequence[str] | None:
        """--cflags, -I, -D."""
        return self.options.cflags

    @property
    def compdb(self) -> Path | None:
        """--compdb."""
        return self.options.compdb

    @property
    def trust_build(self) -> bool:
        """Use compile_commands.json and compilers other users control (--trust-build)."""
        return self.options.trust_build


@dataclass(frozen=True)
class _Options:
    """What the caller chose for one reload."""

    functions: Collection[str] | None
    cflags: Sequence[str] | None
    compdb: Path | None
    trust_build: bool
    new_file: bool


def _family(command: CompileCommand) -> str:
    return "clang" if "clang" in Path(command.compiler).name else "gcc"


def _lap(phases: dict[str, float], name: str, since: float) -> None:
    phases[name] = phases.get(name, 0.0) + (time.perf_counter() - since) * 1000

"""The plan side of a reload, in order: source -> compile -> object -> plan.

For each file: find how it was compiled (``relive.toolchain``) and compile it
(a ``.o`` is taken as is), read the object, bind it to the running module and
decide per function (``patch.plan``).  Two steps may change the plan before
anything is written, each explicit here:

* :func:`plan_unit`: when the new code reaches another module's variables
  directly and they are out of reach (:class:`FarData`), recompile with the
  flags that make it go through the GOT, as the running program does;
* :func:`reroute_too_small`: a changed function too small for an entry jump is
  replaced through its callers in the same file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from relive.arch.base import Arch
from relive.elf.dwarf import find_compile_unit
from relive.elf.objfile import ObjectFile
from relive.errors import BadObject, ReliveError, UsageError
from relive.events import Compiled, CompilerWarnings, EventSink, Notice, Phase, Progress
from relive.patch.binder import Binder
from relive.patch.callers import find_callers
from relive.patch.entries import find_too_small, too_small_error
from relive.patch.identify import check_object_belongs, check_source_belongs
from relive.patch.initial import DataChange, choose_reinit, describe_initial_change
from relive.patch.journal import Journal
from relive.patch.layout_check import check_layouts, prepare_layout_check
from relive.patch.matched import binding_context, usable_keys, usable_matches
from relive.patch.modules import RunningModule, find_module_defining
from relive.patch.options import ReloadOptions
from relive.patch.plan import Decision, FarData, FarDataReference, ReloadPlan, build_plan
from relive.patch.running import fingerprints_running_now
from relive.patch.static_scope import prepare_static_scopes
from relive.process.memory import ProcessMemory
from relive.process.remote import remote_call
from relive.process.threads import stop_all
from relive.toolchain.command import ORIGIN_COMPDB, CompileCommand

# The compiler's modules and flag inference are imported where a source is
# compiled: a reload of objects (``.o``) does not load them.
if TYPE_CHECKING:
    from concurrent.futures import Future

    from relive.patch.inference import Score
    from relive.toolchain.compiler import CompileResult


class Topic(enum.Enum):
    """What a notice about one source describes: said once per session (a watch
    keeps one session for its whole life), not at every reload."""

    #: The compile command's notes (where its flags come from, LTO, ...).
    COMMAND = "command"
    #: The recompile that reaches far variables through the GOT.
    INDIRECT_DATA = "indirect data"
    #: Flags an earlier reload inferred (``patch.inference``).
    INFERRED = "inferred"


class SharedCompiles:
    """Compiles shared by the processes of one ``reload --all``: the same executable
    compiles each file with the same command, so it is compiled once (its object
    and its error alike), and each process plans and links that object."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.results: dict[CompileCommand, CompileResult | ReliveError] = {}


#: How often a long step without phases of its own (planning a big unit) repeats
#: its :class:`Progress` event: what a live line or a ``--json`` reader sees of it.
STILL_EVERY = 1.0


@dataclass
class PlanContext:
    """What every file of one reload shares."""

    pid: int
    modules: list[RunningModule]
    journal: Journal
    memory: ProcessMemory
    arch: Arch
    scratch: Path
    #: Milliseconds per phase ("compile", "link", ...), added to as the plan is made.
    phases: dict[str, float]
    emit: EventSink
    options: ReloadOptions
    #: Files each compiled source read, by source (``Session.dependencies``).
    dependencies: dict[Path, tuple[Path, ...]]
    #: What this session has already said about each source (``Session.announced``).
    announced: set[tuple[Path, Topic]]
    #: Compiles other processes of the same reload made (``reload --all``).
    shared: SharedCompiles | None = None
    #: When the reload began (``time.perf_counter``), for :class:`Progress` events.
    started: float = field(default_factory=time.perf_counter)

    #: When the last :class:`Progress` was emitted (``time.perf_counter``).
    said: float = 0.0

    def progress(self, source: Path | str, phase: Phase) -> None:
        """Say that the reload is now at ``phase`` on ``source`` (the renderer decides
        whether that is worth showing)."""
        self.said = time.perf_counter()
        self.emit(Progress(str(source), phase, round(self.said - self.started, 3)))

    def still(self, source: Path | str, phase: Phase) -> None:
        """Inside a long step: say again where the reload is, once every
        ``STILL_EVERY`` seconds (cheap enough to call for each function)."""
        if time.perf_counter() - self.said >= STILL_EVERY:
            self.progress(source, phase)

    @property
    def functions(self) -> Collection[str] | None:
        """The functions to redirect (None: every changed one).  A --new-file file
        replaces only those named."""
        if self.options.new_file and self.options.functions is None:
            return ()
        return self.options.functions


def check_paths(paths: Sequence[str | Path], debug: bool = False) -> None:
    """Refuse (UsageError) a reload of nothing, or of what is not a .c or .o file."""
    if debug and any(Path(p).suffix == ".o" for p in paths):
        raise UsageError(
            "--debug recompiles sources: it takes .c files, not objects",
            hint="name the .c file to recompile for debugging",
        )
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
            raise UsageError(f"{path} is not a regular file", hint="name a .c or .o file on disk")


def plan_reload(paths: Sequence[Path], ctx: PlanContext) -> list[ReloadPlan]:
    """One plan per file, in order (nothing is written to the process).

    Every file is compiled first: the files of one reload share one symbol
    space, so a function or variable one of them adds can be used by another
    (the transaction gives each its final address once every block has one).

    Raises LayoutChanged when the new code would use data the program holds
    with another layout (types checked from DWARF).
    """
    units = _compile_units(paths, ctx)
    peers = _peer_symbols(units, ctx) if len(units) > 1 else {}
    plans = [
        plan_unit(unit, {name: i for name, i in peers.items() if i != index}, ctx)
        for index, unit in enumerate(units)
    ]
    mark = time.perf_counter()
    ctx.progress(paths[-1], Phase.TYPES)
    check_layouts(plans, ctx.arch, ctx.options.allow_layout_change, ctx.emit)
    lap(ctx.phases, "types", mark)
    ctx.progress(paths[-1], Phase.WRITE)
    return plans


@dataclass(frozen=True)
class _Unit:
    """One file of a reload, compiled (or a ``.o`` taken as is)."""

    path: Path
    index: int
    object_path: Path
    #: How it was compiled (None for a ``.o``) and the module it belongs to.
    command: CompileCommand | None
    module: RunningModule | None


def _compile_units(paths: Sequence[Path], ctx: PlanContext) -> list[_Unit]:
    """Every file of the reload compiled, several at once (one compiler per core).

    Commands are found and events emitted in the files' order; the first file
    (in that order) whose compile failed raises its error.
    """
    mark = time.perf_counter()
    found: list[tuple[Path, int, CompileCommand | None, RunningModule | None]] = []
    for index, path in enumerate(paths):
        if path.suffix == ".o":
            found.append((path, index, None, None))
            continue
        found_command, found_module = _find_command(path, ctx)
        if ctx.options.debug:
            from relive.toolchain.deoptimize import deoptimized

            found_command = deoptimized(found_command)
        prepare_layout_check(found_module, path)
        prepare_static_scopes(found_module, path)
        found.append((path, index, found_command, found_module))
    # Each file compiles once, or once per candidate when its flags are inferred;
    # all of them at once.
    tries = [
        _compile_tries(command, module, ctx) if command else [] for _, _, command, module in found
    ]
    jobs = [
        (attempt, ctx.scratch / f"{index}-{n}")
        for (_, index, _, _), attempts in zip(found, tries, strict=True)
        for n, attempt in enumerate(attempts)
    ]
    results = _compile_or_share(jobs, ctx)
    lap(ctx.phases, "compile", mark)
    units = []
    for (path, index, command, module), attempts in zip(found, tries, strict=True):
        if command is None or module is None:
            units.append(_Unit(path, index, path, None, None))
            continue
        outcomes, results = results[: len(attempts)], results[len(attempts) :]
        shared = any(was_shared for _, was_shared in outcomes)
        if len(attempts) == 1:
            command, obj_path = (
                attempts[0],
                _take_compiled(attempts[0], outcomes[0][0], ctx, shared),
            )
        else:
            tried = [(a, o) for a, (o, _) in zip(attempts, outcomes, strict=True)]
            command, obj_path = _infer(path, index, module, tried, ctx, shared)
        units.append(_Unit(path, index, obj_path, command, module))
    return units


def _compile_tries(
    command: CompileCommand, module: RunningModule | None, ctx: PlanContext
) -> list[CompileCommand]:
    """The commands to compile a source with: its own, or, when the build recorded
    no flags, the flags an earlier reload inferred or every candidate's."""
    from relive.patch.inference import cached_flags, candidate_flags, with_flags

    if (
        not command.flags_unknown
        or module is None
        or not module.image.has_symtab  # nothing to compare with (refused later)
        or ctx.options.new_file
        or ctx.options.debug
    ):
        return [command]
    cached = cached_flags(ctx.journal, command)
    if cached is not None:
        if _first_time(ctx, command.source, Topic.INFERRED):
            ctx.emit(
                Notice(
                    f"flags of {command.source.name}: {' '.join(cached)} "
                    "(inferred at an earlier reload)"
                )
            )
        return [with_flags(command, cached)]
    return [with_flags(command, flags) for flags in candidate_flags(command, module)]


def _infer(
    path: Path,
    index: int,
    module: RunningModule,
    compiled: list[tuple[CompileCommand, CompileResult | ReliveError]],
    ctx: PlanContext,
    shared: bool = False,
) -> tuple[CompileCommand, Path]:
    """The candidate under which most functions match the running code, its object,
    and the notice saying so; the answer is kept in the journal.  Compiles
    another process of the reload made (``shared``) were reported there."""
    from relive.patch.inference import (
        CF_PROTECTION,
        LEVELS,
        describe_inferred,
        inferred_part,
        lacks_landing_pads,
    )

    scored = [_score(path, module, command, result, ctx, shared) for command, result in compiled]
    candidates = [c for c in scored if c is not None]
    if not candidates:
        # None could be compared (e.g. each reaches data out of reach): go on at the
        # compiler's default level, whose plan says why.  A compile error is the
        # same at every level.
        command, outcome = next((c for c in compiled if LEVELS[1] in c[0].flags), compiled[0])
        if isinstance(outcome, ReliveError):
            raise outcome
        return command, _finish_compile(command, outcome, ctx, shared)
    # The best score; on a tie, the earlier candidate (LEVELS' order).
    best = max(candidates, key=lambda c: c.score.matched)
    if best.score.matched < best.score.total and lacks_landing_pads(
        best.plan, ctx.memory.read, ctx.arch.find_landing_pad_size
    ):
        retry = dataclasses.replace(best.command, flags=(*best.command.flags, CF_PROTECTION))
        mark = time.perf_counter()
        again, again_shared = _compile_or_share([(retry, ctx.scratch / f"{index}-cf")], ctx)[0]
        lap(ctx.phases, "compile", mark)
        other = _score(path, module, retry, again, ctx, again_shared)
        if other is not None and other.score.matched > best.score.matched:
            best = other
    command, result = best.command, best.result
    flags = inferred_part(command)
    if best.score.matched:
        ctx.journal.inferred_flags[str(command.source)] = list(flags)
        ctx.emit(Notice(describe_inferred(path.name, flags, best.score)))
    else:
        # No evidence (every function changed, or none is in the module): compile
        # as before inference existed, at the compiler's default level.
        best = next((c for c in candidates if LEVELS[1] in c.command.flags), candidates[0])
        command, result = best.command, best.result
        ctx.emit(
            Notice(
                f"flags of {path.name} are unknown and could not be inferred: no function "
                f"matches the running code at any of {' '.join(LEVELS)}; compiling with "
                f"{' '.join(inferred_part(command))} (pass --cflags)"
            )
        )
    return command, _finish_compile(command, result, ctx, shared)


@dataclass(frozen=True)
class _Candidate:
    """One compile of a source whose flags are being inferred, compared."""

    command: CompileCommand
    result: CompileResult
    plan: ReloadPlan
    score: Score


def _score(
    path: Path,
    module: RunningModule,
    command: CompileCommand,
    result: CompileResult | ReliveError,
    ctx: PlanContext,
    shared: bool,
) -> _Candidate | None:
    """A candidate's object compared with the running code (None: it did not
    compile, or could not be compared, e.g. it reaches data out of reach)."""
    from relive.patch.inference import inferred_part, score_plan

    if isinstance(result, ReliveError):
        return None
    if not shared:
        origin = f"candidate {' '.join(inferred_part(command))}"
        ctx.emit(Compiled(str(command.source), origin, result.command, result.milliseconds))
    try:
        plan = _plan_object(path, result.object_path, module, ctx, {})
    except ReliveError:
        return None
    if isinstance(plan, FarData):
        return None
    return _Candidate(command, result, plan, score_plan(plan))


def _compile_or_share(
    jobs: Sequence[tuple[CompileCommand, Path]], ctx: PlanContext
) -> list[tuple[CompileResult | ReliveError, bool]]:
    """Each job's result and whether another process of the reload compiled it.

    Without a :class:`SharedCompiles` each job compiles into its own folder; with
    one, a command compiles once, into the shared folder, and every process
    takes that object.
    """
    shared = ctx.shared
    if shared is None:
        return [(result, False) for result in _run_compiles(jobs, ctx)]
    commands = [command for command, _ in jobs]
    known = {command for command in commands if command in shared.results}
    fresh: list[tuple[CompileCommand, Path]] = []
    for command in dict.fromkeys(c for c in commands if c not in known):
        fresh.append((command, shared.scratch / f"shared-{len(shared.results) + len(fresh)}"))
    for (command, _), result in zip(fresh, _run_compiles(fresh, ctx), strict=True):
        shared.results[command] = result
    return [(shared.results[command], command in known) for command in commands]


#: Seconds between two :class:`Progress` events while compilers run.
PROGRESS_INTERVAL = 1.0


def _run_compiles(
    jobs: Sequence[tuple[CompileCommand, Path]], ctx: PlanContext
) -> list[CompileResult | ReliveError]:
    """Each job's result (or its error), in order; up to one compiler per core at once.

    A single compile runs in this thread, several on worker threads while this
    thread waits for them; either way this thread emits a :class:`Progress`
    event at the start and once a second (events only ever come from the
    caller's thread: renderers need not be thread-safe).
    """

    def run(
        job: tuple[CompileCommand, Path], on_wait: Callable[[], None] | None = None
    ) -> CompileResult | ReliveError:
        from relive.toolchain.compiler import compile_object

        command, out_dir = job
        out_dir.mkdir(parents=True, exist_ok=True)
        try:
            return compile_object(command, out_dir, on_wait, PROGRESS_INTERVAL)
        except ReliveError as error:
            return error

    if not jobs:
        return []
    _preload_analysis(ctx.arch)
    if len(jobs) == 1:
        # In this thread: Ctrl+C then stops the compiler at once (no worker to join).
        source = jobs[0][0].source
        ctx.progress(source, Phase.COMPILE)
        return [run(jobs[0], lambda: ctx.progress(source, Phase.COMPILE))]
    # Imported here: a reload of objects compiles nothing, and concurrent.futures
    # (with logging) is a noticeable part of start-up.
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(len(jobs), os.cpu_count() or 1)) as pool:
        futures = [pool.submit(run, job) for job in jobs]
        _wait_reporting(futures, [command.source for command, _ in jobs], ctx)
        return [future.result() for future in futures]


#: The thread importing the code analysis's disassembler (started once per process).
_preloading: list[threading.Thread] = []


def _preload_analysis(arch: Arch) -> None:
    """Import what the code analysis needs (``Arch.preload``) on another thread while
    the compiler runs: this process only waits for gcc meanwhile, and the import
    (capstone: some 30 ms) is then done when the frame check needs it."""
    if arch.preload is None or _preloading:
        return
    thread = threading.Thread(target=_quietly, args=(arch.preload,), daemon=True)
    _preloading.append(thread)
    thread.start()


def _quietly(preload: Callable[[], None]) -> None:
    # Missing: the analysis imports it again and reports it.
    with contextlib.suppress(ImportError):
        preload()


def _wait_reporting(
    futures: Sequence[Future[CompileResult | ReliveError]],
    sources: Sequence[Path],
    ctx: PlanContext,
) -> None:
    """Wait for every compile, saying which one runs at the start and once a second."""
    from concurrent.futures import FIRST_COMPLETED, wait

    pending = set(futures)
    while pending:
        running = next(s for f, s in zip(futures, sources, strict=True) if f in pending)
        ctx.progress(running, Phase.COMPILE)
        _done, pending = wait(pending, timeout=PROGRESS_INTERVAL, return_when=FIRST_COMPLETED)


def _peer_symbols(units: Sequence[_Unit], ctx: PlanContext) -> dict[str, int]:
    """Global functions and variables each file defines (name -> file index)."""
    peers: dict[str, int] = {}
    for unit in units:
        obj = ObjectFile.open(unit.object_path, expected_machines=(ctx.arch.elf_machine,))
        for symbol in obj.symbols:
            if symbol.is_defined and not symbol.is_local and not symbol.is_section:
                peers.setdefault(symbol.name, unit.index)
    return peers


def plan_unit(unit: _Unit, peers: Mapping[str, int], ctx: PlanContext) -> ReloadPlan:
    """Plan one compiled file; ``peers``: names other files of the reload define."""
    path, module, command = unit.path, unit.module, unit.command
    planned = _plan_object(path, unit.object_path, module, ctx, peers)
    if not isinstance(planned, FarData):
        return planned
    extra = ctx.arch.indirect_extern_data_flags.get(_family(command)) if command else None
    if command is None or not extra:
        raise FarDataReference(planned.names)
    # The program reaches these variables through its GOT (no copy relocation,
    # e.g. an LTO build); compile so that the new code does the same.
    if _first_time(ctx, command.source, Topic.INDIRECT_DATA):
        ctx.emit(
            Notice(
                f"{', '.join(planned.names)} out of direct reach: recompiling "
                f"{path.name} with {' '.join(extra)}"
            )
        )
    command = dataclasses.replace(command, flags=(*command.flags, *extra))
    mark = time.perf_counter()
    obj_path = _compile(command, ctx.scratch / str(unit.index), ctx)
    lap(ctx.phases, "compile", mark)
    return _expect_plan(_plan_object(path, obj_path, module, ctx, peers))


def announce(
    plans: list[ReloadPlan], reinit: Collection[str], emit: EventSink
) -> list[list[DataChange]]:
    """Say what the plans keep or change that is not a function; return, per plan,
    the variables whose new initial value ``--reinit`` copies in."""
    changes = [change for plan in plans for change in plan.initial_changed]
    chosen, unmatched = choose_reinit(changes, reinit)
    for plan in plans:
        for note in plan.notices:
            emit(Notice(note))
        for change in plan.initial_changed:
            emit(Notice(describe_initial_change(change, change in chosen)))
    if unmatched:
        emit(
            Notice(
                f"--reinit {', '.join(unmatched)}: no variable of the reloaded files by that "
                "name has a changed initial value; nothing copied"
            )
        )
    return [[c for c in plan.initial_changed if c in chosen] for plan in plans]


def reroute_too_small(plan: ReloadPlan, ctx: PlanContext) -> None:
    """Replace each changed function too small for an entry jump through its callers
    in the same file; raise UnsafePatch for one that has none there."""
    while True:
        found = find_too_small(
            plan.with_status(Decision.CHANGED), plan.module, ctx.memory, ctx.arch
        )
        if found is None:
            return
        tiny, running = found
        callers = plan.redirect_callers_instead(tiny)
        if not callers:
            assert tiny.old is not None
            elsewhere = find_callers(plan.module, tiny.old.address, ctx.arch)
            raise too_small_error(tiny, plan.module, running, ctx.arch, elsewhere)
        ctx.emit(
            Notice(
                f"{tiny.name} is too small for an entry jump: reloading its callers "
                f"{', '.join(callers)} instead (calls from other files or through "
                "pointers still reach the old code)"
            )
        )


def lap(phases: dict[str, float], name: str, since: float) -> None:
    """Add the milliseconds since ``since`` to phase ``name``."""
    phases[name] = phases.get(name, 0.0) + (time.perf_counter() - since) * 1000


def _expect_plan(planned: ReloadPlan | FarData) -> ReloadPlan:
    if isinstance(planned, FarData):
        raise FarDataReference(planned.names)
    return planned


def _plan_object(
    path: Path,
    obj_path: Path,
    module: RunningModule | None,
    ctx: PlanContext,
    peers: Mapping[str, int],
) -> ReloadPlan | FarData:
    mark = time.perf_counter()
    ctx.progress(path, Phase.OBJECT)
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
    ctx.progress(path, Phase.LINK)
    key = str(path.resolve())
    record = ctx.journal.sources.get(key)
    binder = Binder(
        obj,
        module,
        ctx.modules,
        record,
        ctx.memory.read,
        ctx.arch,
        call_function=lambda function: _call_in_target(ctx.pid, function),
        earlier=ctx.journal.added_globals(excluding=key),
        peers=peers,
        provisional=module.start,
    )
    fingerprints = fingerprints_running_now(ctx.journal, module)
    context = binding_context(ctx.journal, ctx.modules)
    planned = build_plan(
        key,
        obj,
        binder,
        ctx.arch,
        fingerprints,
        ctx.functions,
        redirect_all=ctx.options.debug,
        matches=usable_matches(record, context, peers),
        on_step=lambda: ctx.still(path, Phase.LINK),
        keys_context=context,
        known_keys=usable_keys(record, context, peers),
    )
    lap(ctx.phases, "link", mark)
    return planned


def _call_in_target(pid: int, function: int) -> int:
    """Run ``function()`` in the target (an IFUNC resolver nobody has run yet)."""
    with stop_all(pid) as stopped:
        return remote_call(stopped, function)


def _find_command(source: Path, ctx: PlanContext) -> tuple[CompileCommand, RunningModule]:
    """The compile command of ``source`` and the module it was built into."""
    from relive.toolchain.choice import get_compile_command
    from relive.toolchain.lto import without_lto

    ctx.progress(source, Phase.DEBUG_INFO)
    module, unit = ctx.modules[0], None
    for candidate in ctx.modules:
        unit = find_compile_unit(candidate.file, source)
        if unit is not None:
            module = candidate
            break
    command = without_lto(
        get_compile_command(
            source,
            cli_flags=ctx.options.cflags,
            compdb=ctx.options.compdb,
            compile_unit=unit,
            trust_build=ctx.options.trust_build,
        )
    )
    known = str(source.resolve()) in ctx.journal.sources  # loaded before (--new-file)
    if not ctx.options.new_file and not known:
        check_source_belongs(source, unit, command.origin == ORIGIN_COMPDB, ctx.modules)
    if _first_time(ctx, command.source, Topic.COMMAND):
        for note in command.notes:
            ctx.emit(Notice(note))
    return command, module


def _first_time(ctx: PlanContext, source: Path, topic: Topic) -> bool:
    """Whether the session has not said this about ``source`` yet (it has now)."""
    key = (source, topic)
    if key in ctx.announced:
        return False
    ctx.announced.add(key)
    return True


def _compile(command: CompileCommand, out_dir: Path, ctx: PlanContext) -> Path:
    compiled, shared = _compile_or_share([(command, out_dir)], ctx)[0]
    return _take_compiled(command, compiled, ctx, shared)


def _take_compiled(
    command: CompileCommand,
    compiled: CompileResult | ReliveError,
    ctx: PlanContext,
    shared: bool = False,
) -> Path:
    """Report one compile (its command, warnings and dependencies), or raise its error.

    A compile another process of the reload made (``shared``) was reported there.
    """
    if isinstance(compiled, ReliveError):
        raise compiled
    if not shared:
        ctx.emit(
            Compiled(str(command.source), command.origin, compiled.command, compiled.milliseconds)
        )
    return _finish_compile(command, compiled, ctx, shared)


def _finish_compile(
    command: CompileCommand, compiled: CompileResult, ctx: PlanContext, shared: bool
) -> Path:
    """Pass on a compile's warnings (unless another process did) and dependencies;
    its object."""
    if compiled.warnings.strip() and not shared:
        ctx.emit(CompilerWarnings(str(command.source), compiled.warnings))
    ctx.dependencies[command.source] = compiled.dependencies
    return compiled.object_path


def _family(command: CompileCommand) -> str:
    return "clang" if "clang" in Path(command.compiler).name else "gcc"

"""``relive``: the command line.  argparse, one small function per command.

Heavy modules are imported inside the commands that use them: ``relive
--help`` and ``relive reload`` load neither the watch loop nor (when piped) rich.
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from relive.cli.lines import write_line
from relive.cli.render import Renderer
from relive.cli.targets import resolve_pids
from relive.errors import ReliveError
from relive.events import PatchStatus, Verdict
from relive.patch.options import ReloadOptions

#: Allocations between two young collections of the cycle collector (default 700).
GC_YOUNG_THRESHOLD = 50_000

#: Signals ``run --on-signal`` accepts as the reload trigger.
_TRIGGERS = ("INT", "QUIT", "HUP", "USR1", "USR2", "TERM")


def _add_target(
    parser: argparse.ArgumentParser, every: bool = False, required: bool = True
) -> None:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("-p", "--pid", type=int, help="process id of the target")
    group.add_argument(
        "-n",
        "--name",
        metavar="NAME",
        help="process name (as pgrep matches it); must match one process unless --all",
    )
    if every:
        parser.add_argument(
            "--all",
            dest="every",
            action="store_true",
            help="every process running the same executable (e.g. pre-forked workers), "
            "each one on its own",
        )


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cflags", help="compile flags to use instead of the recorded ones")
    parser.add_argument("-I", dest="includes", action="append", default=[], metavar="DIR")
    parser.add_argument("-D", dest="defines", action="append", default=[], metavar="MACRO")
    parser.add_argument("--compdb", type=Path, help="path to compile_commands.json")
    parser.add_argument(
        "--trust-build",
        action="store_true",
        help="use a compile_commands.json or compiler that another user controls "
        "(its commands run with relive's rights)",
    )
    parser.add_argument(
        "--allow-layout-change",
        action="store_true",
        help="reload even where a type of data the program holds changed its layout "
        "(you convert that data yourself)",
    )
    parser.add_argument(
        "--no-move",
        dest="move_frames",
        action="store_false",
        help="never move a running frame into the new code (it finishes in the old code)",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    # Also accepted after the command; SUPPRESS keeps the top-level value otherwise.
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="one JSON object per event"
    )


def _add_watching(parser: argparse.ArgumentParser) -> None:
    _add_flags(parser)
    _add_reinit(parser)
    parser.add_argument(
        "--debounce",
        type=int,
        default=None,
        metavar="MS",
        help="end a burst of saves only after MS ms without file events (several saves "
        "made within it are one reload); default: as soon as every file written is "
        "closed or renamed into place, else after 20 ms without events",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="also print each function and compile"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relive", description="Hot-reload C functions into a running Linux process."
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per event")
    parser.add_argument(
        "--no-server",
        action="store_true",
        help="run the command in this process, without the command server (RELIVE_SERVER=0)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reload = sub.add_parser("reload", help="recompile files and redirect changed functions")
    _add_target(reload, every=True)
    reload.add_argument("files", nargs="+", metavar="FILE", help=".c sources or .o objects")
    reload.add_argument(
        "--function",
        "-f",
        action="append",
        dest="functions",
        metavar="NAME",
        help="only redirect these functions (repeatable)",
    )
    reload.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    _add_reinit(reload)
    reload.add_argument(
        "--new-file",
        action="store_true",
        help="load a file the program was not built from: it may only add functions "
        "(or replace those named with --function)",
    )
    reload.add_argument(
        "--debug",
        action="store_true",
        help="hot-deoptimize: recompile at -O0 -g3 and redirect every function, for a debugger",
    )
    _add_flags(reload)
    reload.add_argument("--timings", action="store_true", help="print time per phase")
    reload.set_defaults(run=_cmd_reload)

    watch = sub.add_parser("watch", help="reload each source file of a running program on save")
    _add_target(watch, every=True)
    watch.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files or folders to watch (default: the program's sources, from its DWARF)",
    )
    watch.add_argument(
        "--undo-on-exit", action="store_true", help="revert this watch's patches when it ends"
    )
    _add_watching(watch)
    watch.set_defaults(run=_cmd_watch)

    run = sub.add_parser(
        "run",
        help="start a program and reload its sources on save",
        usage="relive run [--watch PATH...] [--on-signal SIG] [options] -- PROGRAM [ARGS...]",
    )
    run.add_argument(
        "--watch",
        dest="paths",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        help="files or folders to watch (default: the program's sources)",
    )
    run.add_argument(
        "--on-signal",
        metavar="SIG",
        choices=_TRIGGERS,
        type=lambda s: s.upper().removeprefix("SIG"),
        help="reload what changed when relive gets this signal instead of on save "
        "(INT: Ctrl+C reloads, Ctrl+\\ quits)",
    )
    _add_watching(run)
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="-- PROGRAM [ARGS...]")
    run.set_defaults(run=_cmd_run)

    doctor = sub.add_parser("doctor", help="check what reloading needs, with fixes")
    _add_target(doctor, required=False)
    doctor.set_defaults(run=_cmd_doctor)

    undo = sub.add_parser("undo", help="restore the original entry of patched functions")
    _add_target(undo, every=True)
    undo.add_argument("functions", nargs="*", metavar="FUNCTION")
    undo.set_defaults(run=_cmd_undo)

    status = sub.add_parser("status", help="list what is patched")
    _add_target(status, every=True)
    status.set_defaults(run=_cmd_status)

    from relive.cli.debugging import add_commands

    add_commands(sub)

    server = sub.add_parser("server", help="the command server: its state, or stop it")
    server.add_argument("action", choices=("status", "stop"))
    server.set_defaults(run=_cmd_server)

    for command in (reload, watch, run, doctor, undo, status, server):
        _add_common(command)
    return parser


_PARSERS: list[argparse.ArgumentParser] = []


def command_parser() -> argparse.ArgumentParser:
    """The command line's parser, built once per process: the command server builds
    it before it forks, so that its children only parse (parsing changes nothing in
    the parser)."""
    if not _PARSERS:
        _PARSERS.append(_build_parser())
    return _PARSERS[0]


def _add_reinit(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--reinit",
        action="append",
        default=[],
        metavar="NAME",
        help="copy the new initial value of variable NAME into the running program (repeatable)",
    )


def _cli_flags(args: argparse.Namespace) -> list[str] | None:
    flags = shlex.split(args.cflags) if args.cflags else []
    flags += [f"-I{d}" for d in args.includes] + [f"-D{d}" for d in args.defines]
    return flags or None


def _one_pid(args: argparse.Namespace) -> int:
    return resolve_pids(args.pid, args.name, every=False)[0]


def _cmd_reload(args: argparse.Namespace, out: Renderer) -> int:
    import relive

    out.show_timings = args.timings
    pids = resolve_pids(args.pid, args.name, args.every)
    options = ReloadOptions(
        functions=args.functions,
        dry_run=args.dry_run,
        debug=args.debug,
        cflags=_cli_flags(args),
        compdb=args.compdb,
        trust_build=args.trust_build,
        reinit=args.reinit,
        new_file=args.new_file,
        allow_layout_change=args.allow_layout_change,
        move_frames=args.move_frames,
    )
    if len(pids) == 1:
        relive.attach(pids[0], on_event=out, progress=True).reload(args.files, options)
        return 0
    from relive.cli.together import reload_processes

    return reload_processes(pids, args.files, options, out)


def _each_process(pids: list[int], act: Callable[[int], None], out: Renderer) -> int:
    """``act`` on each process, each one on its own: one failing leaves the others done."""
    from relive.events import TargetProcess
    from relive.process.procfs import get_process_name

    if len(pids) == 1:
        act(pids[0])
        return 0
    code = 0
    for pid in pids:
        try:
            out(TargetProcess(pid, get_process_name(pid)))
            act(pid)
        except ReliveError as error:
            out.error(error, pid=pid)
            code = code or error.exit_code
    return code


def _cmd_watch(args: argparse.Namespace, out: Renderer) -> int:
    from relive.cli.watching import watch_process

    return watch_process(args, out, _cli_flags(args))


def _cmd_run(args: argparse.Namespace, out: Renderer) -> int:
    from relive.cli.watching import run_program

    return run_program(args, out, _cli_flags(args))


def _cmd_doctor(args: argparse.Namespace, out: Renderer) -> int:
    from relive.cli.doctor import run_checks

    pid = _one_pid(args) if args.pid is not None or args.name else None
    failed = False
    for check in run_checks(pid):
        out(check)
        failed = failed or check.verdict is Verdict.FAIL
    return 1 if failed else 0


def _cmd_undo(args: argparse.Namespace, out: Renderer) -> int:
    import relive

    def undo(pid: int) -> None:
        restored = relive.attach(pid, on_event=out).undo(args.functions or None)
        if not restored and not out.json_lines:
            write_line(sys.stdout, f"pid {pid}: nothing to undo")

    return _each_process(resolve_pids(args.pid, args.name, args.every), undo, out)


def _cmd_status(args: argparse.Namespace, out: Renderer) -> int:
    import relive

    def status(pid: int) -> None:
        rows = relive.attach(pid, on_event=out).status()
        if out.json_lines:
            for row in rows:
                out(row)
        elif not rows:
            write_line(sys.stdout, f"pid {pid}: nothing patched")
        else:
            write_line(sys.stdout, "\n".join(map(str, [PatchStatus.HEADER, *rows])))

    return _each_process(resolve_pids(args.pid, args.name, args.every), status, out)


def _cmd_server(args: argparse.Namespace, out: Renderer) -> int:
    from relive.cli.servercontrol import control

    return control(args.action, out)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 done, see README for the others)."""
    parser = command_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    # `run` leaves stdout to the program: relive's own lines go to stderr.
    out = Renderer(json_lines=args.json, stream=sys.stderr if args.command == "run" else None)
    try:
        code: int = args.run(args, out)
        return code
    except ReliveError as error:
        out.error(error)
        return error.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`relive watch ... | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    finally:
        out.close()  # no live line left behind, whatever ended the command


def entry_point() -> None:
    """Entry of ``python -m relive.cli.main``: the command in this process.

    Exits without the interpreter's teardown (30-70 ms of module and object
    clean-up that nobody waits for in an edit loop): the streams are flushed
    first, and every target was released before ``main`` returned.
    """
    code = run_command()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_command(argv: Sequence[str] | None = None) -> int:
    """``main`` as the command runs it: the code ``dataclasses`` generates
    compiled once, not at every start (``codecache``)."""
    from relive.cli.codecache import compiled_once

    # A command's imports create tens of thousands of objects the cycle collector
    # tracks (classes, functions, code): at the default threshold (700) it went
    # over them some 50 times in a reload of a .o (2% of its instructions).  Cyclic
    # garbage is collected as before, in larger batches.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    with compiled_once():
        return main(argv)

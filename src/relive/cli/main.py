"""``relive``: the command line.  argparse, one small function per command."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from relive.cli.render import Renderer
from relive.errors import ReliveError

Command = Callable[[argparse.Namespace, Renderer], int]


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-p", "--pid", type=int, required=True, help="process id of the target")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relive", description="Hot-reload C functions into a running Linux process."
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per event")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    reload = sub.add_parser("reload", help="recompile files and redirect changed functions")
    _add_target(reload)
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
    reload.add_argument("--cflags", help="compile flags to use instead of the recorded ones")
    reload.add_argument("-I", dest="includes", action="append", default=[], metavar="DIR")
    reload.add_argument("-D", dest="defines", action="append", default=[], metavar="MACRO")
    reload.add_argument("--compdb", type=Path, help="path to compile_commands.json")
    reload.add_argument("--timings", action="store_true", help="print time per phase")
    reload.set_defaults(run=_cmd_reload)

    undo = sub.add_parser("undo", help="restore the original entry of patched functions")
    _add_target(undo)
    undo.add_argument("functions", nargs="*", metavar="FUNCTION")
    undo.set_defaults(run=_cmd_undo)

    status = sub.add_parser("status", help="list what is patched")
    _add_target(status)
    status.set_defaults(run=_cmd_status)
    return parser


def _cli_flags(args: argparse.Namespace) -> list[str] | None:
    flags = shlex.split(args.cflags) if args.cflags else []
    flags += [f"-I{d}" for d in args.includes] + [f"-D{d}" for d in args.defines]
    return flags or None


def _cmd_reload(args: argparse.Namespace, out: Renderer) -> int:
    import relive

    out.show_timings = args.timings
    session = relive.attach(args.pid, on_event=out)
    session.reload(
        args.files,
        functions=args.functions,
        dry_run=args.dry_run,
        cflags=_cli_flags(args),
        compdb=args.compdb,
    )
    return 0


def _cmd_undo(args: argparse.Namespace, out: Renderer) -> int:
    import relive

    session = relive.attach(args.pid, on_event=out)
    restored = session.undo(args.functions or None)
    if not restored and not out.json_lines:
        print("nothing to undo")
    return 0


def _cmd_status(args: argparse.Namespace, out: Renderer) -> int:
    import relive

    rows = relive.attach(args.pid).status()
    if out.json_lines:
        for row in rows:
            out.write_json({"kind": "patch", **row.__dict__})
        return 0
    if not rows:
        print(f"pid {args.pid}: nothing patched")
    for row in rows:
        when = time.strftime("%H:%M:%S", time.localtime(row.updated))
        state = "active" if row.active else "NOT IN MEMORY (overwritten?)"
        print(
            f"{row.name:24} {row.address:#x} -> {row.target:#x}  {row.source}  "
            f"x{row.count}  {when}  {state}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 done, see README for the others)."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    out = Renderer(json_lines=args.json)
    try:
        code: int = args.run(args, out)
        return code
    except ReliveError as error:
        out.error(error)
        return error.exit_code
    except KeyboardInterrupt:
        return 130


def entry_point() -> None:
    """Console-script entry."""
    sys.exit(main())

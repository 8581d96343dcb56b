"""``relive gdb`` and ``relive clean``: debuggers see the code relive loaded.

``relive gdb -p PID`` starts gdb attached to the program with the debug object
of every live reload loaded; ``relive gdb --core CORE EXE`` does the same for a
core dump; ``relive gdb --print-script`` prints the gdb script that adds a
``relive-load`` command to a gdb already running.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
from pathlib import Path

from relive.cli.lines import write_line
from relive.cli.render import Renderer
from relive.cli.targets import resolve_pids
from relive.errors import ReliveError, UsageError

_SCRIPT = Path(__file__).with_name("gdb_relive.py")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``gdb`` and ``clean``."""
    gdb = sub.add_parser(
        "gdb",
        help="start gdb on the program (or a core) with the reloaded code's symbols",
        usage="relive gdb (-p PID | -n NAME | --core CORE EXE | --print-script) [GDB ARGS...]",
    )
    target = gdb.add_mutually_exclusive_group(required=True)
    target.add_argument("-p", "--pid", type=int, help="process id of the target")
    target.add_argument("-n", "--name", metavar="NAME", help="process name (one process)")
    target.add_argument(
        "--core", nargs=2, metavar=("CORE", "EXE"), help="a core dump and its executable"
    )
    target.add_argument(
        "--print-script", action="store_true", help="print the gdb script (relive-load PID)"
    )
    gdb.add_argument("--list", action="store_true", help=argparse.SUPPRESS)
    gdb.add_argument("gdb_args", nargs=argparse.REMAINDER, metavar="GDB ARGS")
    gdb.set_defaults(run=cmd_gdb)

    clean = sub.add_parser("clean", help="remove debug objects of processes that have exited")
    clean.set_defaults(run=cmd_clean)


def relive_command() -> str:
    """How gdb's script runs this relive (the same interpreter and package)."""
    return shlex.join([sys.executable, "-m", "relive"])


def gdb_script() -> str:
    """The gdb script, with the command that runs this relive written in."""
    text = _SCRIPT.read_text()
    return text.replace('RELIVE_COMMAND = "relive"', f"RELIVE_COMMAND = {relive_command()!r}")


def cmd_gdb(args: argparse.Namespace, out: Renderer) -> int:
    """Print the script, list debug objects, or exec gdb with them loaded."""
    if args.print_script:
        sys.stdout.write(gdb_script())
        return 0
    if args.list:
        return _list_objects(args)
    gdb = shutil.which("gdb")
    if gdb is None:
        raise UsageError("gdb is not installed", hint="install gdb (apt-get install gdb)")
    if args.core:
        from relive.elf.core import read_core_pid

        core, exe = args.core
        pid = read_core_pid(core)
        argv = [gdb, "-q", exe, core]
    else:
        pid = resolve_pids(args.pid, args.name, every=False)[0]
        argv = [gdb, "-q", "-p", str(pid)]
    extra = args.gdb_args[1:] if args.gdb_args[:1] == ["--"] else args.gdb_args
    argv += ["-x", str(_SCRIPT), "-ex", f"relive-load {pid}", *extra]
    env = dict(os.environ, RELIVE_COMMAND=relive_command())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(gdb, argv, env)


def _list_objects(args: argparse.Namespace) -> int:
    from relive.patch.debugfiles import list_debug_objects
    from relive.process.procfs import get_start_time

    if args.pid is None:
        raise UsageError("--list needs -p PID", hint="relive gdb --list -p PID")
    try:
        start: int | None = get_start_time(args.pid)
    except ReliveError:
        start = None  # gone: the debug objects of its last run (a core)
    for obj in list_debug_objects(args.pid, start):
        if obj.live and obj.path.exists():  # a big one may still be being written
            write_line(sys.stdout, str(obj.path))
    return 0


def cmd_clean(args: argparse.Namespace, out: Renderer) -> int:
    """Remove the debug objects and journals of processes that are gone."""
    from relive.patch.debugfiles import clean

    removed = clean()
    write_line(sys.stdout, f"removed the debug files of {len(removed)} exited process(es)")
    return 0

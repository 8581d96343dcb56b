"""relive's commands for gdb: load the debug objects of a process's reloads.

This file runs inside gdb's own Python (it is not imported by relive).  Load it
into a gdb session with ``relive gdb --print-script > relive-gdb.py`` and
``source relive-gdb.py``; ``relive gdb`` sources it by itself.  Then::

    (gdb) relive-load            # the reloads of the process (or core) being debugged
    (gdb) relive-load 4242       # ... of process 4242

It asks relive (``relive gdb --list -p PID``) which debug objects are live, so
the rules about which reloads count stay in one place, and adds each with
``add-symbol-file`` (whose addresses are in the file itself).
"""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
from typing import Any

try:
    gdb: Any = importlib.import_module("gdb")
except ImportError:  # imported outside gdb (a listing of relive's modules): nothing to do
    gdb = None

#: How to run relive; ``relive gdb --print-script`` writes the absolute command here,
#: and ``relive gdb`` passes it in $RELIVE_COMMAND.
RELIVE_COMMAND = "relive"


if gdb is not None:

    class ReliveLoad(gdb.Command):  # type: ignore[misc]
        """relive-load [PID]: load the debug objects of PID's live reloads.

        Without PID: the process being debugged (or the one whose core is loaded).
        """

        def __init__(self) -> None:
            super().__init__("relive-load", gdb.COMMAND_FILES)

        def invoke(self, argument: str, from_tty: bool) -> None:
            words = shlex.split(argument)
            pid = words[0] if words else str(gdb.selected_inferior().pid)
            if not pid.isdigit() or pid == "0":
                raise gdb.GdbError("relive-load: no process: give its PID")
            command = shlex.split(os.environ.get("RELIVE_COMMAND", RELIVE_COMMAND))
            found = subprocess.run(
                [*command, "gdb", "--list", "-p", pid], capture_output=True, text=True, check=False
            )
            if found.returncode != 0:
                raise gdb.GdbError(found.stderr.strip() or f"relive exited with {found.returncode}")
            paths = [line for line in found.stdout.splitlines() if line]
            confirm = gdb.parameter("confirm")
            gdb.execute("set confirm off")
            try:
                for path in paths:
                    gdb.execute(f"add-symbol-file {path}", to_string=True)
            finally:
                gdb.execute(f"set confirm {'on' if confirm else 'off'}")
            print(f"relive: loaded {len(paths)} reload(s) of pid {pid}")

    ReliveLoad()

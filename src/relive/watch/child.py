"""``relive run``: start the program as relive's child and decide who gets which signal.

Save-triggered (the default): the program runs in relive's process group, as
any command would, so the terminal's Ctrl+C, Ctrl+\\ and Ctrl+Z reach it
directly.  relive itself ignores SIGINT and SIGQUIT (they are the program's
business) and ends when the program ends; SIGTERM and SIGHUP sent to relive
are passed on to the program.

``--on-signal INT`` (or QUIT): the terminal's key must reach relive and *not*
the program, and the kernel sends it to the whole foreground process group.
So the program is started in a process group of its own: the terminal's
signals reach only relive, which reloads on the trigger signal and passes
the others (SIGINT or SIGQUIT, SIGTERM, SIGHUP) on to the program, and stops and
continues it with relive on Ctrl+Z.  A signal sent to the program's own pid
still reaches it, with whatever handler it installed.  The price: the program
is not in the terminal's foreground group, so reading from the terminal
would stop it (SIGTTIN); give such a program its input by redirection.
Other trigger signals (USR1, HUP...) are not sent by the terminal: the
program then stays in relive's group.

The program is told to get SIGTERM should relive die first (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

from relive.errors import ReliveError, UsageError
from relive.events import TargetExited
from relive.process.procfs import is_alive, read_maps
from relive.watch.signals import signal_name

__all__ = ["ChildProgram", "wait_for_loader"]

_PR_SET_PDEATHSIG = 1
#: Signals the terminal sends to its foreground process group.
TERMINAL_SIGNALS = frozenset({signal.SIGINT, signal.SIGQUIT})


def _die_with_parent_hook() -> Callable[[], None]:
    """A pre-exec hook asking for SIGTERM when relive dies (libc resolved before the fork)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def hook() -> None:
        # Runs in the child between fork and exec: only the prctl system call.
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return hook


class ChildProgram:
    """The program ``relive run`` started; its stdin, stdout and stderr are relive's."""

    def __init__(self, argv: Sequence[str], own_group: bool) -> None:
        if not argv:
            raise UsageError("no program to run", "relive run [OPTIONS] -- PROGRAM [ARGS...]")
        self.argv = list(argv)
        self.own_group = own_group
        try:
            self.proc = subprocess.Popen(
                self.argv,
                process_group=0 if own_group else None,
                preexec_fn=_die_with_parent_hook(),
            )
        except OSError as e:
            raise UsageError(
                f"cannot run {argv[0]}: {e.strerror}", "check the program's path"
            ) from e
        self._exit: TargetExited | None = None

    @property
    def pid(self) -> int:
        """The program's process id."""
        return self.proc.pid

    def send(self, signum: int) -> None:
        """Send the program a signal (nothing if it is gone)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signum)

    def suspend_with_relive(self, signum: int) -> None:
        """Ctrl+Z while the program has its own group: stop it, stop relive, continue both."""
        self.send(signal.SIGSTOP)
        previous = signal.signal(signal.SIGTSTP, signal.SIG_DFL)
        try:
            os.kill(os.getpid(), signal.SIGTSTP)  # relive stops here until `fg`/`bg`
        finally:
            signal.signal(signal.SIGTSTP, previous)
        self.send(signal.SIGCONT)

    def reap(self, pid: int) -> TargetExited:
        """The program's exit, reaped (call once /proc says it exited)."""
        if self._exit is None:
            code = self.proc.wait()
            if code < 0:
                self._exit = TargetExited(pid, 128 - code, f"killed by {signal_name(-code)}")
            else:
                self._exit = TargetExited(pid, code, f"exit status {code}")
        return self._exit

    def exit_status(self) -> int:
        """The status to exit with: the program's, 128+N if signal N killed it."""
        status = self.reap(self.pid).status
        return 0 if status is None else status

    def terminate(self, grace_s: float = 2.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``grace_s``; reaps it."""
        self.send(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.proc.wait()


def wait_for_loader(pid: int, timeout_s: float = 1.0) -> None:
    """Wait (briefly) until the dynamic loader has mapped the program's libraries.

    A just-started program's map first holds only the executable and ld.so;
    its shared libraries, whose sources a watch includes, come a moment later.
    Reads /proc/PID/maps only.
    """
    deadline = time.monotonic() + timeout_s
    previous: list[str] | None = None
    while time.monotonic() < deadline and is_alive(pid):
        try:
            files = sorted({m.path for m in read_maps(pid) if m.is_file_backed})
        except ReliveError:  # it exited meanwhile
            return
        loader = [f for f in files if "/ld-linux" in f or "/ld-musl" in f]
        settled = not loader or len(files) > 2
        if settled and files == previous:
            return
        previous = files
        time.sleep(0.01)

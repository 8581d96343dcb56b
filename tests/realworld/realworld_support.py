"""Helpers for the real-program tests: free ports, relive's command line, its dry runs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port on 127.0.0.1 that nothing uses now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Connection:
    """One TCP connection to a server on 127.0.0.1 that stays open across reloads:
    ``sock`` to send, ``file`` to read its replies."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@dataclass
class Reload:
    """What ``relive --json reload`` returned and printed (one JSON event per line)."""

    returncode: int
    output: str

    @property
    def events(self) -> list[dict[str, Any]]:
        """The JSON events, in order."""
        events = []
        for line in self.output.splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        return events

    def names(self, kind: str) -> list[str]:
        """The function names of the events of one kind ("redirected", "unchanged", ...)."""
        return [e["name"] for e in self.events if e.get("kind") == kind and "name" in e]

    def compiled(self) -> dict[str, Any]:
        """The "compiled" event: the command relive ran and where its flags came from."""
        found = [e for e in self.events if e.get("kind") == "compiled"]
        assert len(found) == 1, f"expected one compile:\n{self.output}"
        return found[0]


def relive_reload(pid: int, source: Path, *options: str, timeout: float = 300) -> Reload:
    """Run ``relive --json reload -p PID SOURCE`` as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "relive", "--json", "reload", "-p", str(pid), *options, str(source)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Reload(proc.returncode, proc.stdout)


def assert_reloaded(result: Reload, function: str, own_flags: Sequence[str] = ()) -> None:
    """The reload succeeded and redirected ``function``, compiled with the build's own flags.

    relive must have found the flags itself in the compile_commands.json that bear
    wrote (the test types none); ``own_flags`` must all be among them.
    """
    assert result.returncode == 0, f"relive reload failed:\n{result.output}"
    compiled = result.compiled()
    assert compiled["flags_origin"] == "compile_commands.json", compiled
    missing = [flag for flag in own_flags if flag not in compiled["command"]]
    assert not missing, f"flags {missing} not in {compiled['command']}"
    assert function in result.names("redirected"), result.output


def dry_run(pid: int, sources: list[Path]) -> Reload:
    """``relive --json reload --dry-run`` of every source at once.

    ``--trust-build``: the cached trees may belong to the user who built them first.
    """
    argv = [sys.executable, "-m", "relive", "--json", "reload", "--dry-run", "--trust-build"]
    proc = subprocess.run(
        [*argv, "-p", str(pid), *map(str, sources)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1200,
        check=False,
    )
    return Reload(proc.returncode, proc.stdout)


def assert_nothing_redirected(result: Reload, at_least: int) -> None:
    """The dry run succeeded, redirected nothing and found ``at_least`` functions unchanged."""
    assert result.returncode == 0, result.output[-3000:]
    assert result.names("redirected") == [], result.names("redirected")
    assert len(result.names("unchanged")) >= at_least

"""The command server's tests (test_server.py, test_server_attacks.py): a server in a
private state directory, and the program they reload."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from support import RELIVE, VALUE_PROG, SpawnFactory, Target, compile_c, remember_maps, wait_until

#: VALUE_PROG with 600 more functions: gcc -O2 takes a few seconds, long enough to
#: interrupt a reload while it compiles.
SLOW_PROG = VALUE_PROG + "".join(
    f"__attribute__((noinline)) long f{i}(long x) {{ long s = 0; "
    f"for (long j = 0; j < x; j++) s += (j * {i}) ^ (s >> 3) + j / (x + {i}); return s; }}\n"
    for i in range(600)
)


class Server:
    """Commands run with the server on, in one private state directory."""

    def __init__(self, state: Path, env: dict[str, str]) -> None:
        self.state = state
        self.env = env

    def run(
        self, *argv: str, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*RELIVE, *argv],
            env=env or self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def start(self, *argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*RELIVE, *argv],
            env=env or self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def info(self) -> dict[str, Any]:
        done = self.run("--json", "server", "status")
        assert done.returncode == 0, done.stderr
        event: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        assert event["kind"] == "server"
        return event

    def wait_up(self, other_than: int = 0) -> dict[str, Any]:
        """The server's state once one (other than pid ``other_than``) listens."""
        found: dict[str, Any] = {}

        def up() -> bool:
            if not (self.state / "server.sock").exists():
                return False
            found.update(self.info())
            return found["pid"] not in (0, other_than)

        wait_until(up, timeout=60, what="the command server listens")
        return found

    def processes(self) -> list[int]:
        """Servers started for this state directory (found by their environment)."""
        marker = f"RELIVE_STATE_DIR={self.state}\0".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if b"relive.cli.server" in cmdline and marker in environ:
                found.append(int(entry.name))
        return found


def edited(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "prog.c"
    path.write_text(source.replace("return table[0];", "return table[0] + 1;"))
    return path


def value_prog(tmp_path: Path, source: str = VALUE_PROG) -> Path:
    return compile_c(tmp_path, source, flags=("-g", "-O2" if source is SLOW_PROG else "-O0"))


def running_value(spawn: SpawnFactory, exe: Path) -> Target:
    target = spawn([exe])
    target.wait_for(r"^value 1$")
    return remember_maps(target)

"""`relive doctor`: each check with its verdict and fix; exit 0 only when none fails."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from support import RELIVE, SpawnFactory, compile_c

PROG = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int value(void) { return 1; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("value=%d\n", value()); usleep(50000); }
}
"""


def doctor(*args: str | int) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run `relive --json doctor ARGS`; return the exit code and the checks by name."""
    proc = subprocess.run(
        [*RELIVE, "--json", "doctor", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    checks = {}
    for line in proc.stdout.splitlines():
        event = json.loads(line)
        assert event["kind"] == "check", event
        checks[event["name"]] = event
    return proc.returncode, checks


def test_doctor_passes_a_good_target_and_says_where_flags_come_from(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target = spawn([compile_c(tmp_path, PROG)])
    target.wait_for("value=1")
    code, checks = doctor("-p", target.pid)
    assert code == 0, checks
    for name in ("ptrace scope", "ptrace capability", "ptrace attach", "symbols", "debug info"):
        assert checks[name]["verdict"] == "ok", checks[name]
    assert checks["compiler gcc"]["verdict"] == "ok"
    assert checks["/proc/PID/mem"]["verdict"] == "ok"
    flags = checks["flags prog.c"]
    assert flags["verdict"] == "warn" and "DWARF" in flags["detail"]
    assert "bear -- make" in flags["fix"]
    target.wait_for("value=1")  # the trial stop left it running

    (tmp_path / "compile_commands.json").write_text(
        json.dumps(
            [{"directory": str(tmp_path), "file": "prog.c", "arguments": ["gcc", "-g", "-O0"]}]
        )
    )
    code, checks = doctor("-p", target.pid)
    assert code == 0
    assert checks["flags prog.c"]["verdict"] == "ok"
    assert "compile_commands.json" in checks["flags prog.c"]["detail"]


def test_doctor_fails_a_stripped_target(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, PROG, flags=("-O0", "-s"))
    target = spawn([exe])
    target.wait_for("value=1")
    code, checks = doctor("-p", target.pid)
    assert code == 1
    assert checks["symbols"]["verdict"] == "fail"
    assert "stripped" in checks["symbols"]["detail"]
    assert checks["symbols"]["fix"]


def test_doctor_without_a_process_checks_the_machine() -> None:
    code, checks = doctor()
    assert checks["compiler gcc"]["verdict"] == "ok"
    assert "ptrace scope" in checks
    assert checks["program"]["verdict"] == "skip"
    assert code == (1 if any(c["verdict"] == "fail" for c in checks.values()) else 0)


def test_doctor_plain_output_shows_verdict_and_fix(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([compile_c(tmp_path, PROG)])
    target.wait_for("value=1")
    proc = subprocess.run(
        [*RELIVE, "doctor", "-p", str(target.pid)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0
    assert "OK   ptrace attach: stopped and released all 1 thread" in proc.stdout
    assert "WARN flags prog.c: from DWARF only" in proc.stdout
    assert "     fix: write a compile_commands.json" in proc.stdout

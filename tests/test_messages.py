"""What relive says is what happened: usage errors, dry runs, status and undo (issue 11 §6)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

import relive
from relive.cli.main import main
from relive.events import FlagsFromDwarf, WatchStopped
from relive.patch.journal import journal_path
from relive.process.permissions import _refused_to_root
from relive.process.procfs import get_start_time
from support import (
    RELIVE,
    VALUE_PROG,
    SpawnFactory,
    Target,
    assert_untouched,
    compile_c,
    run_cli,
)


def test_an_unknown_function_is_a_usage_error_naming_close_ones(
    running: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "prog.c"
    source.write_text(source.read_text().replace("return table[0];", "return table[1];"))
    code, err = run_cli(
        capsys, "reload", "-p", str(running.pid), "--function", "valeu", str(source)
    )
    assert code == 2, err
    assert "no function valeu in prog.c" in err
    assert "did you mean value?" in err
    assert_untouched(running)


def test_a_dry_run_prints_the_plan_in_words(
    running: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "prog.c"
    source.write_text(
        source.read_text().replace("return table[0];", "return table[1];")
        + "int added(void) { return 5; }\n"
    )
    code, out = run_cli_out(capsys, "reload", "--dry-run", "-p", str(running.pid), str(source))
    assert code == 0
    assert re.search(r"^would redirect value \(at 0x[0-9a-f]+\)$", out, re.M), out
    assert re.search(r"^would add new function added$", out, re.M), out
    assert "0x0" not in out
    assert_untouched(running)


def run_cli_out(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run relive's CLI in this process; return its exit code and its stdout."""
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_compiler_warnings_are_shown(
    running: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "prog.c"
    source.write_text('#warning "mind the gap"\n' + source.read_text())
    code, out = run_cli_out(capsys, "reload", "--dry-run", "-p", str(running.pid), str(source))
    assert code == 0
    assert re.search(r"prog\.c:1:\d+: warning: #warning .*mind the gap", out), out


def test_grammar_of_one_function_kept_by_watch() -> None:
    one = str(WatchStopped("stopped", [], ["value"]))
    assert "1 reloaded function stays in place (--undo-on-exit reverts it)" in one
    two = str(WatchStopped("stopped", [], ["value", "tick"]))
    assert "2 reloaded functions stay in place (--undo-on-exit reverts them)" in two


def test_a_kernel_thread_is_named_as_such(capsys: pytest.CaptureFixture[str]) -> None:
    kthreadd = next(
        pid
        for pid in (int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit())
        if Path(f"/proc/{pid}/comm").read_text().strip() == "kthreadd"
    )
    code, err = run_cli(capsys, "status", "-p", str(kthreadd))
    assert code == 2
    assert "is a kernel thread: it runs no user code to reload" in err


def test_an_ambiguous_name_lists_the_executables_paths(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"amb{os.getpid() % 100000}"
    exes = []
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        exes.append(compile_c(tmp_path / folder, VALUE_PROG, name=name))
        target = spawn([f"./{name}"], cwd=tmp_path / folder)
        target.wait_for(r"^value 1$")
    code, err = run_cli(capsys, "status", "-n", name)
    assert code == 2
    for exe in exes:
        assert f"({exe})" in err, err


def test_journals_of_exited_processes_are_removed(
    tmp_path: Path, spawn: SpawnFactory, running: Target
) -> None:
    gone = spawn([compile_c(tmp_path, VALUE_PROG, name="gone")])
    gone.wait_for(r"^value 1$")
    for name in ("gone.c", "prog.c"):
        source = tmp_path / name
        source.write_text(source.read_text().replace("return table[0];", "return table[1];"))
    relive.attach(gone.pid).reload([tmp_path / "gone.c"])
    stale = journal_path(gone.pid, get_start_time(gone.pid))
    assert stale.exists()
    gone.stop()
    # The first journal save of a later relive command prunes (once per command).
    command = [*RELIVE, "reload", "-p", str(running.pid), str(tmp_path / "prog.c")]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert not stale.exists()
    assert journal_path(running.pid, get_start_time(running.pid)).exists()


def test_the_dwarf_flags_notice_is_short() -> None:
    notice = str(FlagsFromDwarf(["/home/me/project/src/server.c"]))
    assert len(notice) <= 100 and "bear -- make" in notice, notice


def test_a_refusal_to_root_names_the_security_module(tmp_path: Path, running: Target) -> None:
    lsm = tmp_path / "lsm"
    lsm.write_text("lockdown,capability,landlock,yama,apparmor")
    error = _refused_to_root(running.pid, lsm)
    assert "relive runs as root with CAP_SYS_PTRACE" in error.message
    assert "the security modules landlock, apparmor forbid it" in error.message
    assert "as root" not in error.hint
    assert error.exit_code == 3


TINY = "__attribute__((noinline)) int tiny(int x) { return x; }\n"
TINY_MAIN = r"""
#include <stdio.h>
#include <unistd.h>
int tiny(int x);
volatile int one = 1;
static __attribute__((noinline)) void show(void) { printf("tiny %d\n", tiny(one)); }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { show(); usleep(20000); }
}
"""


def test_a_too_small_function_names_its_callers_in_other_files(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    exe = compile_c(
        tmp_path, TINY_MAIN, flags=("-g", "-O1", "-fno-align-functions"),
        extra_sources={"tiny.c": TINY},
    )  # fmt: skip
    target = spawn([exe])
    target.wait_for(r"^tiny 1$")
    source = tmp_path / "tiny.c"
    source.write_text(TINY.replace("return x;", "return x + 1;"))
    code, err = run_cli(capsys, "reload", "-p", str(target.pid), str(source))
    assert code == 9, err
    assert "it is called from other files only, by show (prog.c)" in err, err

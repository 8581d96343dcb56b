"""Every failure a user can cause: one clear line, its exit code, target untouched."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import relive
from support import (
    TINY,
    TINY_FLAGS,
    TINY_MAIN,
    TINY_WITH_CALLER,
    VALUE_PROG,
    SpawnFactory,
    Target,
    assert_untouched,
    edit,
    run_cli,
    start_remembered,
)


def test_no_such_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.c").write_text("int x;\n")
    code, err = run_cli(capsys, "reload", "-p", "999999999", str(tmp_path / "x.c"))
    assert code == 5
    assert "no such process: 999999999" in err
    assert len(err.strip().splitlines()) == 1


def test_already_traced(
    running: Target, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import ctypes, sys, time
            libc = ctypes.CDLL(None, use_errno=True)
            libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
            assert libc.ptrace(0x4206, {running.pid}, None, None) == 0  # PTRACE_SEIZE
            print("seized", flush=True)
            time.sleep(60)
        """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "seized"
        # A change, so that the reload has something to write (an unchanged file
        # needs no tracing at all).
        edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
        code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / "prog.c"))
        assert code == 3
        assert "traced" in err and str(holder.pid) in err
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    assert_untouched(running)


def test_not_an_elf_object(
    running: Target, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bogus = tmp_path / "notes.o"
    bogus.write_text("hello\n")
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(bogus))
    assert code == 6
    assert "not an ELF" in err
    assert_untouched(running)


@pytest.mark.parametrize(
    ("offset", "value", "expected"),
    [(18, 183, "AArch64"), (4, 1, "32-bit")],
    ids=["aarch64", "elf32"],
)
def test_wrong_architecture_or_class(
    running: Target,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    offset: int,
    value: int,
    expected: str,
) -> None:
    subprocess.run(["gcc", "-c", "-g", "prog.c", "-o", "odd.o"], cwd=tmp_path, check=True)
    data = bytearray((tmp_path / "odd.o").read_bytes())
    data[offset] = value
    (tmp_path / "odd.o").write_bytes(bytes(data))
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / "odd.o"))
    assert code == 6
    assert expected in err
    assert_untouched(running)


def test_compile_error(running: Target, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    edit(tmp_path / "prog.c", "return table[0];", "return table[0]")
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / "prog.c"))
    assert code == 4
    assert re.search(r"relive: error: \S*prog\.c:5:\d+: error: expected", err)
    assert_untouched(running)


def test_unresolvable_symbol(
    running: Target, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    edit(
        tmp_path / "prog.c",
        "return table[0];",
        "extern int no_such_function(void); return no_such_function();",
    )
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / "prog.c"))
    assert code == 7
    assert "no_such_function" in err
    assert_untouched(running)


def test_changed_global_size(
    running: Target, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    edit(tmp_path / "prog.c", "int table[4] = {1, 2, 3, 4};", "int table[8] = {1, 2, 3, 4};")
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / "prog.c"))
    assert code == 8
    assert "table changed size from 16 to 32 bytes" in err
    assert_untouched(running)


def test_function_too_small(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # value(x) compiles to `mov %edi,%eax; ret`: 3 bytes, and no caller in its file
    target = start_remembered(
        tmp_path, spawn, TINY_MAIN, flags=TINY_FLAGS, extra_sources={"tiny.c": TINY}
    )
    edit(tmp_path / "tiny.c", "return x;", "return x + 1;")
    code, err = run_cli(capsys, "reload", "-p", str(target.pid), str(tmp_path / "tiny.c"))
    assert code == 9
    assert "value is 3 bytes long, too small for a 5-byte entry jump" in err
    assert_untouched(target)


def test_too_small_function_is_replaced_through_its_callers(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target = start_remembered(tmp_path, spawn, TINY_WITH_CALLER, flags=TINY_FLAGS)
    edit(tmp_path / "prog.c", "return x;", "return x + 1;")
    events: list[object] = []
    relive.attach(target.pid, on_event=events.append).reload([tmp_path / "prog.c"])
    assert any(
        "value is too small for an entry jump: reloading its callers tick" in str(e) for e in events
    )
    target.wait_for(r"^value 2$")


def test_stripped_executable(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    target = start_remembered(tmp_path, spawn, VALUE_PROG, flags=("-O0", "-s"))
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    code, err = run_cli(capsys, "reload", "-p", str(target.pid), str(tmp_path / "prog.c"))
    assert code == 6
    assert "stripped" in err
    assert_untouched(target)


@pytest.mark.parametrize("name", ["missing.c", "missing.o", "notes.txt"])
def test_bad_paths_are_usage_errors(
    running: Target, capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str
) -> None:
    if name.endswith(".txt"):
        (tmp_path / name).write_text("hello\n")
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / name))
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert_untouched(running)


def test_a_core_that_is_not_there_or_not_a_core(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("gdb") is None:
        pytest.skip("gdb is not installed (apt-get install gdb)")
    (tmp_path / "text").write_text("not a core\n")
    for core, exit_code, said in [
        (tmp_path / "missing", 2, "cannot read"),
        (tmp_path, 2, "cannot read"),
        (tmp_path / "text", 6, "is not a 64-bit ELF core dump"),
    ]:
        code, err = run_cli(capsys, "gdb", "--core", str(core), "/bin/true")
        assert code == exit_code and said in err, err
        assert len(err.strip().splitlines()) == 1, err

"""relive never runs code another user chose: recorded flags are screened, builds checked.

relive runs as root on other users' programs; their DWARF and their
compile_commands.json must not make root load a plugin or run a script.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from relive.cli.main import main
from relive.elf.dwarf import CompileUnit
from relive.events import Compiled, Event, Notice
from relive.toolchain.choice import get_compile_command
from relive.toolchain.trust import UntrustedBuild, check_trusted_file, screen_flags
from support import (
    NOBODY,
    VALUE_PROG,
    SpawnFactory,
    Target,
    assert_untouched,
    compile_c,
    edit,
    reload,
    run_cli,
)

needs_root = pytest.mark.needs_root

DANGEROUS = [
    "-fplugin=/tmp/x.so",
    "-fplugin-arg-x-y=z",
    "-fpass-plugin=/tmp/p.so",
    "-specs=/tmp/evil.specs",
    "-wrapper",
    "--sysroot=/tmp/root",
    "-fdump-tree-all",
    "-fprofile-use=/tmp/p",
    "-mllvm",
    "@/tmp/response",
    "-fsanitize-ignorelist=/tmp/list",
    "-Wa,-adhln=/tmp/out",
    "-save-temps",
]


def test_screen_drops_what_loads_code_or_names_tools() -> None:
    safe = ["-O2", "-fno-omit-frame-pointer", "-march=x86-64-v2", "-std=gnu17", "-g3", "-pthread"]
    kept, dropped = screen_flags([*safe, *DANGEROUS, "-B", "/tmp/bin", "-Xclang", "-load"])
    assert kept == tuple(safe)
    assert set(dropped) == {*DANGEROUS, "-B", "/tmp/bin", "-Xclang", "-load"}
    assert screen_flags(["-D", "X=1", "-I", "inc", "-include", "cfg.h"])[0] == (
        "-D", "X=1", "-I", "inc", "-include", "cfg.h",
    )  # fmt: skip


@pytest.mark.parametrize("family", ["gcc", "clang"])
def test_dwarf_flags_are_screened(tmp_path: Path, family: str) -> None:
    source = tmp_path / "prog.c"
    source.write_text("int x;\n")
    record = " ".join(["-O2", *DANGEROUS, "-B/tmp/bin"])
    producer = (
        f"GNU C17 12.2.0 {record}"
        if family == "gcc"
        else f"clang version 14.0.6 /usr/bin/clang -c prog.c {record}"
    )
    unit = CompileUnit("prog.c", str(tmp_path), producer, None)
    command = get_compile_command(source, compile_unit=unit)
    assert "-O2" in command.flags
    assert not set(command.flags) & {*DANGEROUS, "-B/tmp/bin"}
    assert any("-fplugin=/tmp/x.so" in note and "ignoring" in note for note in command.notes)


def _producer_with_plugin(tmp_path: Path) -> Path:
    """A program whose DWARF says it was built with -fplugin (no plugin exists).

    gcc cannot build with a plugin that does not exist, so the producer string of
    an ordinary build is edited: ``-fno-jump-tables`` becomes a plugin of the same
    length.
    """
    exe = compile_c(tmp_path, VALUE_PROG, flags=("-g", "-O0", "-fno-jump-tables"))
    data = exe.read_bytes()
    assert b"-fno-jump-tables" in data
    exe.write_bytes(data.replace(b"-fno-jump-tables", b"-fplugin=/x/p.so"))
    return exe


def test_plugin_in_producer_is_never_passed(tmp_path: Path, spawn: SpawnFactory) -> None:
    target = spawn([_producer_with_plugin(tmp_path)])
    target.wait_for(r"^value 1$")
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    events: list[Event] = reload(target.pid, tmp_path / "prog.c")
    target.wait_for(r"^value 2$")
    [compiled] = [e for e in events if isinstance(e, Compiled)]
    assert compiled.flags_origin == "DWARF"
    assert not [a for a in compiled.command if a.startswith("-fplugin")]
    assert any("ignoring -fplugin=/x/p.so" in str(e) for e in events if isinstance(e, Notice))


def _evil_build(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A compile_commands.json naming a script as the compiler; the script leaves a
    mark when it runs (then compiles as gcc would)."""
    mark = tmp_path / "script-ran"
    script = tmp_path / "cc.sh"
    script.write_text(f'#!/bin/sh\ntouch {mark}\nexec gcc "$@"\n')
    script.chmod(0o755)
    compdb = tmp_path / "compile_commands.json"
    argv = [str(script), "-g", "-O0", "-c", "prog.c"]
    entry = {"directory": str(tmp_path), "file": "prog.c", "arguments": argv}
    compdb.write_text(json.dumps([entry]))
    return compdb, script, mark


@pytest.fixture
def running(running: Target, tmp_path: Path) -> Target:
    """conftest's running program, its source already edited."""
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    return running


@needs_root
@pytest.mark.parametrize("owned_by", ["compdb", "compiler", "writable"])
def test_build_another_user_controls_is_refused(
    tmp_path: Path, running: Target, capsys: pytest.CaptureFixture[str], owned_by: str
) -> None:
    compdb, script, mark = _evil_build(tmp_path)
    if owned_by == "compdb":
        os.chown(compdb, NOBODY, NOBODY)
        why = f"refusing compile_commands.json {compdb}: it belongs to uid {NOBODY}"
    elif owned_by == "compiler":
        os.chown(script, NOBODY, NOBODY)
        why = f"refusing the compiler {script}: it belongs to uid {NOBODY}"
    else:
        compdb.chmod(0o666)
        why = "it is writable by group or others (mode 666)"
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / "prog.c"))
    assert code == 1
    assert why in err and "--trust-build" in err
    assert len(err.strip().splitlines()) == 1
    assert not mark.exists()
    assert_untouched(running)
    # The user who checked it may say so; then it is used.
    code, err = run_cli(
        capsys, "reload", "--trust-build", "-p", str(running.pid), str(tmp_path / "prog.c")
    )
    assert code == 0, err
    assert mark.exists()
    running.wait_for(r"^value 2$")


@needs_root
def test_watch_never_runs_another_users_compiler(
    tmp_path: Path, running: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    """watch's first -MM pass runs the compiler of every unit: it must not run this one."""
    compdb, _, mark = _evil_build(tmp_path)
    os.chown(compdb, NOBODY, NOBODY)
    code = main(["watch", "-p", str(running.pid), str(tmp_path / "prog.c")])
    err = capsys.readouterr().err
    assert code == 1
    assert f"belongs to uid {NOBODY}" in err
    assert not mark.exists()
    assert_untouched(running)


def test_untrusted_build_is_a_relive_error(tmp_path: Path) -> None:
    (tmp_path / "prog.c").write_text("int x;\n")
    compdb, _, _ = _evil_build(tmp_path)
    compdb.chmod(0o646)
    with pytest.raises(UntrustedBuild, match="writable by group or others"):
        get_compile_command(tmp_path / "prog.c")
    assert get_compile_command(tmp_path / "prog.c", trust_build=True).compiler.endswith("cc.sh")


@needs_root
def test_a_symlink_another_user_owns_on_the_path_is_refused(tmp_path: Path) -> None:
    """The link could be pointed at another build after relive checked this one."""
    (tmp_path / "prog.c").write_text("int x;\n")
    compdb, _, _ = _evil_build(tmp_path)
    link = tmp_path / "via-link"
    link.symlink_to(tmp_path)
    os.lchown(link, NOBODY, NOBODY)
    with pytest.raises(UntrustedBuild, match=f"the symlink {link} on its path belongs to uid"):
        check_trusted_file(link / compdb.name, "compile_commands.json")
    check_trusted_file(compdb, "compile_commands.json")  # the same file, not through it

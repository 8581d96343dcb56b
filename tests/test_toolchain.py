"""Tests for finding compile flags (relive.toolchain, relive.elf.dwarf) and
running the compiler (relive.toolchain.compiler).  They compile real code with the
installed gcc and clang."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from relive.elf.dwarf import CompileUnit, find_compile_unit, iter_compile_units
from relive.errors import BadObject, CompileError, ReliveError, UsageError
from relive.toolchain.arguments import clean_arguments
from relive.toolchain.choice import get_compile_command
from relive.toolchain.command import CompileCommand
from relive.toolchain.compdb import find_compdb, find_compdb_entry
from relive.toolchain.compiler import compile_object, read_dependencies
from relive.toolchain.lto import uses_lto, without_lto
from relive.toolchain.producer import parse_producer
from support import need_program

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc not installed")

MAIN_C = """\
#include "util.h"

int add(int a, int b) { return a + b + UTIL_BIAS; }

int main(void) { return add(1, 2) == 3 ? 0 : 1; }
"""
UTIL_H = "#define UTIL_BIAS 0\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run(*argv: str | Path, cwd: Path) -> None:
    subprocess.run([str(a) for a in argv], cwd=cwd, check=True, capture_output=True)


def write_compdb(path: Path, entries: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A small C project: src/app/main.c including include/util.h."""
    write(tmp_path / "proj/src/app/main.c", MAIN_C)
    write(tmp_path / "proj/include/util.h", UTIL_H)
    return tmp_path / "proj"


# --- compile_commands.json ---------------------------------------------------


@needs_gcc
def test_compdb_arguments_found_from_nested_folder(project: Path, tmp_path: Path) -> None:
    source = project / "src/app/main.c"
    compdb = write_compdb(
        project / "build/compile_commands.json",
        [
            {
                "directory": str(project),
                "file": "src/app/main.c",
                "arguments": [
                    "gcc", "-O1", "-DVALUE=7", "-Iinclude", "-MD", "-MF", "main.d",
                    "-MT", "main.o", "-c", "src/app/main.c", "-o", "build/main.o",
                ],
            }
        ],
    )  # fmt: skip
    assert find_compdb(source) == compdb

    cmd = get_compile_command(source)
    assert cmd.origin == "compile_commands.json"
    assert cmd.compiler == "gcc"
    assert cmd.flags == ("-O1", "-DVALUE=7", "-Iinclude")
    assert cmd.directory == project
    assert cmd.source == source.resolve()
    assert cmd.source_arg == "src/app/main.c"

    result = compile_object(cmd, tmp_path / "out")
    assert result.object_path == tmp_path / "out/main.o"
    assert result.object_path.read_bytes()[:4] == b"\x7fELF"
    assert result.command[0] == "gcc"
    assert "-ffunction-sections" in result.command
    assert "-fdata-sections" in result.command
    assert "-fPIC" not in result.command
    assert result.milliseconds > 0
    # The header came through the compdb's -Iinclude, relative to its directory.
    assert (project / "include/util.h") in result.dependencies
    assert source in result.dependencies
    assert result.depfile is not None
    assert (project / "include/util.h") in read_dependencies(result.depfile, directory=project)


@needs_gcc
def test_compdb_command_is_shell_split_and_defines_reach_the_code(tmp_path: Path) -> None:
    source = write(
        tmp_path / "proj/lib/greet.c",
        "#include <stdio.h>\nvoid greet(void) { puts(GREETING); }\n",
    )
    write_compdb(
        tmp_path / "proj/compile_commands.json",
        [
            {
                "directory": str(tmp_path / "proj/lib"),
                "file": "greet.c",
                "command": 'cc -O2 -DGREETING="\\"hi there\\"" -c greet.c -o greet.o',
            }
        ],
    )
    cmd = get_compile_command(source)
    assert cmd.origin == "compile_commands.json"
    assert cmd.compiler == "cc"
    assert cmd.flags == ("-O2", '-DGREETING="hi there"')

    result = compile_object(cmd, tmp_path / "out")
    assert b"hi there" in result.object_path.read_bytes()


def test_compdb_entry_matches_by_resolved_path(tmp_path: Path) -> None:
    source = write(tmp_path / "real/a.c", "int x;\n")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    compdb = write_compdb(
        tmp_path / "compile_commands.json",
        [
            {"directory": str(tmp_path), "file": "other.c", "arguments": ["cc", "-O3", "other.c"]},
            {"directory": str(tmp_path / "link"), "file": "a.c", "command": "cc -Os -c a.c"},
        ],
    )
    entry = find_compdb_entry(compdb, source)
    assert entry is not None
    assert entry.flags == ("-Os",)
    assert find_compdb_entry(compdb, write(tmp_path / "b.c", "")) is None


def test_compdb_directory_relative_to_database_and_launcher_stripped(tmp_path: Path) -> None:
    source = write(tmp_path / "src/a.c", "int x;\n")
    compdb = write_compdb(
        tmp_path / "build/compile_commands.json",
        [{"directory": "../src", "file": "a.c", "command": "ccache gcc-12 -O2 -c a.c"}],
    )
    entry = find_compdb_entry(compdb, source)
    assert entry is not None
    assert entry.directory == tmp_path / "src"
    assert entry.compiler == "gcc-12"
    assert entry.flags == ("-O2",)


def test_invalid_compdb_is_an_error(tmp_path: Path) -> None:
    source = write(tmp_path / "a.c", "int x;\n")
    compdb = tmp_path / "compile_commands.json"
    compdb.write_text("{not json")
    with pytest.raises(ReliveError, match="not a valid compilation database"):
        get_compile_command(source)


def test_explicit_compdb_without_entry_falls_through_with_a_note(tmp_path: Path) -> None:
    source = write(tmp_path / "a.c", "int x;\n")
    compdb = write_compdb(tmp_path / "db/compile_commands.json", [])
    cmd = get_compile_command(source, compdb=compdb.parent)  # a folder is accepted too
    assert cmd.origin == "default"
    assert cmd.compiler == "gcc"
    assert cmd.flags == ("-g", "-O0")
    assert cmd.directory == source.parent
    assert any("no entry for a.c" in note for note in cmd.notes)

    with pytest.raises(UsageError, match="no such file"):
        get_compile_command(source, compdb=tmp_path / "missing.json")


def test_cli_flags_win_over_compdb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write(tmp_path / "a.c", "int x;\n")
    write_compdb(
        tmp_path / "compile_commands.json",
        [{"directory": str(tmp_path), "file": "a.c", "arguments": ["clang", "-O3", "a.c"]}],
    )
    monkeypatch.chdir(tmp_path)
    cmd = get_compile_command(source, cli_flags=["-O1", "-DX=2"])
    assert cmd.origin == "command line"
    assert cmd.flags == ("-O1", "-DX=2")
    assert cmd.compiler == "gcc"
    assert cmd.directory == tmp_path

    unit = CompileUnit("a.c", str(tmp_path), "Debian clang version 14.0.6", 12)
    assert get_compile_command(source, cli_flags=[], compile_unit=unit).compiler == "clang"


def test_compdb_that_disagrees_with_the_running_program_gets_notes(tmp_path: Path) -> None:
    source = write(tmp_path / "a.c", "int x;\n")
    write_compdb(
        tmp_path / "compile_commands.json",
        [{"directory": str(tmp_path), "file": "a.c", "arguments": ["clang", "-O0", "a.c"]}],
    )
    unit = CompileUnit("a.c", str(tmp_path), "GNU C17 12.2.0 -mtune=generic -g -O2", 29)
    cmd = get_compile_command(source, compile_unit=unit)
    assert cmd.origin == "compile_commands.json"
    assert len(cmd.notes) == 2
    assert "built with gcc" in cmd.notes[0]
    assert "-O0" in cmd.notes[1] and "-O2" in cmd.notes[1]


def test_missing_source_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file") as info:
        get_compile_command(tmp_path / "nope.c")
    assert info.value.exit_code == 2
    assert info.value.hint


# --- DWARF fallback ----------------------------------------------------------


@needs_gcc
def test_dwarf_fallback_with_gcc(project: Path, tmp_path: Path) -> None:
    source = project / "src/app/main.c"
    exe = project / "app"
    run("gcc", "-g", "-O2", "-fno-omit-frame-pointer", "-Iinclude", "-o", exe, "src/app/main.c",
        cwd=project)  # fmt: skip

    unit = find_compile_unit(exe, source)
    assert unit is not None
    assert unit.name == "src/app/main.c"
    assert unit.comp_dir == str(project)
    assert unit.producer is not None and unit.producer.startswith("GNU C")

    cmd = get_compile_command(source, compile_unit=unit)
    assert cmd.origin == "DWARF"
    assert cmd.compiler == "gcc"
    assert "-O2" in cmd.flags
    assert "-fno-omit-frame-pointer" in cmd.flags
    assert f"-I{source.parent}" in cmd.flags
    assert f"-I{project}" in cmd.flags
    assert cmd.directory == project
    assert cmd.source_arg == "src/app/main.c"
    assert not cmd.notes

    # DWARF has no -I for include/: the include directory is not on the path,
    # so point the header lookup there the way a user would.
    write(project / "src/app/util.h", UTIL_H)
    result = compile_object(cmd, tmp_path / "out")
    assert result.object_path.is_file()


def test_dwarf_fallback_with_clang_without_recorded_command_line(
    project: Path,
) -> None:
    need_program("clang")
    source = write(
        project / "solo.c", "int f(int x) { return x * 3; }\nint main(void) { return f(0); }\n"
    )
    run("clang", "-g", "-O2", "-o", "solo", "solo.c", cwd=project)
    unit = find_compile_unit(project / "solo", source)
    assert unit is not None and unit.producer is not None

    # Documented choice: still origin "DWARF" with clang, but only the -I flags.
    cmd = get_compile_command(source, compile_unit=unit)
    assert cmd.origin == "DWARF"
    assert cmd.compiler == "clang"
    assert cmd.flags == (f"-I{project}",)
    # The level is unknown: the plan side infers it by reproduction.
    assert cmd.flags_unknown and not cmd.notes


def test_dwarf_fallback_with_clang_recorded_command_line(project: Path, tmp_path: Path) -> None:
    need_program("clang")
    source = write(
        project / "solo.c", "int f(int x) { return x * SCALE; }\nint main(void) { return f(0); }\n"
    )
    run("clang", "-g", "-O2", "-grecord-command-line", "-DSCALE=3", "-o", "solo", "solo.c",
        cwd=project)  # fmt: skip
    unit = find_compile_unit(project / "solo", source)
    assert unit is not None

    cmd = get_compile_command(source, compile_unit=unit)
    assert cmd.origin == "DWARF"
    assert cmd.compiler == "clang"
    assert "-O2" in cmd.flags
    assert "-DSCALE=3" in cmd.flags or ("-D" in cmd.flags and "SCALE=3" in cmd.flags)
    assert "solo.c" not in cmd.flags and "-o" not in cmd.flags
    assert compile_object(cmd, tmp_path / "out").object_path.is_file()


def test_default_command_without_any_information(tmp_path: Path) -> None:
    source = write(tmp_path / "a.c", "int x;\n")
    cmd = get_compile_command(source, compile_unit=CompileUnit("a.c", None, "GNU AS 2.40", 0x8001))
    assert (cmd.compiler, cmd.flags, cmd.origin) == ("gcc", ("-g", "-O0"), "default")


# --- parse_producer and clean_arguments ---------------------------------------


def test_parse_gcc_producer() -> None:
    family, flags = parse_producer(
        "GNU C17 12.2.0 -mtune=generic -march=x86-64 -g -O2 -std=gnu17 -fno-omit-frame-pointer "
        "-fasynchronous-unwind-tables -fstack-protector-strong -fcf-protection -Wall "
        "-fdebug-prefix-map=/build=. -ffile-prefix-map=/a=/b -frandom-seed=42 -dumpbase x.c "
        "-flto -fno-lto -fPIE -fprofile-arcs --param=max-inline-insns-single=100"
    )
    assert family == "gcc"
    assert flags == (
        "-mtune=generic", "-march=x86-64", "-g", "-O2", "-std=gnu17", "-fno-omit-frame-pointer",
        "-fasynchronous-unwind-tables", "-fstack-protector-strong", "-fcf-protection",
        "-flto", "-fno-lto", "-fPIE", "-fprofile-arcs", "--param=max-inline-insns-single=100",
    )  # fmt: skip


def test_parse_gcc_producer_with_vendor_version() -> None:
    family, flags = parse_producer(
        "GNU C99 4.8.5 20150623 (Red Hat 4.8.5-44) -mtune=generic -march=x86-64 -g -O2"
    )
    assert family == "gcc"
    assert flags == ("-mtune=generic", "-march=x86-64", "-g", "-O2")
    assert parse_producer("GNU C17 12.2.0") == ("gcc", ())


def test_parse_clang_producer() -> None:
    assert parse_producer("Debian clang version 14.0.6") == ("clang", ())
    assert parse_producer("Apple clang version 15.0.0 (clang-1500.3.9.4)") == ("clang", ())
    family, flags = parse_producer(
        "clang version 17.0.6 (https://github.com/llvm/llvm-project 6009708b) "
        '/usr/bin/clang -g -O2 -grecord-command-line -D G="hi\\ there\\\\" -c a.c -o b.o'
    )
    assert family == "clang"
    assert flags == ("-g", "-O2", "-grecord-command-line", "-D", 'G="hi there\\"')


def test_parse_unknown_producer() -> None:
    assert parse_producer("GNU AS 2.40") == ("", ())
    assert parse_producer("rustc version 1.75.0") == ("", ())


def test_clean_arguments() -> None:
    assert clean_arguments(
        ["-O2", "-include", "config.h", "-x", "c", "-MMD", "-MP", "-MFdeps.d", "-MQ", "t",
         "-Wp,-MD,.x.d", "main.c", "-c", "-oout.o", "-Wl,--as-needed", "-lm", "-L/lib",
         "-Xlinker", "-z", "@rsp", "-", "-Wall"]
    ) == ("-O2", "-include", "config.h", "-x", "c", "@rsp", "-Wall")  # fmt: skip


# --- refusing LTO ------------------------------------------------------------


def lto_command(tmp_path: Path, *flags: str) -> CompileCommand:
    source = write(tmp_path / "lto.c", "int f(void) { return 1; }\n")
    return CompileCommand("gcc", flags, tmp_path, source, "compile_commands.json")


def test_flto_is_compiled_without_lto(tmp_path: Path) -> None:
    cmd = without_lto(lto_command(tmp_path, "-O2", "-flto=auto", "-ffat-lto-objects"))
    assert cmd.flags == ("-O2", "-fno-lto")
    assert cmd.notes == (
        "lto.c was built with -flto: recompiling it without LTO "
        "(an LTO object has no machine code to load)",
    )
    result = compile_object(lto_command(tmp_path, "-O2", "-flto"), tmp_path / "out")
    assert "-fno-lto" in result.command
    assert b".gnu.lto_" not in result.object_path.read_bytes()


def test_flto_switched_off_again_is_not_lto(tmp_path: Path) -> None:
    assert not uses_lto(("-flto", "-fno-lto"))
    assert not uses_lto(("-flto-partition=none",))
    assert uses_lto(("-fno-lto", "-flto"))


# --- compiler failures -------------------------------------------------------


@needs_gcc
def test_syntax_error_is_a_compile_error(tmp_path: Path) -> None:
    source = write(tmp_path / "file.c", "int f(void)\n{\n    return 1\n}\n")
    cmd = get_compile_command(source, cli_flags=["-O2"])
    with pytest.raises(CompileError) as info:
        compile_object(cmd, tmp_path / "out")
    error = info.value
    assert re.search(r"file\.c:\d+:\d+: error:", str(error))
    assert "\n" not in str(error)
    assert error.exit_code == 4
    assert error.hint == "fix the error and save again; the program keeps running its current code"
    assert str(error) in error.details
    assert not (tmp_path / "out/file.o").exists()


@needs_gcc
def test_missing_header_is_a_compile_error(tmp_path: Path) -> None:
    source = write(tmp_path / "file.c", '#include "nowhere.h"\n')
    with pytest.raises(CompileError, match=r"file\.c:1:10: fatal error: nowhere\.h"):
        compile_object(get_compile_command(source, cli_flags=[]), tmp_path / "out")


def test_bad_option_is_a_compile_error(tmp_path: Path) -> None:
    source = write(tmp_path / "file.c", "int x;\n")
    cmd = CompileCommand("gcc", ("-fno-such-option-anywhere",), tmp_path, source, "default")
    with pytest.raises(CompileError, match="error: unrecognized command-line option"):
        compile_object(cmd, tmp_path / "out")


def test_missing_compiler(tmp_path: Path) -> None:
    source = write(tmp_path / "file.c", "int x;\n")
    cmd = CompileCommand("relive-no-such-cc", (), tmp_path, source, "default")
    with pytest.raises(ReliveError, match="relive-no-such-cc") as info:
        compile_object(cmd, tmp_path / "out")
    assert "install that compiler" in info.value.hint and "--compdb" in info.value.hint


@needs_gcc
def test_warnings_and_debug_flag(tmp_path: Path) -> None:
    source = write(tmp_path / "w.c", "int f(void) { int unused; return 0; }\n")
    cmd = CompileCommand("gcc", ("-Wall", "-g0"), tmp_path, source, "command line")
    result = compile_object(cmd, tmp_path / "out")
    assert "unused" in result.warnings
    assert result.command.count("-g") == 1  # -g0 is overridden: messages need lines
    cmd = CompileCommand("gcc", ("-gdwarf-4",), tmp_path, source, "command line")
    assert "-g" not in compile_object(cmd, tmp_path / "out").command


# --- dependency files ----------------------------------------------------------


def test_read_dependencies_make_syntax(tmp_path: Path) -> None:
    depfile = tmp_path / "x.d"
    depfile.write_text(
        "out/x.o: src/x.c /usr/include/stdio.h \\\n"
        "  my\\ dir/a\\ b.h inc/c$$.h \\\n"
        " inc/hash\\#.h src/x.c\n"
        "\n"
        "my\\ dir/a\\ b.h:\n"
        "inc/c$$.h:\n"
    )
    assert read_dependencies(depfile) == [
        Path("src/x.c"),
        Path("/usr/include/stdio.h"),
        Path("my dir/a b.h"),
        Path("inc/c$.h"),
        Path("inc/hash#.h"),
    ]
    assert read_dependencies(depfile, directory=Path("/w"))[0] == Path("/w/src/x.c")
    with pytest.raises(ReliveError):
        read_dependencies(tmp_path / "missing.d")


@needs_gcc
def test_dependencies_with_spaces_in_names(tmp_path: Path) -> None:
    write(tmp_path / "my dir/local header.h", "#define ONE 1\n")
    source = write(tmp_path / "my dir/dep.c", '#include "local header.h"\nint one = ONE;\n')
    result = compile_object(get_compile_command(source, cli_flags=[]), tmp_path / "out")
    assert tmp_path / "my dir/local header.h" in result.dependencies


# --- DWARF reading -------------------------------------------------------------


@needs_gcc
@pytest.mark.parametrize("version", ["-gdwarf-4", "-gdwarf-5"])
def test_iter_compile_units_dwarf_versions(tmp_path: Path, version: str) -> None:
    write(tmp_path / "a.c", "int main(void) { return 0; }\n")
    write(tmp_path / "sub/b.c", "int b(void) { return 2; }\n")
    run("gcc", "-g", version, "-O1", "-o", "prog", "a.c", "sub/b.c", cwd=tmp_path)
    units = [u for u in iter_compile_units(tmp_path / "prog") if u.name.endswith(".c")]
    assert [u.name for u in units] == ["a.c", "sub/b.c"]
    assert all(u.comp_dir == str(tmp_path) for u in units)
    assert all(u.producer and version in u.producer for u in units)
    assert units[0].language is not None
    assert units[1].path == str(tmp_path / "sub/b.c")


@needs_gcc
def test_iter_compile_units_relocatable_object_and_cache(tmp_path: Path) -> None:
    source = write(tmp_path / "a.c", "int a(void) { return 1; }\n")
    obj = tmp_path / "a.o"
    run("gcc", "-g", "-O2", "-c", "a.c", "-o", obj, cwd=tmp_path)
    first = list(iter_compile_units(obj))
    assert [u.name for u in first] == ["a.c"]
    assert list(iter_compile_units(str(obj))) == first

    # Rebuilding changes the file, so the cache must not answer for it.
    run("gcc", "-g", "-O1", "-c", "a.c", "-o", obj, cwd=tmp_path)
    os.utime(obj, ns=(1, 1))
    second = list(iter_compile_units(obj))
    assert second[0].producer is not None and "-O1" in second[0].producer
    assert find_compile_unit(obj, source) == second[0]


@needs_gcc
def test_file_without_dwarf_has_no_units(tmp_path: Path) -> None:
    source = write(tmp_path / "a.c", "int main(void) { return 0; }\n")
    run("gcc", "-g0", "-o", "prog", "a.c", cwd=tmp_path)
    assert list(iter_compile_units(tmp_path / "prog")) == []
    assert find_compile_unit(tmp_path / "prog", source) is None


def test_non_elf_file_is_a_bad_object(tmp_path: Path) -> None:
    path = write(tmp_path / "notelf", "hello")
    with pytest.raises(BadObject):
        list(iter_compile_units(path))
    with pytest.raises(BadObject):
        list(iter_compile_units(tmp_path / "missing"))


@needs_gcc
def test_find_compile_unit_by_basename(tmp_path: Path) -> None:
    write(tmp_path / "build/one/util.c", "int one(void) { return 1; }\n")
    write(tmp_path / "build/two/util.c", "int two(void) { return 2; }\n")
    write(tmp_path / "build/main.c", "int main(void) { return 0; }\n")
    run("gcc", "-g", "-o", "prog", "main.c", "one/util.c", "two/util.c", cwd=tmp_path / "build")
    exe = tmp_path / "build/prog"

    # The exact path wins even though the basename is shared.
    unit = find_compile_unit(exe, tmp_path / "build/two/util.c")
    assert unit is not None and unit.name == "two/util.c"

    # The tree moved: a unique basename still matches, a shared one is ambiguous.
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "build", moved)
    unit = find_compile_unit(exe, moved / "main.c")
    assert unit is not None and unit.name == "main.c"
    assert find_compile_unit(exe, moved / "one/util.c") is None
    assert find_compile_unit(exe, moved / "other.c") is None


def test_compdb_with_several_entries_prefers_the_one_that_built_the_running_code(
    tmp_path: Path,
) -> None:
    """libtool compiles a file as PIC and not, and bear may list C++ runs too."""
    source = write(tmp_path / "lib.c", "int f(void) { return 1; }\n")
    entries = [
        {
            "directory": str(tmp_path),
            "file": "lib.c",
            "arguments": ["g++", "-O2", "-fPIC", "-c", "lib.c"],
        },
        {
            "directory": str(tmp_path),
            "file": "lib.c",
            "arguments": ["gcc", "-O2", "-fPIC", "-DPIC", "-c", "lib.c"],
        },
        {"directory": str(tmp_path), "file": "lib.c", "arguments": ["gcc", "-O2", "-c", "lib.c"]},
    ]
    compdb = tmp_path / "compile_commands.json"
    compdb.write_text(json.dumps(entries))
    no_pic = find_compdb_entry(compdb, source, ("-O2", "-g", "-mtune=generic"))
    assert no_pic is not None and no_pic.flags == ("-O2",)
    pic = find_compdb_entry(compdb, source, ("-O2", "-fPIC"))
    assert pic is not None and pic.compiler == "gcc" and "-fPIC" in pic.flags
    first_c = find_compdb_entry(compdb, source)
    assert first_c is not None and first_c.compiler == "gcc"


def test_compdb_keeps_the_source_spelling_of_the_build_command(tmp_path: Path) -> None:
    """bear writes an absolute "file"; the command said "src.c": __FILE__ must not change."""
    source = write(tmp_path / "src.c", "const char *where(void) { return __FILE__; }\n")
    entries = [
        {
            "directory": str(tmp_path),
            "file": str(source),
            "arguments": ["gcc", "-O1", "-c", "src.c", "-o", "src.o"],
        }
    ]
    compdb = tmp_path / "compile_commands.json"
    compdb.write_text(json.dumps(entries))
    entry = find_compdb_entry(compdb, source)
    assert entry is not None and entry.source_argument == "src.c"
    result = compile_object(entry, tmp_path / "out")
    assert b"src.c\0" in result.object_path.read_bytes()
    assert str(tmp_path).encode() + b"/src.c\0" not in result.object_path.read_bytes()


@pytest.mark.parametrize("nice", ["", "7"])
def test_the_compiler_runs_as_background_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, nice: str
) -> None:
    """SCHED_BATCH always (its share of the CPU unchanged), from the compiler's first
    instruction on; nice only when RELIVE_COMPILE_NICE asks: a compiler that records
    its own policy and nice value (/proc/PID/sched, /proc/PID/stat), then runs gcc."""
    seen = tmp_path / "seen"
    wrapper = tmp_path / "cc"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"grep '^policy' /proc/$$/sched | tr -s ' ' > {seen}\n"
        "sleep 0.3\n"  # the nice value comes once the compiler started
        f"cut -d' ' -f19 /proc/$$/stat >> {seen}\n"
        'exec gcc "$@"\n'
    )
    wrapper.chmod(0o755)
    source = tmp_path / "unit.c"
    source.write_text("int unit(void) { return 1; }\n")
    monkeypatch.setenv("RELIVE_COMPILE_NICE", nice)
    cmd = CompileCommand(str(wrapper), ("-O2",), tmp_path, source, "command line")
    assert compile_object(cmd, tmp_path / "out").object_path.is_file()
    policy, niceness = seen.read_text().splitlines()
    assert policy == "policy : 3"  # SCHED_BATCH
    assert int(niceness) == (int(nice) if nice else 0)

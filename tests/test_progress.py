"""Long reloads show progress: a live line on a terminal, rate-limited JSON, nothing piped."""

from __future__ import annotations

import io
import itertools
import json
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console

from relive.cli import render
from relive.cli.main import main
from relive.cli.render import Renderer
from relive.events import Compiled, Phase, Progress, ReloadFinished, WatchReloaded
from relive.patch import planning
from support import VALUE_PROG, SpawnFactory, Target, compile_c, edit

#: A compiler that takes a few seconds: gcc behind a sleep, named by a
#: compile_commands.json as a build would name a wrapper (ccache, distcc).
SLOW_CC = '#!/bin/sh\nsleep 2.6\nexec gcc "$@"\n'


@pytest.fixture
def slow_build(tmp_path: Path, spawn: SpawnFactory) -> tuple[Target, Path, Path]:
    """A running program, its source edited, and a compile_commands.json whose compiler is slow."""
    exe = compile_c(tmp_path, VALUE_PROG, flags=("-g", "-O2"))
    target = spawn([exe])
    target.wait_for(r"^value 1$")
    slow = tmp_path / "slowcc"
    slow.write_text(SLOW_CC)
    slow.chmod(0o755)
    compdb = tmp_path / "compile_commands.json"
    command = f"{slow} -g -O2 -c prog.c -o prog.o"
    compdb.write_text(
        json.dumps([{"directory": str(tmp_path), "file": "prog.c", "command": command}])
    )
    source = tmp_path / "prog.c"
    edit(source, "return table[0];", "return table[0] + 41;")
    return target, source, compdb


def test_json_progress_of_a_slow_compile_is_rate_limited(
    slow_build: tuple[Target, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target, source, compdb = slow_build
    code = main(["--json", "reload", "-p", str(target.pid), "--compdb", str(compdb), str(source)])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [line for line in lines if line["kind"] == "progress"]
    assert len(progress) >= 2, lines
    assert all(p["phase"] == "compiling" and p["source"] == str(source) for p in progress[:2])
    elapsed = [p["elapsed"] for p in progress]
    assert elapsed[0] >= 1.0  # a quick reload shows none
    assert all(b - a >= 0.9 for a, b in itertools.pairwise(elapsed))
    kinds = [line["kind"] for line in lines]
    assert kinds.index("progress") < kinds.index("compiled") < kinds.index("reloaded")
    target.wait_for(r"^value 42$")


def test_plain_output_has_no_progress_lines(
    slow_build: tuple[Target, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    target, source, compdb = slow_build
    code = main(["reload", "-p", str(target.pid), "--compdb", str(compdb), str(source)])
    assert code == 0
    captured = capsys.readouterr()
    out = captured.out.splitlines()
    assert out[0].startswith("compiled ") and out[-1].startswith("reloaded pid")
    assert not any("compiling" in line or "progress" in line for line in [*out, captured.err])
    target.wait_for(r"^value 42$")


def _terminal() -> tuple[Renderer, io.StringIO]:
    buffer = io.StringIO()
    console = Console(
        file=buffer, force_terminal=True, width=100, color_system="standard", highlight=False
    )
    return Renderer(console=console), buffer


def test_terminal_shows_a_live_line_replaced_by_the_summary() -> None:
    renderer, buffer = _terminal()
    renderer(Progress("/src/big.c", Phase.COMPILE, 0.0))
    time.sleep(0.9)  # past the delay; rich's Live redraws on its own thread
    renderer(Progress("/src/big.c", Phase.LINK, 0.9))
    time.sleep(0.4)
    drawn = buffer.getvalue()
    assert "big.c: compiling · 0." in drawn
    assert "big.c: linking · 1." in drawn
    renderer(ReloadFinished(pid=1, redirected=1, added=0, unchanged=3, dry_run=False))
    after = buffer.getvalue()[len(drawn) :]
    assert "reloaded pid 1: 1 redirected" in after
    time.sleep(0.3)
    assert "big.c" not in buffer.getvalue()[len(drawn) + len(after) :]  # the line is gone


def test_terminal_quick_reload_draws_no_progress() -> None:
    renderer, buffer = _terminal()
    for phase in (Phase.COMPILE, Phase.OBJECT, Phase.LINK, Phase.WRITE):
        renderer(Progress("/src/small.c", phase, 0.01))
    renderer(Compiled("/src/small.c", "dwarf", ["gcc"], 40.0))
    renderer(ReloadFinished(pid=1, redirected=1, added=0, unchanged=0, dry_run=False))
    drawn = buffer.getvalue()
    assert "compiled /src/small.c" in drawn and "reloaded pid 1" in drawn
    assert "small.c:" not in drawn


def test_json_renderer_drops_early_and_too_frequent_progress() -> None:
    buffer = io.StringIO()
    renderer = Renderer(json_lines=True, stream=buffer)
    for elapsed in (0.0, 0.5, 1.0, 1.2, 1.5):
        renderer(Progress("/src/big.c", Phase.COMPILE, elapsed))
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [line["elapsed"] for line in lines] == [1.0]


def test_watch_status_line_shows_progress_then_its_own_text_again() -> None:
    renderer, buffer = _terminal()
    renderer.start_status("watching pid 1")
    renderer(Progress("/src/big.c", Phase.COMPILE, 0.0))
    time.sleep(0.9)
    assert "big.c: compiling · 0." in buffer.getvalue()
    renderer(WatchReloaded(time.time(), 1, ["/src/big.c"], ["f"], [], [], [], 900.0, 3.0, 100.0))
    shown = len(buffer.getvalue())
    time.sleep(0.4)
    renderer.close()
    after = buffer.getvalue()[shown:]
    assert "watching · last reload" in after and "compiling" not in after


def _big_unit(count: int, version: int) -> str:
    """A generated file of ``count`` functions plus a loop; ``version`` changes one."""
    callee = ["0", *(f"(x > 0 ? gen_{i:05d}(x - 1) : 0)" for i in range(count - 1))]
    functions = "".join(
        f"static long calls_{i};\n"
        f"__attribute__((noinline)) long gen_{i:05d}(long x) {{\n"
        f'    calls_{i}++; if (x < 0) puts("gen {i}");\n'
        f"    return x * {i + 3} + calls_{i} + {callee[i]};\n}}\n"
        for i in range(count)
    )
    return (
        "#include <stdio.h>\n#include <unistd.h>\n"
        + functions
        + f"__attribute__((noipa)) long value(void) {{ return {version}; }}\n"
        + "int main(void) {\n    setvbuf(stdout, NULL, _IONBF, 0);\n"
        + f'    for (;;) {{ printf("value %ld %ld\\n", value(), gen_{count - 1:05d}(1));'
        + " usleep(20000); }\n}\n"
    )


def test_json_progress_repeats_while_a_big_unit_is_planned(
    tmp_path: Path,
    spawn: SpawnFactory,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planning (linking) a big unit is one phase of seconds: its progress event comes
    again while it runs, as often as the renderer lets JSON progress through.  The
    interval is scaled down from one second so that a 3,000-function unit, planned
    in a fraction of a second on a quiet machine, shows it."""
    every = 0.01
    monkeypatch.setattr(planning, "STILL_EVERY", every)
    monkeypatch.setattr(render, "JSON_PROGRESS_EVERY", every)
    count = 3000
    target = spawn([compile_c(tmp_path, _big_unit(count, 1), flags=("-g", "-O2"))])
    target.wait_for(r"^value 1 ")
    edited = tmp_path / "edit"
    edited.mkdir()
    (edited / "prog.c").write_text(_big_unit(count, 2))
    obj = edited / "prog.o"
    flags = ["-g", "-O2", "-ffunction-sections", "-fdata-sections"]
    subprocess.run(["gcc", *flags, "-c", "-o", str(obj), str(edited / "prog.c")], check=True)
    code = main(["--json", "reload", "-p", str(target.pid), str(obj)])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [line for line in lines if line["kind"] == "progress"]
    linking = [p for p in progress if p["phase"] == "linking"]
    assert len(linking) >= 2, progress  # the phase's start, and again while it ran
    assert all(p["source"] == str(obj) for p in progress)
    elapsed = [p["elapsed"] for p in progress]
    assert all(b - a >= every * 0.9 for a, b in itertools.pairwise(elapsed)), elapsed
    kinds = [line["kind"] for line in lines]
    assert kinds.index("progress") < kinds.index("redirected") < kinds.index("reloaded")
    target.wait_for(r"^value 2 ")


def test_progress_events_go_only_to_a_caller_that_asks(running: Target, tmp_path: Path) -> None:
    """They are for a live line: the CLI asks for them, a program using the API gets
    only what the reload did unless it asks too."""
    import relive

    source = tmp_path / "prog.c"
    edit(source, "return table[0];", "return table[1];")
    plain: list[object] = []
    relive.attach(running.pid, on_event=plain.append).reload([source], dry_run=True)
    assert plain and not [e for e in plain if isinstance(e, Progress)]
    asked: list[object] = []
    relive.attach(running.pid, on_event=asked.append, progress=True).reload([source])
    phases = [e.phase for e in asked if isinstance(e, Progress)]
    assert Phase.COMPILE in phases and Phase.LINK in phases, phases
    running.wait_for(r"^value 2$")

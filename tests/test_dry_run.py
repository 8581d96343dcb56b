"""``reload --dry-run`` promises what the real reload does: same reroutes, same refusals.

Each test runs the dry run first (nothing may change in the target), then the
real reload, and compares: the functions the dry run said it would redirect are
the ones the real reload redirected, and a reload the real one refuses is
refused by the dry run with the same exit code and message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import relive
from relive.patch.dryrun import NOT_CHECKED
from support import (
    LOOP_OVER_ENTRY_MAIN,
    TINY,
    TINY_FLAGS,
    TINY_MAIN,
    TINY_WITH_CALLER,
    SpawnFactory,
    Target,
    assert_untouched,
    edit,
    kinds,
    notices,
    reload,
    run_cli,
    start_remembered,
)


def test_a_dry_run_reroutes_a_too_small_function_as_the_reload_does(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target = start_remembered(tmp_path, spawn, TINY_WITH_CALLER, flags=TINY_FLAGS)
    edit(tmp_path / "prog.c", "return x;", "return x + 1;")
    rerouted = "value is too small for an entry jump: reloading its callers tick"

    planned = reload(target.pid, tmp_path / "prog.c", dry_run=True)
    assert kinds(planned)["redirected"] == ["tick"]
    assert any(rerouted in line for line in notices(planned))
    assert NOT_CHECKED in notices(planned)
    assert_untouched(target)

    done = reload(target.pid, tmp_path / "prog.c")
    assert kinds(done)["redirected"] == kinds(planned)["redirected"]
    target.wait_for(r"^value 2$")


def test_a_dry_run_refuses_a_too_small_function_without_callers(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    target = start_remembered(
        tmp_path, spawn, TINY_MAIN, flags=TINY_FLAGS, extra_sources={"tiny.c": TINY}
    )
    edit(tmp_path / "tiny.c", "return x;", "return x + 1;")
    argv = ["reload", "-p", str(target.pid), str(tmp_path / "tiny.c")]
    dry_code, dry_err = run_cli(capsys, *argv[:1], "--dry-run", *argv[1:])
    assert_untouched(target)
    code, err = run_cli(capsys, *argv)
    assert (dry_code, code) == (9, 9), (dry_err, err)
    assert "value is 3 bytes long, too small for a 5-byte entry jump" in dry_err
    assert dry_err == err
    assert_untouched(target)


def test_a_dry_run_refuses_a_running_loop_head_under_no_move(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    target = start_remembered(tmp_path, spawn, LOOP_OVER_ENTRY_MAIN)
    edit(tmp_path / "prog.c", "usleep(20000)", "usleep(10000)")
    argv = ["reload", "--no-move", "-p", str(target.pid), str(tmp_path / "prog.c")]
    dry_code, dry_err = run_cli(capsys, *argv[:1], "--dry-run", *argv[1:])
    assert_untouched(target)
    code, err = run_cli(capsys, *argv)
    assert (dry_code, code) == (9, 9), (dry_err, err)
    assert "main is running on thread" in dry_err
    assert "loop jumps back into the first bytes" in dry_err
    assert dry_err == err
    assert_untouched(target)


def test_a_dry_run_says_a_running_loop_head_is_left_to_the_frame_move(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target = start_remembered(tmp_path, spawn, LOOP_OVER_ENTRY_MAIN)
    edit(tmp_path / "prog.c", "usleep(20000)", "usleep(10000)")
    planned = reload(target.pid, tmp_path / "prog.c", dry_run=True)
    assert kinds(planned)["redirected"] == ["main"]
    [said] = [line for line in notices(planned) if line.startswith("main is running")]
    assert f"main is running on thread {target.pid} " in said
    assert "a dry run does not try" in said
    assert_untouched(target)
    relive.attach(target.pid).reload([tmp_path / "prog.c"])  # the frame moves (same shape)
    assert [p.name for p in relive.attach(target.pid).status()] == ["main"]


def test_a_dry_run_of_an_unchanged_file_has_nothing_left_unchecked(running: Target) -> None:
    planned = reload(running.pid, Path(running.argv[0] + ".c"), dry_run=True)
    assert "redirected" not in kinds(planned)
    assert NOT_CHECKED not in notices(planned)
    assert_untouched(running)


def test_options_are_one_value_and_keywords_override_it(running: Target, tmp_path: Path) -> None:
    source = tmp_path / "prog.c"
    edit(source, "return table[0];", "return table[1];")
    dry = relive.ReloadOptions(dry_run=True, functions=["value"])
    result = relive.attach(running.pid).reload([source], dry)
    assert result.redirected == ["value"]
    assert_untouched(running)
    result = relive.attach(running.pid).reload([source], dry, dry_run=False)
    assert result.redirected == ["value"]
    running.wait_for(r"^value 2$")

"""Unit tests of watch's pure parts: the dependency map, the content tracker, saves
from file-system events, and signal parsing and plumbing (no target process)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from relive.toolchain.command import ORIGIN_COMMAND_LINE, CompileCommand
from relive.watch.changes import ContentTracker, saved_paths
from relive.watch.deps import DependencyMap, scan_all, scan_dependencies
from relive.watch.signals import Wakeup, handle_signals, parse_signal, signal_name
from support import save_by_rename

# -- the dependency map ----------------------------------------------------------------


def test_dependency_map_answers_which_units_read_a_file(tmp_path: Path) -> None:
    a, b, common, only_b = (tmp_path / n for n in ("a.c", "b.c", "common.h", "b.h"))
    deps = DependencyMap()
    deps.record(a, [common])
    deps.record(b, [common, only_b])
    assert deps.units() == sorted([a, b])
    assert deps.units_using(common) == {a, b}
    assert deps.units_using(only_b) == {b}
    assert deps.units_using(a) == {a}  # a unit reads itself
    assert deps.units_using(tmp_path / "other.h") == set()
    assert deps.files() == {a, b, common, only_b}
    assert deps.dependencies(b) == frozenset({b, common, only_b})


def test_recording_again_replaces_what_a_unit_reads(tmp_path: Path) -> None:
    a, old, new = tmp_path / "a.c", tmp_path / "old.h", tmp_path / "new.h"
    deps = DependencyMap()
    deps.record(a, [old])
    deps.record(a, [new])  # the #include was changed
    assert deps.units_using(old) == set()
    assert old not in deps.files()
    assert deps.units_using(new) == {a}
    assert deps.dependencies(a) == frozenset({a, new})


def test_dependencies_of_an_unknown_unit_are_itself(tmp_path: Path) -> None:
    unit = tmp_path / "x.c"
    assert DependencyMap().dependencies(unit) == frozenset({unit})


def test_dependency_paths_are_resolved_through_symlinks(tmp_path: Path) -> None:
    real = tmp_path / "include" / "real.h"
    real.parent.mkdir()
    real.write_text("")
    link = tmp_path / "link.h"
    link.symlink_to(real)
    unit = tmp_path / "a.c"
    deps = DependencyMap()
    deps.record(unit, [link])
    assert deps.units_using(real) == {unit}
    assert deps.units_using(link) == set()  # callers look up real paths


def _command(tmp_path: Path, source: Path, *flags: str) -> CompileCommand:
    return CompileCommand("gcc", flags, tmp_path, source, ORIGIN_COMMAND_LINE)


def test_scan_lists_the_non_system_headers_of_a_unit(tmp_path: Path) -> None:
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "mine.h").write_text('#include "nested.h"\n')
    (tmp_path / "inc" / "nested.h").write_text("#define N 1\n")
    source = tmp_path / "a.c"
    source.write_text('#include <stdio.h>\n#include "mine.h"\nint f(void) { return N; }\n')
    found = scan_dependencies(_command(tmp_path, source, "-Iinc"))
    assert found is not None
    assert set(found) == {source, tmp_path / "inc" / "mine.h", tmp_path / "inc" / "nested.h"}


def test_scan_of_a_unit_that_does_not_preprocess_is_none(tmp_path: Path) -> None:
    source = tmp_path / "a.c"
    source.write_text('#include "missing.h"\n')
    assert scan_dependencies(_command(tmp_path, source)) is None
    missing_compiler = CompileCommand(
        str(tmp_path / "no-cc"), (), tmp_path, source, ORIGIN_COMMAND_LINE
    )
    assert scan_dependencies(missing_compiler) is None


def test_scan_all_maps_each_unit_to_its_result(tmp_path: Path) -> None:
    commands = {tmp_path / f"u{i}.c": _command(tmp_path, tmp_path / f"u{i}.c") for i in range(5)}

    def scan(cmd: CompileCommand) -> list[Path] | None:
        return None if cmd.source.name == "u3.c" else [cmd.source.with_suffix(".h")]

    result = scan_all(commands, scan)
    assert list(result) == list(commands)
    assert result[tmp_path / "u3.c"] is None
    assert result[tmp_path / "u0.c"] == [tmp_path / "u0.h"]
    assert scan_all({}, scan) == {}


# -- saves and content -------------------------------------------------------------------


def test_saved_paths_keeps_watched_files_that_exist(tmp_path: Path) -> None:
    watched_file, other, gone = tmp_path / "a.c", tmp_path / "b.c", tmp_path / "gone.c"
    watched_file.write_text("int a;\n")
    other.write_text("int b;\n")
    swap = tmp_path / ".a.c.swp"
    save_by_rename(watched_file, "int a = 1;\n")
    changes = [watched_file, swap, other, gone]  # a rename-over: the old name gone, then back
    assert saved_paths(changes, {watched_file, gone}) == {watched_file}


def test_saved_paths_resolves_the_names_events_carry(tmp_path: Path) -> None:
    real = tmp_path / "src" / "a.c"
    real.parent.mkdir()
    real.write_text("int a;\n")
    (tmp_path / "alias").symlink_to(real.parent)
    assert saved_paths([tmp_path / "alias" / "a.c"], {real}) == {real}


def test_content_tracker_counts_only_real_changes(tmp_path: Path) -> None:
    path = tmp_path / "a.c"
    path.write_text("int a;\n")
    tracker = ContentTracker()
    tracker.remember([path])
    assert not tracker.differs(path)
    path.write_text("int a;\n")  # saved without a change
    assert tracker.update(path) is False
    path.write_text("int a = 2;\n")
    assert tracker.differs(path)
    assert tracker.differs(path)  # differs() does not remember
    assert tracker.update(path) is True
    assert tracker.update(path) is False
    path.write_text("int a;\n")  # back to the first text: a change again
    assert tracker.update(path) is True


def test_content_tracker_waits_out_a_save_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "a.c"
    path.write_text("int a;\n")
    tracker = ContentTracker()
    tracker.remember([path])
    path.write_text("")  # truncated, not written yet
    assert tracker.update(path) is None
    assert not tracker.differs(path)
    path.write_text("int a;\n")
    assert tracker.update(path) is False  # the save ended where it started
    path.unlink()
    assert tracker.update(path) is None


def test_remember_keeps_the_first_baseline(tmp_path: Path) -> None:
    path = tmp_path / "a.c"
    path.write_text("one\n")
    tracker = ContentTracker()
    tracker.remember([path])
    path.write_text("two\n")
    tracker.remember([path])  # already seen: the baseline stays "one"
    assert tracker.update(path) is True
    unseen = tmp_path / "new.c"
    assert tracker.differs(unseen) is False  # unreadable: no change to act on
    unseen.write_text("x\n")
    assert tracker.differs(unseen)


# -- signals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("INT", signal.SIGINT),
        ("sigint", signal.SIGINT),
        (" usr1 ", signal.SIGUSR1),
        ("SIGHUP", signal.SIGHUP),
        ("15", signal.SIGTERM),
        ("quit", signal.SIGQUIT),
    ],
)
def test_parse_signal_accepts_names_and_numbers(text: str, expected: signal.Signals) -> None:
    assert parse_signal(text) is expected


@pytest.mark.parametrize("text", ["", "SIG", "NOPE", "SIGNOPE", "999", "-2", "2.0"])
def test_parse_signal_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_signal(text)


def test_signal_names() -> None:
    assert signal_name(2) == "SIGINT"
    assert signal_name(int(signal.SIGUSR2)) == "SIGUSR2"
    assert signal_name(200) == "signal 200"


def test_wakeup_wakes_a_waiting_thread() -> None:
    wakeup = Wakeup()
    try:
        assert not wakeup.wait(0.01)
        timer = threading.Timer(0.05, wakeup.set)
        timer.start()
        start = time.monotonic()
        assert wakeup.wait(10.0)
        assert time.monotonic() - start < 5.0
        timer.join()
        assert wakeup.is_set()
        wakeup.clear()
        assert not wakeup.is_set()
        assert not wakeup.wait(0.01)  # the pipe was drained too
        for _ in range(100_000):  # more than a pipe holds: set never blocks
            wakeup.set()
        assert wakeup.wait(0)
    finally:
        wakeup.close()
        wakeup.close()


def test_handle_signals_runs_the_handler_and_restores_the_old_one() -> None:
    wakeup = Wakeup()
    seen: list[int] = []

    def handler(signum: int) -> None:
        seen.append(signum)
        wakeup.set()

    before = signal.getsignal(signal.SIGUSR1)
    try:
        with handle_signals({signal.SIGUSR1: handler}):
            os.kill(os.getpid(), signal.SIGUSR1)
            assert wakeup.wait(10.0)
        assert seen == [signal.SIGUSR1]
        assert signal.getsignal(signal.SIGUSR1) == before
    finally:
        wakeup.close()

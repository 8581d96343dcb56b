"""Two relives on one process: the second waits, then names the holder (issue 9 §5)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import relive.patch.lock
from support import Target, assert_untouched, edit, run_cli


def hold_lock(pid: int, seconds: float) -> subprocess.Popen[str]:
    """Another process that holds ``pid``'s lock for ``seconds`` (as a reload would)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import time
            from relive.patch.lock import process_lock
            with process_lock({pid}):
                print("held", flush=True)
                time.sleep({seconds})
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder


def end(holder: subprocess.Popen[str]) -> None:
    """Kill the lock holder (SIGKILL) and reap it."""
    holder.kill()
    holder.wait()
    assert holder.stdout is not None
    holder.stdout.close()


def test_second_relive_names_the_holder(
    running: Target,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relive.patch.lock, "WAIT_SECONDS", 0.3)
    holder = hold_lock(running.pid, 60)
    try:
        edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
        code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / "prog.c"))
        assert code == 1
        assert f"another relive is working on process {running.pid}" in err
        assert f"pid {holder.pid}: {sys.executable} -c" in err
        assert len(err.strip().splitlines()) == 1
        code, err = run_cli(capsys, "undo", "-p", str(running.pid))
        assert code == 1 and f"pid {holder.pid}" in err
    finally:
        end(holder)
    assert_untouched(running)


def test_second_relive_waits_for_the_first(
    running: Target,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    holder = hold_lock(running.pid, 0.5)
    try:
        edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
        code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / "prog.c"))
        assert code == 0, err
        assert holder.poll() is not None  # it had to finish first
        running.wait_for(r"^value 2$")
    finally:
        end(holder)


def test_killed_holder_leaves_no_lock(
    running: Target,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(relive.patch.lock, "WAIT_SECONDS", 2.0)
    holder = hold_lock(running.pid, 60)
    end(holder)  # SIGKILL: the kernel drops its flock
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / "prog.c"))
    assert code == 0, err
    running.wait_for(r"^value 2$")

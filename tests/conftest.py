"""Fixtures shared by all tests, and the ``needs_root`` marker."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from server_support import Server
from support import VALUE_PROG, SpawnFactory, Target, cannot_run, start_remembered, wait_until

# The suite runs every `relive` command in its own process: no test leaves a command
# server behind (tests/test_server.py turns it on for its own private state dirs).
os.environ["RELIVE_SERVER"] = "0"


@pytest.fixture(autouse=True)
def signal_mask_kept() -> Iterator[None]:
    """A test leaves the test process's signal mask as it found it.

    Programs (and relive processes) the suite starts inherit the mask: a SIGINT
    an in-process reload left blocked made a later `relive run --on-signal INT`
    deaf to Ctrl+C, a failure far from its cause.
    """
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    yield
    after = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert after == before, f"the test left signals blocked: {sorted(after - before)}"


@pytest.fixture
def spawn() -> Iterator[SpawnFactory]:
    """A factory like ``Target.start``; every target it started is killed at teardown."""
    started: list[Target] = []

    def factory(
        argv: Sequence[str | Path],
        cwd: str | Path | None = None,
        stdin_pipe: bool = False,
        new_session: bool = False,
    ) -> Target:
        target = Target.start(argv, cwd=cwd, stdin_pipe=stdin_pipe, new_session=new_session)
        started.append(target)
        return target

    yield factory
    for target in started:
        target.stop()


@pytest.fixture
def running(tmp_path: Path, spawn: SpawnFactory) -> Target:
    """A running ``VALUE_PROG`` (built as ``tmp_path/prog``), its memory map remembered."""
    return start_remembered(tmp_path, spawn, VALUE_PROG)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip ``@pytest.mark.needs_root`` tests for other users (one line in the summary)."""
    if item.get_closest_marker("needs_root") is not None and os.geteuid() != 0:
        cannot_run(
            "tests that give files to another user",
            "only root can chown files away",
            "`sudo make test`",
        )


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    """Commands run with the command server on, in a private state directory; every
    server started there is stopped (or killed) at the end (test_server*.py)."""
    state = tmp_path / "state"
    # The test process reads the same journals (assert_untouched) as the commands.
    monkeypatch.setenv("RELIVE_STATE_DIR", str(state))
    env = {**os.environ, "RELIVE_SERVER": "1", "RELIVE_SERVER_IDLE": "120"}
    env.pop("COVERAGE_PROCESS_START", None)  # a server outlives the coverage run
    handle = Server(state, env)
    yield handle
    handle.run("server", "stop", timeout=60)
    for pid in handle.processes():
        os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not handle.processes(), what="every server of the test exited")

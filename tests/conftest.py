"""Fixtures shared by all tests."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from support import SpawnFactory, Target


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

"""The inotify reader of `watch`: a burst ends when its files are complete, not before."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relive.errors import ReliveError
from relive.watch.notify import Notifier
from relive.watch.signals import Wakeup
from support import save_by_rename


@pytest.fixture
def bursts(tmp_path: Path) -> Iterator[Callable[[Path, float], Iterator[set[Path]]]]:
    """Bursts of ``tmp_path`` for one watched file, with a given quiet time."""
    wake = Wakeup()
    notifiers: list[Notifier] = []

    def start(watched: Path, quiet_s: float) -> Iterator[set[Path]]:
        notifier = Notifier([tmp_path])
        notifiers.append(notifier)
        found = notifier.bursts(
            relevant=lambda path: path == watched,
            stop_fd=wake.fileno(),
            is_stopped=wake.is_set,
            quiet_s=quiet_s,
            longest_s=30.0,
            timeout_s=10.0,
        )
        return found

    yield start
    for notifier in notifiers:
        notifier.close()
    wake.close()


def _later(action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=action)
    thread.start()
    return thread


def test_an_in_place_save_written_in_pieces_ends_its_burst_at_the_close(
    tmp_path: Path, bursts: Callable[[Path, float], Iterator[set[Path]]]
) -> None:
    source = tmp_path / "a.c"
    source.write_text("int a;\n")
    found = bursts(source, 5.0)
    seen: list[str] = []

    def write_slowly() -> None:
        with source.open("w") as f:
            f.write("int a = 1;\n")
            f.flush()
            time.sleep(0.3)  # longer than the grace after a close, shorter than the quiet time
            f.write("int b = 2;\n")

    writer = _later(write_slowly)
    started = time.monotonic()
    assert next(found) == {source}
    seen.append(source.read_text())
    writer.join()
    assert seen == ["int a = 1;\nint b = 2;\n"]  # complete when the burst ended
    assert time.monotonic() - started < 5.0  # at the close, not after the quiet time


def test_a_rename_save_is_one_burst_and_other_files_none(
    tmp_path: Path, bursts: Callable[[Path, float], Iterator[set[Path]]]
) -> None:
    source = tmp_path / "a.c"
    source.write_text("int a;\n")
    found = bursts(source, 5.0)
    (tmp_path / "other.c").write_text("int other;\n")
    writer = _later(lambda: save_by_rename(source, "int a = 3;\n"))
    started = time.monotonic()
    assert next(found) == {source}
    writer.join()
    assert source.read_text() == "int a = 3;\n"
    assert time.monotonic() - started < 5.0


def test_a_file_kept_open_ends_its_burst_after_the_quiet_time(
    tmp_path: Path, bursts: Callable[[Path, float], Iterator[set[Path]]]
) -> None:
    source = tmp_path / "a.c"
    source.write_text("int a;\n")
    found = bursts(source, 0.2)
    fd = os.open(source, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"int b;\n")
        assert next(found) == {source}  # no close: the quiet time ends it
    finally:
        os.close(fd)


def test_a_stop_ends_the_bursts(tmp_path: Path) -> None:
    wake = Wakeup()
    with Notifier([tmp_path]) as notifier:
        found = notifier.bursts(
            relevant=lambda _path: True,
            stop_fd=wake.fileno(),
            is_stopped=wake.is_set,
            quiet_s=0.02,
            longest_s=1.0,
            timeout_s=10.0,
        )
        _later(wake.set).join()
        started = time.monotonic()
        assert list(found) == []
        assert time.monotonic() - started < 5.0
    wake.close()


def test_a_folder_that_cannot_be_watched_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ReliveError, match=r"cannot watch .*missing: No such file"):
        Notifier([tmp_path / "missing"])

"""nano, a terminal program driven through tmux: the title bar is edited while a
buffer holds unsaved text.

The text typed before the reload is still in the buffer afterwards (nano saves
it, with what was typed after), and the title bar, drawn by titlebar() in
winio.c, shows the new text.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from realworld.debsrc import SourceTree
from realworld.realworld_support import assert_reloaded, relive_reload
from support import wait_until

NEW_TITLE = "nano (hot-reloaded)"


@dataclass
class Tmux:
    """A tmux server of its own (socket in the test's folder) running one program."""

    socket: Path

    def run(self, *args: str) -> str:
        proc = subprocess.run(
            ["tmux", "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return proc.stdout

    def screen(self) -> str:
        return self.run("capture-pane", "-p")

    def wait_for(self, text: str, timeout: float = 10) -> None:
        try:
            wait_until(lambda: text in self.screen(), timeout, what=f"{text!r} is on screen")
        except AssertionError as e:
            size = self.run("display", "-p", "#{window_width}x#{window_height}").strip()
            raise AssertionError(f"{e}; the {size} screen:\n{self.screen()}") from None

    def type(self, text: str) -> None:
        self.run("send-keys", "-l", text)

    def keys(self, *keys: str) -> None:
        self.run("send-keys", *keys)

    def pane_pid(self) -> int:
        return int(self.run("list-panes", "-F", "#{pane_pid}").strip())


@pytest.fixture
def nano(nano_src: SourceTree, tmp_path: Path) -> Iterator[tuple[Tmux, int, Path]]:
    """nano editing a new file in a 100x30 tmux window; the tmux server is killed after.

    The file is named relative to the working folder: with a long path nano's
    title bar leaves out its version, and with it the text the test edits.
    """
    tmux = Tmux(tmp_path / "tmux.sock")
    notes = tmp_path / "notes.txt"
    nano = str(nano_src.path / "src/nano")
    tmux.run(
        "-f", "/dev/null", "new-session", "-d", "-x", "100", "-y", "30", "-c", str(tmp_path),
        "--", nano, "--ignorercfiles", notes.name,
    )  # fmt: skip
    pid = tmux.pane_pid()
    try:
        # The pane's process is tmux's fork until it has exec'd nano.
        wait_until(
            lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "nano",
            what="the pane runs nano",
        )
        tmux.wait_for("GNU nano")
        yield tmux, pid, notes
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            tmux.run("kill-server")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_title_bar_changes_and_unsaved_text_stays(
    nano_src: SourceTree, nano: tuple[Tmux, int, Path]
) -> None:
    tmux, pid, notes = nano
    tmux.type("typed before the reload")
    tmux.keys("Enter")
    tmux.wait_for("Modified")
    assert "GNU nano" in tmux.screen().splitlines()[0]

    source = nano_src.edit(
        "src/winio.c", "\t\t\tupperleft = BRANDING;", f'\t\t\tupperleft = "{NEW_TITLE}";'
    )
    assert_reloaded(
        relive_reload(pid, source),
        "titlebar",
        ("-O2", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2", "-DHAVE_CONFIG_H"),
    )

    tmux.type("and after it")
    tmux.keys("C-s")  # save: the title bar is redrawn without "Modified"
    tmux.wait_for("[ Wrote 2 lines ]")
    title = tmux.screen().splitlines()[0]
    assert NEW_TITLE in title and "Modified" not in title, title
    assert notes.read_text() == "typed before the reload\nand after it\n"
    assert Path(f"/proc/{pid}").exists()

"""sqlite3 3.40.1, the shell on a pipe with a database open: upper() changes under it.

The shell runs the amalgamation (sqlite3.c, 250k lines) from the libsqlite3.so
its own build made.  Before the reload it opens a database file, fills a TEMP
table, defines a TEMP view and a TEMP trigger (compiled schema in the heap), a
shell parameter (a row of the TEMP table ``sqlite_parameters``), and opens a
transaction whose rows are not committed.  ``upperFunc`` is then edited to write
spaces as underscores and the whole sqlite3.c is reloaded, once for the module
(gcc needs about a minute for it): every test below looks at that one reload,
in file order (the last ones commit the transaction, then undo the reload).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from realworld.debsrc import SourceTree
from realworld.realworld_support import Reload, assert_reloaded, relive_reload
from support import Target

OLD_LOOP = "z1[i] = (char)sqlite3Toupper(z2[i]);"
NEW_LOOP = "z1[i] = z2[i]==' ' ? '_' : (char)sqlite3Toupper(z2[i]);"
# Flags of sqlite3's own build (configure's -g -O2, its -D's, libtool's -fPIC for
# the shared library the shell runs) that relive must find by itself.
OWN_FLAGS = ("-O2", "-fPIC", "-DSQLITE_THREADSAFE=1", "-DSQLITE_TEMP_STORE=1", "-DNDEBUG")
COMMITTED = 50  # rows of main.kv committed before the transaction
PENDING = 30  # rows of main.kv inserted in the open transaction before the reload
NOTES = 200  # rows of the TEMP table
# gcc -O2 -g takes about a minute for sqlite3.c alone; other builds may share the CPUs.
RELOAD_TIMEOUT = 900


class Shell:
    """The sqlite3 shell reading SQL from a pipe; each call waits for its output."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._asked = 0

    def run(self, sql: str, timeout: float = 30) -> list[str]:
        """Run ``sql`` and return the lines it printed; an error line fails the test."""
        self._asked += 1
        marker = f"-- done {self._asked} --"
        start = self.target.mark()
        self.target.write(f"{sql}\nSELECT '{marker}';\n".encode())
        self.target.wait_for(f"^{re.escape(marker)}$", timeout=timeout)
        lines = self.target.lines[start:]
        lines = lines[: lines.index(marker)]
        errors = [line for line in lines if re.match(r"(Parse|Runtime) error|Error", line)]
        assert not errors, f"sqlite3 reported errors for {sql!r}: {errors}"
        return lines

    def value(self, sql: str) -> str:
        """The one line one query printed."""
        lines = self.run(sql)
        assert len(lines) == 1, f"{sql!r} printed {lines}"
        return lines[0]


@dataclass
class Session:
    """The shell after the reload, its database file and what relive reported."""

    shell: Shell
    database: Path
    reload: Reload
    start_time: str  # /proc/PID/stat's start time: the same process throughout

    @property
    def pid(self) -> int:
        return self.shell.target.pid

    def assert_same_process(self) -> None:
        assert self.shell.target.alive(), f"sqlite3 died:\n{self.shell.target.lines[-20:]}"
        assert _start_time(self.pid) == self.start_time


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def committed_rows(database: Path) -> int:
    """How many rows of kv another connection (Python's own SQLite) sees."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as other:
        return int(other.execute("SELECT count(*) FROM kv").fetchone()[0])


def _prepare_state(shell: Shell) -> None:
    """The database, TEMP objects, a parameter and an open transaction, before the reload."""
    shell.run(
        "CREATE TABLE kv(k INTEGER PRIMARY KEY, v TEXT);\n"
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {COMMITTED})\n"
        "  INSERT INTO kv SELECT i, 'value ' || i FROM n;\n"
        "CREATE TEMP TABLE notes(id INTEGER PRIMARY KEY, note TEXT);\n"
        f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {NOTES})\n"
        "  INSERT INTO notes SELECT i, 'note number ' || i FROM n;\n"
        "CREATE TEMP VIEW loud AS SELECT id, upper(note) AS shout FROM notes;\n"
        "CREATE TEMP TRIGGER kv_added AFTER INSERT ON main.kv BEGIN\n"
        "  INSERT INTO notes(note) VALUES ('added ' || new.v);\n"
        "END;\n"
        ".parameter set @who 'hot reload'\n"
        ".nullvalue <nothing>"
    )
    shell.run(
        "BEGIN;\n"
        f"INSERT INTO kv SELECT k + {COMMITTED}, 'pending ' || k FROM kv WHERE k <= {PENDING};"
    )
    assert shell.value("SELECT upper(@who), lower('HOT RELOAD');") == "HOT RELOAD|hot reload"
    assert shell.value("SELECT shout FROM loud WHERE id = 7;") == "NOTE NUMBER 7"


@pytest.fixture(scope="module")
def session(sqlite_tree: SourceTree, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """The shell, its state prepared, after one reload of the edited sqlite3.c."""
    folder = tmp_path_factory.mktemp("sqlite3")
    database = folder / "live.db"
    target = Target.start([sqlite_tree.path / "sqlite3", database], cwd=folder, stdin_pipe=True)
    try:
        shell = Shell(target)
        _prepare_state(shell)
        start_time = _start_time(target.pid)
        source = sqlite_tree.edit("sqlite3.c", OLD_LOOP, NEW_LOOP)
        result = relive_reload(target.pid, source, timeout=RELOAD_TIMEOUT)
        if result.returncode != 0:
            pytest.fail(f"relive reload failed:\n{result.output[-3000:]}", pytrace=False)
        yield Session(shell, database, result, start_time)
    finally:
        sqlite_tree.restore()
        target.stop()


def test_report_redirects_upper_alone(session: Session) -> None:
    result = session.reload
    assert_reloaded(result, "upperFunc", OWN_FLAGS)
    assert result.names("redirected") == ["upperFunc"], result.names("redirected")
    assert result.names("new") == []
    unchanged = result.names("unchanged")
    assert len(unchanged) >= 1400
    assert {"lowerFunc", "sqlite3_step", "sqlite3VdbeExec"} <= set(unchanged)
    # Nothing else is left out: only gcc's cold parts, which go with their functions.
    skipped = [e for e in result.events if e["kind"] == "skipped"]
    assert {e["reason"] for e in skipped} <= {"cold part, loaded with its function"}, skipped
    assert all(e["name"].endswith(".cold") for e in skipped), skipped
    notices = [e["message"] for e in result.events if e["kind"] == "notice"]
    assert not [n for n in notices if "initial value changed" in n], notices
    session.assert_same_process()


def test_new_upper_runs_with_temp_state_kept(session: Session) -> None:
    shell = session.shell
    # The new code, reached from SQL typed now and from a view defined before.
    assert shell.value("SELECT upper('live shell'), lower('LIVE SHELL');") == (
        "LIVE_SHELL|live shell"
    )
    assert shell.value("SELECT upper(@who);") == "HOT_RELOAD"
    assert shell.value("SELECT shout FROM loud WHERE id = 7;") == "NOTE_NUMBER_7"
    # The TEMP table, its rows, and the shell's own settings.
    assert shell.value(f"SELECT count(*), sum(id) FROM notes WHERE id <= {NOTES};") == (
        f"{NOTES}|{NOTES * (NOTES + 1) // 2}"
    )
    assert shell.value("SELECT note FROM notes WHERE id = 123;") == "note number 123"
    assert shell.value("SELECT NULL;") == "<nothing>"
    temp = shell.run("SELECT type || ' ' || name FROM temp.sqlite_schema ORDER BY name;")
    assert temp == ["trigger kv_added", "view loud", "table notes", "table sqlite_parameters"]
    session.assert_same_process()


def test_open_transaction_survives_and_commits(session: Session) -> None:
    shell = session.shell
    journal = session.database.with_name(session.database.name + "-journal")
    # Still inside the transaction begun before the reload: its rows are seen
    # here, the file's other readers see none of them, the journal is there.
    assert shell.value("SELECT count(*) FROM kv;") == str(COMMITTED + PENDING)
    assert committed_rows(session.database) == COMMITTED
    assert journal.exists()
    # More writes in the same transaction: the TEMP trigger fires for each row.
    shell.run("INSERT INTO kv VALUES (1000, 'after the reload');")
    assert shell.value("SELECT upper(note) FROM notes WHERE note LIKE '%after%';") == (
        "ADDED_AFTER_THE_RELOAD"
    )
    assert committed_rows(session.database) == COMMITTED
    shell.run("COMMIT;")
    assert committed_rows(session.database) == COMMITTED + PENDING + 1
    assert not journal.exists()
    session.assert_same_process()


def relive(pid: int, command: str) -> Reload:
    """``relive --json COMMAND -p PID`` (status, undo), as a user would run it."""
    proc = subprocess.run(
        [sys.executable, "-m", "relive", "--json", command, "-p", str(pid)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"relive {command} failed:\n{proc.stdout}{proc.stderr}"
    return Reload(proc.returncode, proc.stdout)


def test_undo_brings_the_old_upper_back(session: Session) -> None:
    redirected = next(e for e in session.reload.events if e["kind"] == "redirected")
    [patch] = [e for e in relive(session.pid, "status").events if e["kind"] == "patch"]
    assert (patch["name"], patch["address"], patch["active"]) == (
        "upperFunc",
        redirected["old_address"],
        True,
    )
    assert patch["source"].endswith("/sqlite3.c")

    assert relive(session.pid, "undo").names("restored") == ["upperFunc"]
    assert [e for e in relive(session.pid, "status").events if e["kind"] == "patch"] == []
    shell = session.shell
    assert shell.value("SELECT upper('live shell'), upper(@who);") == "LIVE SHELL|HOT RELOAD"
    assert shell.value("SELECT shout FROM loud WHERE id = 7;") == "NOTE NUMBER 7"
    # The shell goes on working on the same database.
    shell.run("INSERT INTO kv VALUES (2000, 'after the undo');")
    assert committed_rows(session.database) == COMMITTED + PENDING + 2
    session.assert_same_process()

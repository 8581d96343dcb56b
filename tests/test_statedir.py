"""The state directory is relive's alone: a hostile one is refused, links are never followed.

A journal says which bytes ``undo`` writes into a process, so a directory another
user can write (or swapped for a link) would let that user choose them.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

import relive
from relive import statedir
from relive.cli.main import main
from relive.patch.journal import journal_name, load_journal
from relive.process.procfs import get_start_time
from relive.statedir import (
    StateDirError,
    _exchange,
    find_state_dir,
    open_state_dir,
    read_state_file,
    scratch_dir,
    write_state_file,
)
from support import (
    NOBODY,
    Target,
    assert_untouched,
    edit,
    remember_maps,
    run_cli,
)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh state directory path (not created) that relive is told to use."""
    path = tmp_path / "state"
    monkeypatch.setenv("RELIVE_STATE_DIR", str(path))
    return path


def _refused(capsys: pytest.CaptureFixture[str], target: Target, why: str) -> None:
    """Every command on the target refuses with one line naming ``why``, exit 1."""
    source = str(Path(target.argv[0]).with_suffix(".c"))
    for argv in (["status"], ["undo"], ["reload", source]):
        code, err = run_cli(capsys, *argv[:1], "-p", str(target.pid), *argv[1:])
        assert code == 1, (argv, err)
        assert why in err and "RELIVE_STATE_DIR" in err, err
        assert len(err.strip().splitlines()) == 1, err


def test_created_private(state: Path) -> None:
    path, fd = open_state_dir()
    os.close(fd)
    assert path == state
    st = os.lstat(state)
    assert st.st_mode & 0o777 == 0o700 and st.st_uid == os.geteuid()


def test_default_locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RELIVE_STATE_DIR", raising=False)
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert find_state_dir() == runtime / "relive"
    # A runtime directory others may write is no place for journals: /tmp instead.
    runtime.chmod(0o777)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert find_state_dir() == tmp_path / f"relive-{os.geteuid()}"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert find_state_dir() == tmp_path / f"relive-{os.geteuid()}"


def test_open_to_others_is_refused(
    state: Path, running: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    remember_maps(running)
    state.mkdir()
    state.chmod(0o777)
    _refused(capsys, running, "open to other users (mode 777)")
    assert list(state.iterdir()) == []
    state.chmod(0o700)
    assert_untouched(running)


@pytest.mark.needs_root
def test_owned_by_another_user_is_refused(
    state: Path, running: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    remember_maps(running)
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    _refused(capsys, running, f"belongs to uid {NOBODY}")
    assert list(state.iterdir()) == []
    os.chown(state, 0, 0)
    assert_untouched(running)


def test_symlink_is_refused(
    state: Path, tmp_path: Path, running: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    remember_maps(running)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    state.symlink_to(elsewhere)
    _refused(capsys, running, "is a symbolic link")
    assert list(elsewhere.iterdir()) == []
    state.unlink()
    assert_untouched(running)


def test_planted_links_are_never_followed(
    state: Path, tmp_path: Path, running: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    """Links at the temporary and at the journal's name: the files they point to stay
    as they were; a linked journal is refused, a linked temporary file replaced."""
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    state.mkdir(mode=0o700)
    name = journal_name(running.pid, get_start_time(running.pid))
    for tmp in (f"{name[:-5]}.tmp", f".{name}.tmp", f".{name}.{os.getpid()}.tmp"):
        (state / tmp).symlink_to(secret)
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / "prog.c"))
    assert code == 0, err
    running.wait_for(r"^value 2$")
    assert secret.read_text() == "root only\n"
    assert not (state / name).is_symlink()
    assert [p.name for p in load_journal(running.pid).patches.values()] == ["value"]

    (state / name).unlink()
    (state / name).symlink_to(secret)
    code, err = run_cli(capsys, "status", "-p", str(running.pid))
    assert code == 1
    assert "is not a file relive wrote" in err and len(err.strip().splitlines()) == 1
    assert secret.read_text() == "root only\n"


def test_journal_readable_only_by_its_user(state: Path, running: Target, tmp_path: Path) -> None:
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    relive.attach(running.pid).reload([tmp_path / "prog.c"])
    journal = state / journal_name(running.pid, get_start_time(running.pid))
    assert journal.stat().st_mode & 0o777 == 0o600


def test_stale_scratch_folders_are_removed(state: Path) -> None:
    with scratch_dir() as scratch:
        assert scratch.parent == state and scratch.is_dir()
    assert not scratch.exists()
    # What a killed relive (a pid that no longer runs) left behind goes; a live one's stays.
    dead = state / "scratch-999999999-abcd"
    alive = state / f"scratch-{os.getppid()}-abcd"
    for folder in (dead, alive):
        folder.mkdir()
        (folder / "x.o").write_bytes(b"\x7fELF")
    half_written = state / ".1-2.json.999999999.tmp"
    being_written = state / f".1-2.json.{os.getppid()}.tmp"
    for file in (half_written, being_written):
        file.write_bytes(b"{")
    with scratch_dir():
        pass  # looked already a moment ago (a long watch does not list the folder each time)
    assert dead.exists() and half_written.exists()
    statedir._scratch_swept_at.clear()  # as the next relive, or a minute later
    with scratch_dir():
        pass
    assert not dead.exists() and alive.exists()
    assert not half_written.exists() and being_written.exists()


def test_reload_leaves_no_scratch(state: Path, running: Target, tmp_path: Path) -> None:
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    relive.attach(running.pid).reload([tmp_path / "prog.c"])
    assert not [p for p in state.iterdir() if p.name.startswith("scratch-")]


def test_unsafe_dir_error_is_a_relive_error(state: Path) -> None:
    state.mkdir(mode=0o750)
    with pytest.raises(StateDirError, match="mode 750"):
        open_state_dir()


_PATCH = {
    "name": "value",
    "source": "/x/prog.c",
    "module": "/x/prog",
    "entry": 4096,
    "original": "f30f1efa55",
    "written": "e900000000",
    "target": 8192,
    "count": 1,
    "updated": 0.0,
}


def _patches(**changes: object) -> bytes:
    return json.dumps({"patches": {"k": dict(_PATCH, **changes)}}).encode()


@pytest.mark.parametrize(
    "contents",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"patches": []}',
        _patches(entry="4096"),
        _patches(evil=1),
        _patches(written="e9zz"),
        _patches(written="e9"),
        b'{"sources": {"s": {"definitions": {"d": {"name": 1}}}}}',
        b'{"sources": {"s": {"keys": {"f": 1}}}}',
        b'{"regions": [["0x1000", 4096]]}',
        b'{"pid": 1, "start_time": 2}',
    ],
    ids=[
        "not-json",
        "not-utf8",
        "list",
        "patches-list",
        "string-address",
        "unknown-field",
        "odd-hex",
        "short-bytes",
        "bad-definition",
        "bad-code-key",
        "bad-region",
        "other-process",
    ],
)
def test_corrupt_journal_never_gives_a_traceback(
    state: Path, running: Target, capsys: pytest.CaptureFixture[str], contents: bytes
) -> None:
    remember_maps(running)
    state.mkdir(mode=0o700)
    name = journal_name(running.pid, get_start_time(running.pid))
    (state / name).write_bytes(contents)
    source = Path(running.argv[0]).with_suffix(".c")
    edit(source, "return table[0];", "return table[1];")  # a reload with work to do
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(source))
    assert code == 1, err
    assert f"the journal {state / name} is corrupt" in err and "relive undo" in err
    assert len(err.strip().splitlines()) == 1, err
    # status says so and finds what is patched from memory (here: nothing) ...
    code, err = _cli_all(capsys, "status", "-p", str(running.pid))
    assert code == 0, err
    assert "is corrupt" in err and "found again by comparing memory" in err
    assert "Traceback" not in err
    # ... and undo puts a valid journal in its place.
    code, err = run_cli(capsys, "undo", "-p", str(running.pid))
    assert code == 0, err
    assert load_journal(running.pid).patches == {}
    assert_untouched(running)


def _cli_all(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Like run_cli, with stdout (where notices go) and stderr together."""
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_corrupt_journal_of_a_patched_process(
    state: Path, running: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    """The journal is lost after a reload: status finds the jump in memory, undo puts
    back the executable file's bytes and a new journal."""
    source = Path(running.argv[0]).with_suffix(".c")
    edit(source, "return table[0];", "return table[1];")
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(source))
    assert code == 0, err
    running.wait_for(r"^value 2$")
    name = journal_name(running.pid, get_start_time(running.pid))
    (state / name).write_bytes(b"{garbage")
    [row] = relive.attach(running.pid).status()
    assert row.name == "value" and row.active
    code, err = _cli_all(capsys, "undo", "-p", str(running.pid))
    assert code == 0, err
    assert "is corrupt" in err
    mark = running.mark()
    running.wait_for(r"^value 1$", after=mark)
    assert json.loads((state / name).read_text())["patches"] == {}
    assert relive.attach(running.pid).status() == []


def test_undo_puts_back_only_what_the_file_holds(
    state: Path, running: Target, capsys: pytest.CaptureFixture[str]
) -> None:
    """A journal that parses but whose original bytes are not the executable's (forged,
    or from another build) is not believed: undo writes the file's bytes."""
    source = Path(running.argv[0]).with_suffix(".c")
    edit(source, "return table[0];", "return table[1];")
    assert run_cli(capsys, "reload", "-p", str(running.pid), str(source))[0] == 0
    running.wait_for(r"^value 2$")
    path = state / journal_name(running.pid, get_start_time(running.pid))
    raw = json.loads(path.read_text())
    [patch] = raw["patches"].values()
    forged = "cc" * (len(patch["original"]) // 2)  # int3s: the process would die
    patch["original"] = forged
    path.write_text(json.dumps(raw))
    code, out = _cli_all(capsys, "undo", "-p", str(running.pid))
    assert code == 0, out
    assert f"the bytes it would put back at value ({forged})" in out
    running.wait_for(r"^value 1$", after=running.mark())
    assert running.alive()
    assert relive.attach(running.pid).status() == []


def test_clean_removes_only_what_exited_processes_left(
    state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    me = f"{os.getpid()}-{get_start_time(os.getpid())}"
    gone = f"{os.getpid()}-1"  # this pid with another start time: a process that exited
    for prefix in (me, gone):
        folder = state / "debug" / prefix
        folder.mkdir(parents=True, mode=0o700)
        (folder / "manifest.json").write_text("[]")
    state.chmod(0o700)
    code = main(["clean"])
    out = capsys.readouterr().out
    assert code == 0 and "1 exited process" in out, out
    assert os.listdir(state / "debug") == [me]


def test_clean_refuses_an_unsafe_state_dir(
    state: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "debug" / "5-1").mkdir(parents=True)
    state.symlink_to(elsewhere)
    code, err = run_cli(capsys, "clean")
    assert code == 1 and "symbolic link" in err, err
    assert os.listdir(elsewhere / "debug") == ["5-1"]


def test_exited_journals_are_swept_once_per_command_not_at_every_save(
    state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from relive.patch import journal as journals

    monkeypatch.setattr(journals, "_swept_at", {})
    me = os.getpid()
    ours = journals.Journal(me, get_start_time(me))
    gone = journal_name(me, 1)  # this pid with another start time: a process that exited
    journals.save_journal(ours)  # the first save of this relive sweeps
    (state / gone).write_text("{}")
    journals.save_journal(ours)  # a second save in the same minute does not
    assert (state / gone).exists()
    monkeypatch.setattr(journals, "SWEEP_EVERY", 0.0)  # as if a minute had passed (a watch)
    journals.save_journal(ours)
    assert not (state / gone).exists()
    assert (state / journal_name(me, ours.start_time)).exists()  # a live one stays


def test_state_file_replaced_whole_leaving_no_temporary(state: Path) -> None:
    """A state file is replaced by swapping the new file in (no flush on ext4) and
    removing the old one: its name holds the new content, nothing else is left."""
    write_state_file("a.json", b"first")
    write_state_file("a.json", b"second")
    assert read_state_file("a.json") == b"second"
    assert os.listdir(state) == ["a.json"]
    (state / "other").write_bytes(b"old")
    (state / "new").write_bytes(b"new")
    _, dir_fd = open_state_dir()
    try:
        if not _exchange("new", "other", dir_fd):
            pytest.skip("this file system cannot exchange names (a plain rename is used)")
    finally:
        os.close(dir_fd)
    assert (state / "other").read_bytes() == b"new" and (state / "new").read_bytes() == b"old"

"""The command server (relive.cli.server) and its client (relive.cli.client), for real.

Each test has a private state directory (RELIVE_STATE_DIR), so a private server,
stopped (and, failing that, killed) when the test ends.  The suite's conftest
turns the server off (RELIVE_SERVER=0); these tests turn it on for their commands.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from relive.cli.client import OP_STATUS, ask
from server_support import SLOW_PROG, Server, edited, running_value, value_prog
from support import (
    NOBODY,
    VALUE_PROG,
    SpawnFactory,
    assert_untouched,
    children,
    wait_until,
)

SRC = Path(__file__).resolve().parent.parent / "src"

#: Kinds whose content differs between two runs (times, addresses of a compile).
VARYING = {"compiled", "timings", "progress"}


def _events(stdout: str) -> list[tuple[str, str | None]]:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return [(e["kind"], e.get("name")) for e in events if e["kind"] not in VARYING]


def test_second_command_is_served_like_in_process(
    tmp_path: Path, spawn: SpawnFactory, server: Server
) -> None:
    exe = value_prog(tmp_path)
    here, served = running_value(spawn, exe), running_value(spawn, exe)
    first = server.run("status", "-p", str(served.pid))  # no server yet: runs here, starts one
    assert first.returncode == 0, first.stderr
    assert "nothing patched" in first.stdout
    up = server.wait_up()
    assert up["served"] == 0
    source = edited(tmp_path, VALUE_PROG)

    direct = server.run(
        "--json",
        "reload",
        "-p",
        str(here.pid),
        str(source),
        env={**server.env, "RELIVE_SERVER": "0"},
    )
    through = server.run("--json", "reload", "-p", str(served.pid), str(source))

    assert (through.returncode, direct.returncode) == (0, 0), through.stderr + direct.stderr
    assert _events(through.stdout) == _events(direct.stdout)
    assert ("redirected", "value") in _events(through.stdout)
    served.wait_for(r"^value 2$")
    here.wait_for(r"^value 2$")
    after = server.info()
    assert (after["pid"], after["served"]) == (up["pid"], 1)  # the reload was served
    assert after["running"] == []


def test_argument_errors_and_exit_codes_pass_through(tmp_path: Path, server: Server) -> None:
    assert server.run("status", "-p", str(os.getpid())).returncode in (0, 3)
    server.wait_up()
    missing = server.run("reload", "-p", "999999999", str(tmp_path / "none.c"))
    assert missing.returncode == 5, missing.stderr
    assert missing.stderr.startswith("relive: error"), missing.stderr
    usage = server.run("reload", "--no-such-option")
    assert usage.returncode == 2
    assert "usage: relive" in usage.stderr
    assert server.info()["served"] == 2


def _wait_compiling() -> int:
    """The pid of the server's child running a command, once it runs gcc."""
    found: list[int] = []

    def compiling() -> bool:
        # Asked from here (the same state directory): a `relive server status`
        # process would take longer to start than a fast machine's compile.
        answer = ask(OP_STATUS) or {}
        running = answer.get("running") or []
        assert isinstance(running, list)
        if running and children(running[0]):
            found.append(running[0])
            return True
        return False

    wait_until(compiling, timeout=60, what="the served reload runs gcc")
    return found[0]


def test_ctrl_c_reaches_the_child(tmp_path: Path, spawn: SpawnFactory, server: Server) -> None:
    exe = value_prog(tmp_path, SLOW_PROG)
    target = running_value(spawn, exe)
    server.run("status", "-p", str(target.pid))
    server.wait_up()
    source = edited(tmp_path, SLOW_PROG)
    command = server.start("reload", "-p", str(target.pid), str(source))
    child = _wait_compiling()
    command.send_signal(signal.SIGINT)
    _, err = command.communicate(timeout=60)
    assert command.returncode == 130, err
    wait_until(lambda: not Path(f"/proc/{child}").exists(), what="the child exited")
    assert_untouched(target)
    assert server.info()["running"] == []


def test_ctrl_c_before_the_server_answers(
    tmp_path: Path, spawn: SpawnFactory, server: Server
) -> None:
    """A server that does not answer (stopped) cannot keep Ctrl+C from working, and
    runs nothing for the client once it goes on."""
    target = running_value(spawn, value_prog(tmp_path))
    server.run("status", "-p", str(target.pid))
    pid = server.wait_up()["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        command = server.start("reload", "-p", str(target.pid), str(edited(tmp_path, VALUE_PROG)))
        waiting = f"/proc/{command.pid}/syscall"
        # Blocked in recvfrom (45 on x86-64: a peek at the socket): the request is
        # sent, no answer came.
        wait_until(lambda: Path(waiting).read_text().split()[0] == "45", what="the client waits")
        command.send_signal(signal.SIGINT)
        # (Its stdout and stderr stay open until the server takes the request: the
        # descriptors travel in it.)
        assert command.wait(timeout=60) == 130
    finally:
        os.kill(pid, signal.SIGCONT)
    _, err = command.communicate(timeout=60)
    assert err == ""
    # The server answers in turn: the request came first.  Its client is gone, so it
    # runs nothing (it declines a peer it cannot check; a child it forked would find
    # no client to tell its pid and give up).
    wait_until(lambda: server.info()["running"] == [], what="no child runs")
    assert_untouched(target)


def test_killed_child_is_one_line_and_exit_10(
    tmp_path: Path, spawn: SpawnFactory, server: Server
) -> None:
    exe = value_prog(tmp_path, SLOW_PROG)
    target = running_value(spawn, exe)
    server.run("status", "-p", str(target.pid))
    server.wait_up()
    command = server.start("reload", "-p", str(target.pid), str(edited(tmp_path, SLOW_PROG)))
    os.kill(_wait_compiling(), signal.SIGKILL)
    _, err = command.communicate(timeout=60)
    assert command.returncode == 10, err
    [line] = err.splitlines()
    assert line.startswith("relive: error: the command server's process running this command")
    assert "killed by signal 9" in line
    assert_untouched(target)


def test_another_uid_is_refused(server: Server) -> None:
    server.run("status", "-p", str(os.getpid()))
    up = server.wait_up()
    # Passes the file-system checks (file-system uid 0) but connects as nobody
    # (effective uid, what SO_PEERCRED reports): only the server's own check is left.
    script = textwrap.dedent(
        f"""
        import ctypes, os, socket
        from relive.cli.client import OP_STATUS, frame, pack
        os.setresuid({NOBODY}, {NOBODY}, 0)
        ctypes.CDLL(None, use_errno=True).setfsuid(0)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect({str(server.state / "server.sock")!r})
        try:
            sock.sendall(frame(OP_STATUS, pack([b""])))
            print("closed" if sock.recv(100) == b"" else "answered")
        except (BrokenPipeError, ConnectionResetError):
            print("closed")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.stdout.strip() == "closed", done.stderr
    after = server.info()
    assert (after["pid"], after["served"]) == (up["pid"], 0)


def test_changed_code_makes_the_server_exit(
    tmp_path: Path, spawn: SpawnFactory, server: Server
) -> None:
    copy = tmp_path / "pkg"
    shutil.copytree(SRC / "relive", copy / "relive", ignore=shutil.ignore_patterns("__pycache__"))
    server.env["PYTHONPATH"] = str(copy)
    target = running_value(spawn, value_prog(tmp_path))
    server.run("status", "-p", str(target.pid))
    old = server.wait_up()
    render_py = copy / "relive" / "cli" / "render.py"
    st = render_py.stat()
    os.utime(render_py, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    done = server.run("reload", "-p", str(target.pid), str(edited(tmp_path, VALUE_PROG)))

    assert done.returncode == 0, done.stderr
    target.wait_for(r"^value 2$")
    wait_until(lambda: not Path(f"/proc/{old['pid']}").exists(), what="the stale server exited")
    new = server.wait_up(other_than=old["pid"])  # the command started a new one
    assert new["served"] == 0 and new["current"]


def test_one_server_per_state_directory(server: Server) -> None:
    """Servers started together: one serves, the others exit; a dead server's
    socket is replaced by the next one."""
    argv = [sys.executable, "-P", "-m", "relive.cli.server"]
    started = [subprocess.Popen(argv, env=server.env) for _ in range(3)]
    up = server.wait_up()
    losers = [proc for proc in started if proc.pid != up["pid"]]
    assert len(losers) == 2
    assert [proc.wait(timeout=60) for proc in losers] == [0, 0]
    assert server.processes() == [up["pid"]]
    os.kill(up["pid"], signal.SIGKILL)
    next(proc for proc in started if proc.pid == up["pid"]).wait(timeout=60)
    assert (server.state / "server.sock").exists()  # left behind: nobody listens
    done = server.run("status", "-p", str(os.getpid()))
    assert done.returncode in (0, 3), done.stderr  # ran in-process, started a server
    new = server.wait_up(other_than=up["pid"])
    assert new["served"] == 0


def test_by_name_the_client_and_server_are_not_targets(
    tmp_path: Path, spawn: SpawnFactory, server: Server
) -> None:
    """``-n NAME`` finds neither the client nor the server when they have NAME too
    (as ``relive -n python`` would find them), as in-process it never finds itself."""
    import site

    name = f"relivepy{os.getpid() % 10000}"
    (tmp_path / "py").mkdir()
    (tmp_path / "bin").mkdir()
    python = tmp_path / "py" / name
    python.symlink_to(sys.executable)
    exe = value_prog(tmp_path)
    shutil.copy(exe, tmp_path / "bin" / name)
    target = running_value(spawn, tmp_path / "bin" / name)
    server.env["PYTHONPATH"] = os.pathsep.join([str(SRC), *site.getsitepackages()])
    argv = [str(python), "-m", "relive", "status", "-n", name]

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env=server.env, capture_output=True, text=True, check=False, timeout=120
        )

    first = run()  # in-process; starts a server named NAME too
    assert first.returncode == 0, first.stderr
    up = server.wait_up()
    assert Path(f"/proc/{up['pid']}/comm").read_text().strip() == name
    served = run()
    assert served.returncode == 0, served.stderr
    assert served.stdout == first.stdout == f"pid {target.pid}: nothing patched\n"
    assert server.info()["served"] == 1


def test_idle_server_exits(tmp_path: Path, server: Server) -> None:
    server.env["RELIVE_SERVER_IDLE"] = "1"
    server.run("status", "-p", str(os.getpid()))
    pid = server.wait_up()["pid"]
    wait_until(lambda: not Path(f"/proc/{pid}").exists(), timeout=30, what="the server exited")
    assert not (server.state / "server.sock").exists()


@pytest.mark.parametrize("how", ["RELIVE_SERVER=0", "--no-server"])
def test_turned_off_starts_none(
    tmp_path: Path, spawn: SpawnFactory, server: Server, how: str
) -> None:
    target = running_value(spawn, value_prog(tmp_path))
    env = {**server.env, "RELIVE_SERVER": "0"} if how == "RELIVE_SERVER=0" else server.env
    options = ["--no-server"] if how == "--no-server" else []
    done = server.run(
        *options, "reload", "-p", str(target.pid), str(edited(tmp_path, VALUE_PROG)), env=env
    )
    assert done.returncode == 0, done.stderr
    target.wait_for(r"^value 2$")
    # A server would have been started before the command exited: none was.
    assert server.processes() == []
    assert not (server.state / "server.sock").exists()


def test_unsafe_state_directory_starts_no_server(server: Server) -> None:
    server.state.mkdir()
    server.state.chmod(0o777)
    done = server.run("status", "-p", str(os.getpid()))
    assert done.returncode == 1
    assert "open to other users (mode 777)" in done.stderr
    assert server.processes() == []
    assert list(server.state.iterdir()) == []


def test_client_imports_little() -> None:
    script = (
        "import sys; before = set(sys.modules); import relive.cli.client; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    allowed = {"__future__", "_signal", "_socket", "relive", "relive.cli", "relive.cli.client"}
    allowed |= {"relive.statedir", "relive.errors", "errno"}
    assert set(done.stdout.split()) <= allowed, done.stdout

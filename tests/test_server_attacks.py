"""The command server under bad luck and hostile input: what a review found, for real.

Each test runs commands with the server on in a private state directory (the
``server`` fixture of test_server.py) and compares with the same command run in
the command's own process where the two must agree.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from array import array
from collections.abc import Callable
from pathlib import Path

import pytest

import relive
from relive.cli import client
from relive.cli.client import OP_RUN, OP_STATUS, ask, frame, pack
from relive.events import Event, FunctionRedirected, ReloadFinished
from relive.patch.transaction import StagedReload
from server_support import SLOW_PROG, Server, edited, running_value, value_prog
from support import RELIVE, VALUE_PROG, SpawnFactory, assert_untouched, wait_until


def _closing(*fds: int) -> Callable[[], None]:
    def close() -> None:
        for fd in fds:
            os.close(fd)

    return close


def _run_closed(
    server: Server, fds: tuple[int, ...], *argv: str, in_process: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """``relive ARGV`` with the standard descriptors ``fds`` closed (``>&-``);
    stderr, when left open, is captured."""
    env = {**server.env, "RELIVE_SERVER": "0" if in_process else "1"}
    return subprocess.run(
        [*RELIVE, *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_closing(*fds),
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize("fds", [(0,), (1,), (0, 1)], ids=["stdin", "stdout", "stdin+stdout"])
def test_closed_standard_streams(
    tmp_path: Path, spawn: SpawnFactory, server: Server, fds: tuple[int, ...]
) -> None:
    """A closed stdin or stdout is /dev/null, served or not: the directory the
    client opened for the server once took its place (a traceback in the child),
    and in-process the renderer found no sys.stdout (a traceback too)."""
    target = running_value(spawn, value_prog(tmp_path))
    server.run("status", "-p", str(target.pid))
    server.wait_up()
    for in_process in (True, False):
        done = _run_closed(server, fds, "status", "-p", str(target.pid), in_process=in_process)
        assert (done.returncode, done.stderr) == (0, b""), (in_process, done.stderr)
    source = edited(tmp_path, VALUE_PROG)
    done = _run_closed(server, fds, "reload", "-p", str(target.pid), str(source))
    assert (done.returncode, done.stderr) == (0, b""), done.stderr
    target.wait_for(r"^value 2$")
    assert server.info()["served"] == 2


def test_closed_stderr_keeps_the_exit_code(server: Server) -> None:
    server.run("status", "-p", str(os.getpid()))
    server.wait_up()
    for in_process in (True, False):
        done = _run_closed(server, (2,), "status", "-p", "999999999", in_process=in_process)
        assert done.returncode == 5, in_process
    assert server.info()["served"] == 1


def test_local_times_in_the_clients_time_zone(
    tmp_path: Path, spawn: SpawnFactory, server: Server
) -> None:
    """``relive status`` shows when a function was last reloaded in local time:
    the client's TZ, not the one the server started with."""
    target = running_value(spawn, value_prog(tmp_path))
    server.env["TZ"] = "UTC0"
    server.run("status", "-p", str(target.pid))
    server.wait_up()
    done = server.run("reload", "-p", str(target.pid), str(edited(tmp_path, VALUE_PROG)))
    assert done.returncode == 0, done.stderr
    far = {**server.env, "TZ": "XYZ-9"}  # nine hours east of UTC
    served = server.run("status", "-p", str(target.pid), env=far)
    here = server.run("status", "-p", str(target.pid), env={**far, "RELIVE_SERVER": "0"})
    assert (served.returncode, here.returncode) == (0, 0), served.stderr + here.stderr
    assert served.stdout == here.stdout
    assert server.info()["served"] == 2


#: Arguments argparse takes seconds to go through (positionals and options in
#: turn: it matches the rest of the line again at each option), all of them valid
#: until the end: a window to press Ctrl+C in before the command's own handling.
SLOW_TO_PARSE = [arg for _ in range(8000) for arg in ("x.c", "-Id")]


@pytest.mark.parametrize("in_process", [False, True], ids=["served", "in-process"])
def test_ctrl_c_while_arguments_are_parsed(server: Server, in_process: bool) -> None:
    """Ctrl+C before ``main`` handles it (while argparse runs) exits 130 quietly:
    the served child printed a traceback and exited 1 (as did the command
    in-process): a Ctrl+C that came before the child's pid arrives is passed on
    as soon as it does, that is, while the child parses."""
    server.run("status", "-p", str(os.getpid()))
    server.wait_up()
    env = {**server.env, "RELIVE_SERVER": "0" if in_process else "1"}
    command = server.start("reload", "-p", "1", *SLOW_TO_PARSE, env=env)
    if in_process:
        time.sleep(1.0)  # imported relive (a tenth of that), now parsing
    else:
        wait_until(lambda: bool((ask(OP_STATUS) or {}).get("running")), what="a child runs")
    command.send_signal(signal.SIGINT)
    out, err = command.communicate(timeout=60)
    assert (command.returncode, out, err) == (130, "", "")
    assert server.info()["running"] == []


def test_ctrl_c_during_the_switch_is_reported(
    tmp_path: Path, spawn: SpawnFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Ctrl+C while the entry jumps are written waits until the reload is
    committed, and then until it is reported: it ended the command before the
    report (exit 130, the new code running, not a line saying so)."""
    target = running_value(spawn, value_prog(tmp_path))
    switch = StagedReload.switch

    def interrupted_switch(staged: StagedReload) -> float | None:
        import threading

        print("THREADS", threading.enumerate(), os.listdir(f"/proc/{os.getpid()}/task"))
        os.kill(os.getpid(), signal.SIGINT)  # held until the reload is over
        return switch(staged)

    monkeypatch.setattr(StagedReload, "switch", interrupted_switch)
    events: list[Event] = []
    session = relive.attach(target.pid, on_event=events.append)
    with pytest.raises(KeyboardInterrupt):
        session.reload([edited(tmp_path, VALUE_PROG)])
    assert "value" in [e.name for e in events if isinstance(e, FunctionRedirected)]
    assert any(isinstance(e, ReloadFinished) for e in events)
    target.wait_for(r"^value 2$")


#: ``relive reload`` in a process with a second thread (as rich's refresh of the
#: progress line on a terminal is), sent a signal (its number the first argument)
#: as its entry jumps are written.
SIGNAL_IN_THE_SWITCH = """
import os, resource, signal, sys, threading
from relive.cli.main import run_command
from relive.patch.transaction import StagedReload
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGQUIT: no core file
threading.Thread(target=threading.Event().wait, daemon=True).start()
switch = StagedReload.switch
def interrupted_switch(staged):
    os.kill(os.getpid(), int(sys.argv[1]))
    return switch(staged)
StagedReload.switch = interrupted_switch
run_command(sys.argv[2:])
print("survived the signal")
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGQUIT], ids=["TERM", "QUIT"])
def test_a_signal_during_the_switch_waits_for_the_reload(
    tmp_path: Path, spawn: SpawnFactory, signum: int
) -> None:
    """A signal held during the switch is held in every thread: the kernel gave
    a SIGTERM the writing thread blocked to the other one, which ended relive
    there and then (its default action ends the whole process); SIGQUIT (Ctrl+\\)
    was not held at all."""
    target = running_value(spawn, value_prog(tmp_path))
    source = edited(tmp_path, VALUE_PROG)
    argv = [str(int(signum)), "reload", "-p", str(target.pid), str(source)]
    done = subprocess.run(
        [sys.executable, "-c", SIGNAL_IN_THE_SWITCH, *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == -signum, done.stderr
    assert "redirected value" in done.stdout  # reported, then ended by the signal
    assert "survived" not in done.stdout
    target.wait_for(r"^value 2$")
    [row] = relive.attach(target.pid).status()
    assert (row.name, row.active) == ("value", True)


#: The client, with a SIGINT arriving just as the child's pid is received (the
#: moment after recvmsg returned it and before the client knows it).
CTRL_C_AS_THE_PID_ARRIVES = """
import os, signal, sys
from relive.cli import client
receive = client._receive_reply
def receive_then_ctrl_c(sock):
    reply = receive(sock)
    if reply[0] == client.PID:
        os.kill(os.getpid(), signal.SIGINT)
    return reply
client._receive_reply = receive_then_ctrl_c
client.entry_point()
"""


def test_ctrl_c_as_the_pid_arrives_reaches_the_child(
    tmp_path: Path, spawn: SpawnFactory, server: Server
) -> None:
    """A Ctrl+C the moment the child's pid arrives is passed on to the child: it
    ended the client's wait with the pid thrown away, and the child reloaded the
    program after the command had exited 130."""
    target = running_value(spawn, value_prog(tmp_path, SLOW_PROG))
    server.run("status", "-p", str(target.pid))
    server.wait_up()
    source = edited(tmp_path, SLOW_PROG)
    argv = ["reload", "-p", str(target.pid), str(source)]
    done = subprocess.run(
        [sys.executable, "-c", CTRL_C_AS_THE_PID_ARRIVES, *argv],
        env=server.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 130, done.stderr
    wait_until(lambda: server.info()["running"] == [], what="the child ended")
    assert_untouched(target)
    assert server.info()["served"] == 1


#: The client, slow to close its connection after a Ctrl+C that came before the
#: child's pid (the moment a child may still send it).
SLOW_AFTER_CTRL_C = """
import sys, time
from relive.cli import client
after = client._after_interrupt
def slow_after(sock, forwarder):
    answer = after(sock, forwarder)
    print("interrupted", flush=True)
    time.sleep(3)  # the child sends its pid meanwhile
    return answer
client._after_interrupt = slow_after
client.entry_point()
"""


def test_child_runs_only_once_the_client_took_its_pid(
    tmp_path: Path, spawn: SpawnFactory, server: Server
) -> None:
    """A child whose pid reached a client that had given up (Ctrl+C before the
    pid, the socket not yet closed) does not run the command: it waits for the
    client's go, which comes only once the client passes its signals on."""
    target = running_value(spawn, value_prog(tmp_path))
    server.run("status", "-p", str(target.pid))
    pid = server.wait_up()["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        argv = ["reload", "-p", str(target.pid), str(edited(tmp_path, VALUE_PROG))]
        command = subprocess.Popen(
            [sys.executable, "-c", SLOW_AFTER_CTRL_C, *argv],
            env=server.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        waiting = Path(f"/proc/{command.pid}/syscall")
        wait_until(lambda: waiting.read_text().split()[0] == "45", what="the client waits")
        command.send_signal(signal.SIGINT)
        assert command.stdout is not None
        assert command.stdout.readline() == "interrupted\n"
    finally:
        os.kill(pid, signal.SIGCONT)
    _, err = command.communicate(timeout=60)
    assert command.returncode == 130, err
    wait_until(lambda: server.info()["running"] == [], what="no child runs")
    assert_untouched(target)


#: The code stamp of a command run with the server's environment.
STAMP = (
    "import sys; from relive.cli.client import code_stamp; sys.stdout.buffer.write(code_stamp())"
)

#: Connects to the server with a smaller bounding set of capabilities than the
#: server's (CAP_SYS_ADMIN dropped), hands the connection to its parent (over
#: the socket whose descriptor is its second argument)
#: and exits.
WEAKER_PEER = """
import ctypes, socket, sys
ctypes.CDLL(None, use_errno=True).prctl(24, 21)  # PR_CAPBSET_DROP, CAP_SYS_ADMIN
conn = socket.socket(socket.AF_UNIX)
conn.connect(sys.argv[1])
socket.send_fds(socket.socket(fileno=int(sys.argv[2])), [b"c"], [conn.fileno()])
"""


def _process_at(pid: int) -> subprocess.Popen[bytes] | None:
    """A process of the test's own rights at ``pid`` (the kernel's next pid set
    with ns_last_pid), or None if another process took it first."""
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
    process = subprocess.Popen(["sleep", "60"])
    if process.pid == pid:
        return process
    process.kill()
    process.wait()
    return None


@pytest.mark.needs_root
def test_a_peer_whose_pid_was_reused_is_declined(server: Server) -> None:
    """The server checks a client's rights at /proc/PID of the pid that connected:
    a client that connected, passed the connection on and exited, its pid then
    taken by a process with more rights, got those rights.  The peer is now held
    by a pidfd (SO_PEERPIDFD), and a peer gone is declined."""
    server.run("status", "-p", str(os.getpid()))
    server.wait_up()
    stamp = subprocess.run(
        [sys.executable, "-P", "-c", STAMP],
        env=server.env,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    ours, theirs = socket.socketpair()
    with ours, theirs:
        argv = [sys.executable, "-c", WEAKER_PEER, str(server.state / "server.sock")]
        weak = subprocess.Popen([*argv, str(theirs.fileno())], pass_fds=[theirs.fileno()])
        assert weak.wait(timeout=60) == 0  # and reaped: its pid is free
        _, [conn_fd], _, _ = socket.recv_fds(ours, 1, 1)
        conn = socket.socket(fileno=conn_fd)
        weak_pid = weak.pid
    strong = next(filter(None, (_process_at(weak_pid) for _ in range(50))), None)
    if strong is None:
        conn.close()
        pytest.skip(f"pid {weak_pid} was taken by another process 50 times")
    try:
        cwd = os.open(".", os.O_PATH | os.O_DIRECTORY)
        body = pack([stamp, b"18", pack([b"status", b"-p", b"1"]), pack([]), b"utf-8\0strict"])
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", [0, 1, 2, cwd]).tobytes())]
        conn.sendmsg([frame(OP_RUN, body)], rights)
        os.close(cwd)
        answer = client.receive_exactly(conn, 5)
    finally:
        strong.kill()
        strong.wait()
        conn.close()
    assert answer[:1] == client.DECLINED
    assert server.info()["served"] == 0


def test_output_in_the_clients_encoding(tmp_path: Path, server: Server) -> None:
    """The served command writes in the client's encoding (PYTHONIOENCODING, its
    locale), not the server's: the same bytes as in-process."""
    server.run("status", "-p", str(os.getpid()))
    server.wait_up()
    missing = str(tmp_path / "r\u00e9sum\u00e9.c")
    ascii_env = {**server.env, "PYTHONIOENCODING": "ascii"}
    argv = [*RELIVE, "reload", "-p", str(os.getpid()), missing]
    served = subprocess.run(argv, env=ascii_env, capture_output=True, check=False, timeout=120)
    here = subprocess.run(
        argv, env={**ascii_env, "RELIVE_SERVER": "0"}, capture_output=True, check=False, timeout=120
    )
    assert b"r\\xe9sum\\xe9.c" in here.stderr
    assert (served.returncode, served.stdout, served.stderr) == (
        here.returncode,
        here.stdout,
        here.stderr,
    )
    assert server.info()["served"] == 1


def test_unknown_codec_is_declined_and_the_server_lives(server: Server) -> None:
    server.run("status", "-p", str(os.getpid()))
    pid = server.wait_up()["pid"]
    done = server.run(
        "status", "-p", str(os.getpid()), env={**server.env, "PYTHONIOENCODING": "utf-8:nosuch"}
    )
    assert done.returncode in (0, 3), done.stderr  # run in-process
    assert server.info()["pid"] == pid


@pytest.mark.parametrize("action", ["status", "stop"])
def test_a_stopped_server_does_not_hang_its_own_controls(server: Server, action: str) -> None:
    """``relive server status``/``stop`` on a SIGSTOPped server: one line naming its
    pid and what to do, exit 1, within the answer's timeout (they waited for ever)."""
    assert server.run("status", "-p", str(os.getpid())).returncode in (0, 3)
    pid = server.wait_up()["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        done = server.run("server", action, timeout=client.ASK_TIMEOUT_S + 30)
        waited = time.monotonic() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert done.returncode == 1, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {pid}" in lines[0] and "did not answer" in lines[0], lines
    assert f"kill -CONT {pid}" in lines[0] and "Traceback" not in done.stderr
    assert waited >= client.ASK_TIMEOUT_S
    if action == "status":
        assert server.info()["pid"] == pid  # it serves again once it runs
    else:  # the stop was delivered: the server takes it once it runs
        wait_until(lambda: server.info()["pid"] == 0, what="the continued server stops")


@pytest.mark.parametrize("odd", ["socket as working directory", "directory as stdout"])
def test_descriptors_that_are_not_what_they_claim_are_declined(
    tmp_path: Path, server: Server, odd: str
) -> None:
    """A request (from this user: no other may connect) whose working directory is
    not a directory, or whose stdout is one, is declined before any child runs:
    the child printed a traceback."""
    server.run("status", "-p", str(os.getpid()))
    pid = server.wait_up()["pid"]
    stamp = subprocess.run(
        [sys.executable, "-P", "-c", STAMP],
        env=server.env,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    a, b = socket.socketpair()
    folder = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    fds = [0, a.fileno(), 2, b.fileno()] if odd.startswith("socket") else [0, folder, 2, folder]
    conn = socket.socket(socket.AF_UNIX)
    try:
        conn.connect(str(server.state / "server.sock"))
        body = pack([stamp, b"18", pack([b"status", b"-p", b"1"]), pack([]), b"utf-8\0strict"])
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array("i", fds).tobytes())]
        conn.sendmsg([frame(OP_RUN, body)], rights)
        answer = client.receive_exactly(conn, 5)
    finally:
        conn.close()
        a.close()
        b.close()
        os.close(folder)
    assert answer[:1] == client.DECLINED
    assert server.info()["pid"] == pid and server.info()["served"] == 0


def test_a_client_under_other_bounds_runs_its_command_itself(server: Server) -> None:
    """A client at another nice value (or under other limits or control groups)
    is not served: the child would run with the server's, and gcc under them."""
    server.run("status", "-p", str(os.getpid()))
    pid = server.wait_up()["pid"]
    done = subprocess.run(
        ["nice", "-n", "5", *RELIVE, "status", "-p", str(os.getpid())],
        env=server.env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode in (0, 3), done.stderr  # run in-process
    info = server.info()
    assert info["pid"] == pid and info["served"] == 0

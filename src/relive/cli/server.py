"""The command server: relive imported once, a forked child per command.

``relive.cli.client`` explains why.  One server runs per user and state
directory: it holds ``server.lock`` (flock) from before it imports anything
until it has removed its socket, so two started at once never both serve, and a
socket left by a killed server is replaced under that lock.  It listens on
``server.sock`` in the checked state directory (mode 0700; the socket 0600) and
serves only a peer with its own effective uid (SO_PEERCRED) and, so that no
client gets rights it does not have, its own credentials, capabilities,
seccomp and no-new-privileges state, security label and namespaces (else the
client runs the command itself).  A request whose code stamp differs from the
server's (relive's files or the interpreter changed since it started) makes it
remove its socket and exit: the client runs the command in-process and starts
a new server.

The parent never runs a command: per request it forks, and the child takes the
client's descriptors as 0, 1, 2 and working directory, its environment and
umask, the default signal dispositions, sends its pid (and a pidfd, for the
client's signals), waits for the client's go (a client that gave up closes
instead), runs ``relive.cli.main.main`` with the argv (the same argparse as
in-process: nothing received runs as code), sends the exit code and
``os._exit``s.  The parent reaps the child and tells the client how it ended
(killed by a signal, or its exit code again), and exits after
``RELIVE_SERVER_IDLE`` seconds (default 600) without a request or a running
child.  Run it as ``python -m relive.cli.server`` (the client does, detached).
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import fcntl
import gc
import importlib
import io
import json
import os
import pkgutil
import select
import signal
import socket
import stat
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

from relive.cli import client
from relive.cli.client import (
    DECLINED,
    EXITED,
    GO,
    INFO,
    KILLED,
    LOCK_NAME,
    MAGIC,
    OP_RUN,
    OP_STOP,
    PID,
    SOCKET_NAME,
    STALE,
    reply,
    unpack,
)
from relive.statedir import StateDirError, open_state_dir_fd

#: Seconds without a request or a running child after which the server exits.
IDLE_DEFAULT_S = 600.0
IDLE_VARIABLE = "RELIVE_SERVER_IDLE"

#: A client has this long to send its request (it sends it at once).
REQUEST_TIMEOUT_S = 5.0
#: The largest request accepted (argv and environment; far above any real one).
MAX_REQUEST = 16 << 20
#: Descriptors a command request passes: stdin, stdout, stderr, working directory.
PASSED_FDS = 4

#: Lines of /proc/PID/status that must match between client and server.
IDENTITY_LINES = (
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
    "Cpus_allowed_list",
)
#: Files of /proc/PID that also bound what a command may do: its resource limits
#: and control groups (a client under tighter ones must not escape them here).
LIMIT_FILES = ("limits", "cgroup")
NAMESPACES = ("pid", "mnt", "user", "net", "ipc", "uts", "cgroup")

#: Modules the server does not preload: the gdb extension (runs inside gdb) and
#: the entry points.
NOT_PRELOADED = frozenset({"relive.__main__", "relive.cli.gdb_relive", "relive.cli.server"})


def identity(pid: int | str) -> tuple[str, ...]:
    """What decides which rights a process has, beyond its uid: its ids,
    groups, capabilities, seccomp and no-new-privileges state, security label,
    namespaces, and what bounds it: resource limits, control groups, nice value
    and CPUs (the served child runs with the server's).  A line that cannot be
    read is itself part of the answer."""
    found: list[str] = []
    try:
        with open(f"/proc/{pid}/status") as status:
            found += [line for line in status if line.split(":", 1)[0] in IDENTITY_LINES]
    except OSError as e:
        found.append(f"status: {e.errno}")
    for name in NAMESPACES:
        try:
            found.append(os.readlink(f"/proc/{pid}/ns/{name}"))
        except OSError as e:
            found.append(f"{name}: {e.errno}")
    try:
        with open(f"/proc/{pid}/attr/current", "rb") as label:
            found.append(label.read().decode("utf-8", "replace"))
    except OSError as e:
        found.append(f"label: {e.errno}")
    for name in LIMIT_FILES:
        try:
            with open(f"/proc/{pid}/{name}") as bounds:
                found.append(bounds.read())
        except OSError as e:
            found.append(f"{name}: {e.errno}")
    try:
        found.append(f"nice {os.getpriority(os.PRIO_PROCESS, 0 if pid == 'self' else int(pid))}")
    except OSError as e:
        found.append(f"nice: {e.errno}")
    return tuple(found)


#: getsockopt: a pidfd of the peer that connected (Linux 6.5; not in Python 3.11's
#: socket module).
SO_PEERPIDFD = 77


def peer_identity(conn: socket.socket, pid: int) -> tuple[str, ...] | None:
    """``identity`` of the process that connected, or None if it is gone.

    /proc/PID is read while a pidfd holds that process (SO_PEERPIDFD): else a
    client that connected, passed the connection on and exited would be judged
    by whatever process took its pid next, which may have more rights.  (A
    kernel without SO_PEERPIDFD: judged by its pid only.)"""
    try:
        pidfd = conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD)
    except OSError as e:
        if e.errno in (errno.ENOPROTOOPT, errno.EINVAL):
            return identity(pid)
        return None  # the peer has exited (ESRCH)
    try:
        found = identity(pid)
        signal.pidfd_send_signal(pidfd, 0)  # still there (a zombie keeps its pid too)
    except ProcessLookupError:
        return None
    finally:
        os.close(pidfd)
    return found


@dataclass
class Child:
    """A forked child running one command, and its client's connection."""

    pid: int
    pidfd: int
    conn: socket.socket


@dataclass
class ClientCommand:
    """A command request the server accepted: what its child needs to run it
    as the client would have in its own process."""

    conn: socket.socket
    peer_pid: int
    #: stdin, stdout, stderr and the working directory, as passed.
    fds: list[int]
    umask: int
    argv: list[str]
    environment: list[bytes]
    #: The client's stdout encoding and errors.
    stdio: tuple[str, str]


@dataclass
class Request:
    """One request as received: its operation, packed items and passed descriptors."""

    op: bytes
    items: list[bytes]
    fds: list[int]

    def close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


class Server:
    """The listening parent: accepts, checks, forks, reaps."""

    def __init__(
        self,
        listener: socket.socket,
        dir_fd: int,
        lock_fd: int,
        stamp: bytes,
        idle_s: float,
        path: str,
    ) -> None:
        self.listener = listener
        self.dir_fd = dir_fd
        self.lock_fd = lock_fd
        self.stamp = stamp
        self.idle_s = idle_s
        self.path = path
        self.identity = identity("self")
        self.children: dict[int, Child] = {}  # by pidfd
        self.served = 0
        #: CPU time (user + system) of the children that ended, and of what they
        #: waited for (gcc): a served command's work, for ``make bench``.
        self.children_cpu_s = 0.0
        self.started = time.time()
        self.last_active = time.monotonic()
        self.listening = True
        self.poller = select.poll()
        self.poller.register(listener, select.POLLIN)

    def run(self) -> None:
        """Serve until idle (or stopped, or stale) and every child is reaped."""
        while self.listening or self.children:
            timeout = self._timeout_ms()
            if timeout == 0:
                self.stop_listening()
                continue
            for fd, _ in self.poller.poll(timeout):
                if fd in self.children:
                    self._reap(self.children.pop(fd))
                elif self.listening and fd == self.listener.fileno():
                    self._accept()

    def _timeout_ms(self) -> int | None:
        if self.children or not self.listening:
            return None
        left = self.last_active + self.idle_s - time.monotonic()
        return max(0, int(left * 1000) + 1) if left > 0 else 0

    def stop_listening(self) -> None:
        """Remove the socket, then let the lock go: a new server may start."""
        if not self.listening:
            return
        self.listening = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET_NAME, dir_fd=self.dir_fd)
        self.poller.unregister(self.listener)
        self.listener.close()
        os.close(self.lock_fd)
        os.close(self.dir_fd)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        try:
            kept = self._handle(conn)
        except (OSError, ValueError):
            kept = False
        if not kept:
            conn.close()

    def _handle(self, conn: socket.socket) -> bool:
        """Answer one connection; True when a child now owns it."""
        pid, uid = client.peer_cred(conn)
        if uid != os.geteuid():
            return False  # another user: not a word
        conn.settimeout(REQUEST_TIMEOUT_S)
        request = _receive_request(conn)
        try:
            if request.op == OP_RUN:
                return self._run(conn, pid, request)
            if request.op == OP_STOP:
                self.stop_listening()
            info = self.info(request.items[0] if request.items else b"")
            data = json.dumps(info).encode()
            conn.sendall(reply(INFO, len(data)) + data)
            return False
        finally:
            request.close_fds()

    def info(self, stamp: bytes) -> dict[str, object]:
        """The server's state, for ``relive server status``."""
        return {
            "pid": os.getpid(),
            "started": self.started,
            "served": self.served,
            "running": sorted(child.pid for child in self.children.values()),
            "idle_s": self.idle_s,
            "listening": self.listening,
            "current": stamp == self.stamp,
            "socket": self.path,
            "children_cpu_s": self.children_cpu_s,
        }

    def _run(self, conn: socket.socket, peer_pid: int, request: Request) -> bool:
        items = request.items
        if len(items) != 5 or not _descriptors_fit(request.fds):
            conn.sendall(reply(DECLINED, 0))
            return False
        if items[0] != self.stamp:
            self.stop_listening()  # before the answer: the client starts the next one
            conn.sendall(reply(STALE, 0))
            return False
        if peer_identity(conn, peer_pid) != self.identity:
            conn.sendall(reply(DECLINED, 0))
            return False
        umask = int(items[1])
        if not 0 <= umask <= 0o777:
            raise ValueError("not a umask")
        argv = [os.fsdecode(arg) for arg in unpack(items[2])]
        environment = unpack(items[3])
        stdio = _stdio_codec(items[4])
        command = ClientCommand(conn, peer_pid, request.fds, umask, argv, environment, stdio)
        pid = os.fork()
        if pid == 0:
            self._child(command)
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = Child(pid, pidfd, conn)
        self.poller.register(pidfd, select.POLLIN)
        self.served += 1
        return True

    def _child(self, command: ClientCommand) -> NoReturn:
        code = 1
        try:
            code = self._command(command)
            # The command is over: a Ctrl+C now changes nothing (the client tells
            # its exit code, which the server sends again once it reaped this child).
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
            client._flush()
            with contextlib.suppress(OSError):
                command.conn.sendall(reply(EXITED, code))
        finally:
            os._exit(code)  # never back into the server's loop, whatever was raised

    def _command(self, command: ClientCommand) -> int:
        """Run the command in the client's context; its exit code."""
        try:
            self._drop_parent_state()
            from relive.cli.targets import COMMAND_PIDS

            COMMAND_PIDS.update((command.peer_pid, os.getppid()))  # -n python finds neither
            _take_client_context(command.fds, command.umask, command.environment, command.stdio)
            if not _tell_pid(command.conn):
                return 1  # the client is gone (interrupted): nobody wants the command
            return _run_command(command.argv)
        except KeyboardInterrupt:  # Ctrl+C before the command's own handling (argparse)
            return 130
        except BaseException:  # noqa: BLE001 (a child never returns into the server's loop)
            _print_exception()
            return 1

    def _drop_parent_state(self) -> None:
        """The child keeps nothing of the server's: not the listening socket, the
        lock, nor other clients' connections (their end would never see EOF)."""
        _default_signals()
        self.listener.close()
        if self.listening:
            os.close(self.lock_fd)
            os.close(self.dir_fd)
        for child in self.children.values():
            os.close(child.pidfd)
            child.conn.close()

    def _reap(self, child: Child) -> None:
        self.poller.unregister(child.pidfd)
        _, status, usage = os.wait4(child.pid, 0)
        self.children_cpu_s += usage.ru_utime + usage.ru_stime
        os.close(child.pidfd)
        if os.WIFSIGNALED(status):
            ended = reply(KILLED, os.WTERMSIG(status))
        else:
            ended = reply(EXITED, os.waitstatus_to_exitcode(status))
        with contextlib.suppress(OSError):  # after the child's own exit code: ignored then
            child.conn.sendall(ended)
        child.conn.close()
        self.last_active = time.monotonic()


def _tell_pid(conn: socket.socket) -> bool:
    """Send the client this child's pid and a pidfd for its signals, and wait for
    its go (GO: it passes its signals on); False when the client has gone (it gave
    up, say on a Ctrl+C, before it had the pid: nobody wants the command)."""
    own = os.pidfd_open(os.getpid())
    try:
        conn.settimeout(None)
        conn.sendmsg(
            [reply(PID, os.getpid())],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, own.to_bytes(4, sys.byteorder))],
        )
        return conn.recv(1) == GO
    except OSError:
        return False
    finally:
        os.close(own)


def _receive_request(conn: socket.socket) -> Request:
    """The request (ValueError when malformed); descriptors passed arrive
    close-on-exec and are the caller's to close."""
    header_size = len(MAGIC) + 1 + 4
    data, ancillary, _, _ = conn.recvmsg(
        header_size, socket.CMSG_SPACE(4 * PASSED_FDS), socket.MSG_CMSG_CLOEXEC
    )
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds += [int.from_bytes(payload[i : i + 4], sys.byteorder) for i in range(0, usable, 4)]
    request = Request(b"", [], fds)
    try:
        data += client.receive_exactly(conn, header_size - len(data))
        size = int.from_bytes(data[len(MAGIC) + 1 :], "little")
        if len(data) != header_size or not data.startswith(MAGIC) or size > MAX_REQUEST:
            raise ValueError("not a relive request")
        body = client.receive_exactly(conn, size)
        if len(body) != size:
            raise ValueError("truncated request")
        request.op = data[len(MAGIC) : len(MAGIC) + 1]
        request.items = unpack(body)
    except BaseException:
        request.close_fds()
        raise
    return request


def _descriptors_fit(fds: list[int]) -> bool:
    """What the client passes: stdin, stdout and stderr that are not
    directories, then the directory to work in (a socket given as the working
    directory or a directory as stdout gave the child a traceback)."""
    if len(fds) != PASSED_FDS:
        return False
    directories = [stat.S_ISDIR(os.fstat(fd).st_mode) for fd in fds]
    return directories == [False, False, False, True]


def _default_signals() -> None:
    """The dispositions a freshly started ``relive`` has (Python's own)."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _take_client_context(
    fds: list[int], umask: int, environment: list[bytes], stdio: tuple[str, str]
) -> None:
    """The client's stdio (``stdio``: its encoding and errors), working
    directory, umask and environment."""
    for target, fd in enumerate(fds[:3]):
        os.dup2(fd, target)
    os.fchdir(fds[3])
    for fd in fds:
        os.close(fd)
    os.umask(umask)
    os.environ.clear()
    for item in environment:
        name, equals, value = item.partition(b"=")
        if equals and name:
            os.environb[name] = value
    tempfile.tempdir = None  # gettempdir() again, from this environment
    time.tzset()  # local times (``relive status``) in the client's TZ
    _rebind_stdio(*stdio)


def _stdio_codec(item: bytes) -> tuple[str, str]:
    """The client's stdout encoding and errors (``PYTHONIOENCODING``, its locale,
    UTF-8 mode: they may differ from the server's), if this Python knows them."""
    encoding, _, errors = item.decode("ascii").partition("\0")
    try:
        codecs.lookup(encoding)
        codecs.lookup_error(errors)
    except LookupError as e:
        raise ValueError("not a codec") from e  # the request is refused
    return encoding, errors


def _rebind_stdio(encoding: str, errors: str) -> None:
    """New text streams on 0, 1, 2, as the client's own: its encoding, buffered
    as Python does (stdout line by line on a terminal, stderr always)."""
    sys.stdin = io.TextIOWrapper(
        io.BufferedReader(io.FileIO(0, "rb", closefd=False)),
        encoding=encoding,
        errors=errors,
    )
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(1, "wb", closefd=False)),
        encoding=encoding,
        errors=errors,
        line_buffering=os.isatty(1),
    )
    sys.stderr = io.TextIOWrapper(
        io.BufferedWriter(io.FileIO(2, "wb", closefd=False)),
        encoding=encoding,
        errors="backslashreplace",
        line_buffering=True,
    )


def _run_command(argv: Sequence[str]) -> int:
    from relive.cli.main import main

    try:
        return main(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)


def _print_exception() -> None:
    """What Python prints for an exception nobody caught (as in-process)."""
    with contextlib.suppress(OSError, ValueError):  # stderr gone: nothing left to tell
        traceback.print_exc()


# -- starting ------------------------------------------------------------------------


def _idle_seconds() -> float:
    try:
        idle = float(os.environ.get(IDLE_VARIABLE, IDLE_DEFAULT_S))
    except ValueError:
        return IDLE_DEFAULT_S
    return idle if idle > 0 else IDLE_DEFAULT_S


def _lock(dir_fd: int) -> int | None:
    """The server lock's descriptor, held; None while another server holds it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(LOCK_NAME, flags, 0o600, dir_fd=dir_fd)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _listen(dir_fd: int) -> socket.socket:
    """The listening socket, bound under the lock where a dead server's may be."""
    with contextlib.suppress(FileNotFoundError):  # a link is removed, never followed
        os.unlink(SOCKET_NAME, dir_fd=dir_fd)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
    listener.listen(64)
    return listener


def preload() -> None:
    """Import every module a command may need, so that no child imports one."""
    import capstone  # noqa: F401 (the disassembler: ~15 ms of a cold command)
    import rich.console  # the renderer on a terminal
    import rich.live  # noqa: F401

    from relive.cli.codecache import compiled_once

    package = importlib.import_module("relive")
    with compiled_once():
        for module in pkgutil.walk_packages(package.__path__, "relive."):
            if module.name not in NOT_PRELOADED:
                importlib.import_module(module.name)
    from relive.cli.main import command_parser

    command_parser()  # argparse's parser: some 100 actions, built once


def _stop(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def main() -> None:
    """Start serving (or exit at once if another server holds the lock)."""
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    os.chdir("/")
    os.umask(0o077)
    # Before preload() imports the rest (the client, statedir and errors are in already).
    stamp = client.code_stamp()
    try:
        path, dir_fd = open_state_dir_fd()
    except StateDirError:
        sys.exit(1)
    lock_fd = _lock(dir_fd)
    if lock_fd is None:
        sys.exit(0)
    preload()
    from relive.cli.main import GC_YOUNG_THRESHOLD

    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    gc.freeze()  # the children share the imported objects' pages: nothing walks them
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, _stop)
    listener = _listen(dir_fd)
    server = Server(
        listener, dir_fd, lock_fd, stamp, _idle_seconds(), os.path.join(path, SOCKET_NAME)
    )
    try:
        server.run()
    finally:
        server.stop_listening()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()

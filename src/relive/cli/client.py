"""The ``relive`` command: a small client that has a warm server run the command.

Starting Python and importing relive (the ELF and DWARF readers, the linker,
capstone: some 150 modules) took about 70 ms of the 110 ms from ``relive
reload`` of a one-function object to its new code running; the reload itself
is 10-20 ms.  So the short commands (``SERVED``) go to a per-user *command
server* (``relive.cli.server``) that has imported everything once and forks a
child per command, the way a zygote or multiprocessing's forkserver does: this
module is all the command imports itself (``os``, ``sys``, ``_socket``,
``_signal``, and ``relive.statedir`` for its checks), about a millisecond.

The request carries the argv, the environment and the umask, and passes the
client's stdin, stdout, stderr and working directory as descriptors
(SCM_RIGHTS): the child works in the client's terminal, directory and
environment, and its output is the command's output.  The child's process is
not in the terminal's process group, so the client passes on the SIGINT,
SIGTERM, SIGHUP and SIGQUIT it gets (through a pidfd: never to a recycled pid),
then exits with the child's exit code.

Where no server answers (none runs, it runs older code than this client sees on
disk, it has other credentials), the command runs in this process as before and,
unless the server is turned off (``RELIVE_SERVER=0`` or ``--no-server``), starts
a server for the next command once its own result is out.

Trust: the socket is found only in relive's checked state directory
(``statedir``: this user's own, mode 0700, never through a link), must be a
socket owned by this user, and the peer that listens must run as this user
(SO_PEERCRED); the server checks each client the same way.  What travels is
data for the same argparse as a command in-process: nothing in it runs as code.
"""

from __future__ import annotations

import _signal
import _socket
import os
import stat
import sys

from relive.errors import ReliveError
from relive.statedir import open_state_dir_fd

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

#: Commands that finish in about a reload's time: run by the server.  ``watch``,
#: ``run`` and ``gdb`` stay in the terminal's own process (long, interactive and
#: warm by nature); ``server`` and anything unknown or ``--help`` run in-process.
SERVED = frozenset({"reload", "undo", "status", "doctor", "clean"})

#: Options before the command that the client understands (both also go to argparse).
GLOBAL_OPTIONS = frozenset({"--json", "--no-server"})

SOCKET_NAME = "server.sock"
LOCK_NAME = "server.lock"
MAGIC = b"RLV1"

#: Request operations (one byte after MAGIC).
OP_RUN, OP_STATUS, OP_STOP = b"R", b"Q", b"T"

#: Replies: a tag byte and a 32-bit value (a pidfd travels with PID).
PID = b"P"  # the child runs the command: its pid
EXITED = b"X"  # the command's exit code
KILLED = b"K"  # the child was killed by this signal before it finished
STALE = b"S"  # the server runs other code than the client sees: it exits
DECLINED = b"N"  # the server may not act for this client (credentials, namespaces)
INFO = b"I"  # status or stop: a JSON object of this many bytes follows
REPLY_SIZE = 5

#: The client's answer to PID: it passes its signals on, the child may run the
#: command (a child whose client gave up before reads the end instead, and exits).
GO = b"G"

#: Signals the client passes on to the child running the command.
FORWARDED = (_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP, _signal.SIGQUIT)

#: How long ``relive server status``/``stop`` wait for the server's answer (it
#: answers at once unless it is stopped or stuck).
ASK_TIMEOUT_S = 5.0

#: The environment variable that turns the server off (``0``).
SWITCH = "RELIVE_SERVER"


def entry_point() -> None:
    """Console-script entry of ``relive``."""
    try:
        _exit(_run(sys.argv[1:]))
    except KeyboardInterrupt:  # Ctrl+C before the command's own handling (imports, argparse)
        _exit(130)


def _run(argv: list[str]) -> int:
    """The command's exit code: run by the server, else here."""
    _open_closed_standard_streams()
    start = False
    if _command(argv) in SERVED and server_enabled(argv):
        served, start = run_through_server(argv)
        if served is not None:
            return served
    from relive.cli.main import run_command

    code = run_command(argv)
    if start:
        _flush()
        start_server()
    return code


def _open_closed_standard_streams() -> None:
    """A standard descriptor the caller closed (``relive status >&-``) becomes
    /dev/null, as the C library does for a set-uid program: else the next file
    relive opens (the working directory it passes the server, a journal) would
    become its stdin, stdout or stderr, and Python has no stream there (None)."""
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        # The lower descriptors are open by now: this open returns ``fd`` itself.
        opened = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if opened != fd:
            os.dup2(opened, fd)
            os.close(opened)
        stream = open(  # noqa: SIM115 (the process's standard stream, never closed)
            fd,
            "r" if fd == 0 else "w",
            encoding="utf-8",
            errors="backslashreplace",
            closefd=False,
        )
        setattr(sys, name, stream)


def _exit(code: int) -> NoReturn:
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 (no contextlib: the client imports little)
            stream.flush()
        except (OSError, ValueError):  # a closed or gone reader: nothing to save
            pass


def server_enabled(argv: Sequence[str]) -> bool:
    """False when ``RELIVE_SERVER=0`` or ``--no-server`` turns the server off."""
    return os.environ.get(SWITCH, "1") != "0" and "--no-server" not in _globals(argv)


def _globals(argv: Sequence[str]) -> list[str]:
    taken = []
    for arg in argv:
        if arg not in GLOBAL_OPTIONS:
            break
        taken.append(arg)
    return taken


def _command(argv: Sequence[str]) -> str | None:
    """The command word, or None when ``--help``/``--version`` or an option
    argparse must explain comes first."""
    rest = argv[len(_globals(argv)) :]
    if not rest or rest[0].startswith("-"):
        return None
    if "-h" in rest or "--help" in rest:
        return None
    return rest[0]


# -- the stamp of the code this client would run ---------------------------------------


def code_stamp() -> bytes:
    """What the code of a relive command run now would be: the interpreter, every
    file of the relive package (name, size, mtime, inode) and each import folder's
    mtime (an installed or upgraded package changes its folder).  A server serves
    only clients with its own stamp: an edited source or a new capstone makes it
    exit, so that no command ever runs code older than what is on disk."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parts = [sys.executable, sys.version, package, _file_stamp(sys.executable)]
    _package_stamp(package, "", parts)
    # sys.path[0] is the script's folder or the working directory unless -P: the
    # server (started with -P) has none, and nothing of relive's is found there.
    for folder in sys.path[0 if sys.flags.safe_path else 1 :]:
        parts.append(f"{folder} {_file_stamp(folder)}")
    return "\n".join(parts).encode("utf-8", "surrogateescape")


def _file_stamp(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino}"


def _package_stamp(folder: str, prefix: str, parts: list[str]) -> None:
    with os.scandir(folder) as entries:
        found = sorted(entries, key=lambda entry: entry.name)
    for entry in found:
        if entry.name == "__pycache__":
            continue
        if entry.is_dir(follow_symlinks=False):
            _package_stamp(entry.path, f"{prefix}{entry.name}/", parts)
        elif entry.name.endswith(".py"):
            st = entry.stat()
            parts.append(f"{prefix}{entry.name} {st.st_size} {st.st_mtime_ns} {st.st_ino}")


# -- the wire format ----------------------------------------------------------------------


def pack(items: Sequence[bytes]) -> bytes:
    """A list of byte strings as count, then length and bytes of each."""
    out = [len(items).to_bytes(4, "little")]
    for item in items:
        out += [len(item).to_bytes(4, "little"), item]
    return b"".join(out)


def unpack(data: bytes) -> list[bytes]:
    """``pack``'s inverse; ValueError when ``data`` is not one packed list."""
    if len(data) < 4:
        raise ValueError("truncated")
    count, at, items = int.from_bytes(data[:4], "little"), 4, []
    for _ in range(count):
        size = int.from_bytes(data[at : at + 4], "little")
        if at + 4 + size > len(data):
            raise ValueError("truncated")
        items.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    if at != len(data):
        raise ValueError("trailing bytes")
    return items


def frame(op: bytes, body: bytes) -> bytes:
    """A request: MAGIC, the operation, the body's length and the body."""
    return MAGIC + op + len(body).to_bytes(4, "little") + body


def reply(tag: bytes, value: int) -> bytes:
    """A reply record: the tag and a signed 32-bit value."""
    return tag + value.to_bytes(4, "little", signed=True)


# -- connecting ------------------------------------------------------------------------


def connect() -> _socket.socket | None:
    """A connection to this user's command server, or None if none listens
    (StateDirError when the state directory is not safe to use).

    The socket is reached through the descriptor of the checked state directory
    (``/proc/self/fd/N/server.sock``), is a socket this user owns, and its peer
    runs as this user."""
    _, dir_fd = open_state_dir_fd()
    try:
        try:
            st = os.stat(SOCKET_NAME, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return None
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            return None
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
        try:
            sock.connect(f"/proc/self/fd/{dir_fd}/{SOCKET_NAME}")
            if peer_cred(sock)[1] != os.geteuid():
                raise OSError("the server runs as another user")
        except OSError:
            sock.close()
            return None
        return sock
    finally:
        os.close(dir_fd)


def _not_answering(sock: _socket.socket) -> ReliveError:
    pid, _ = peer_cred(sock)
    return ReliveError(
        f"the command server (pid {pid}) did not answer within {ASK_TIMEOUT_S:g} s",
        f"it may be stopped (`kill -CONT {pid}`) or stuck (`kill {pid}` ends it); "
        "commands run without it meanwhile with RELIVE_SERVER=0",
    )


def peer_cred(sock: _socket.socket) -> tuple[int, int]:
    """The pid and effective uid of the process at the other end (SO_PEERCRED:
    pid, uid, gid)."""
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(cred[0:4], sys.byteorder), int.from_bytes(cred[4:8], sys.byteorder)


def receive_exactly(sock: _socket.socket, size: int) -> bytes:
    """``size`` bytes, or fewer if the peer closed the connection first."""
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _receive_reply(sock: _socket.socket) -> tuple[bytes, int, int]:
    """The next reply (tag, value, a passed descriptor or -1); tag b"" at EOF."""
    fd_space = _socket.CMSG_SPACE(4)
    data, ancillary, _, _ = sock.recvmsg(REPLY_SIZE, fd_space)
    fd = -1
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(payload) >= 4:
            fd = int.from_bytes(payload[:4], sys.byteorder)
    if data and len(data) < REPLY_SIZE:
        data += receive_exactly(sock, REPLY_SIZE - len(data))
    if len(data) < REPLY_SIZE:
        return b"", 0, fd
    return data[:1], int.from_bytes(data[1:], "little", signed=True), fd


# -- running a command through the server ----------------------------------------------


class _Interrupted(Exception):
    """A signal came before the server said which child runs the command."""


class _Forwarder:
    """Passes the signals the client gets on to the child, once its pidfd is known;
    before that, a signal ends the wait (a server that does not answer cannot
    keep Ctrl+C from working)."""

    def __init__(self) -> None:
        self.pidfd = -1
        self.pending: list[int] = []
        self.sent: set[int] = set()
        #: The wait is over: a signal is only noted (then delivered by ``_redeliver``).
        self.done = False
        #: A reply was taken from the socket and is being handled: a signal is only
        #: noted (raised, it would throw away a child's pid just received).
        self.holding = False

    def __call__(self, signum: int, _frame: object) -> None:
        if self.pidfd < 0:
            self.pending.append(signum)
            if not self.done and not self.holding:
                raise _Interrupted
            return
        self._send(signum)

    def interrupt_if_noted(self) -> None:
        """What ``__call__`` would have done for a signal noted while holding."""
        if self.pending and self.pidfd < 0 and not self.done:
            raise _Interrupted

    def attach(self, pidfd: int) -> None:
        self.pidfd = pidfd
        for signum in self.pending:
            self._send(signum)
        self.pending.clear()

    def _send(self, signum: int) -> None:
        self.sent.add(signum)
        try:  # noqa: SIM105 (no contextlib: the client imports little)
            _signal.pidfd_send_signal(self.pidfd, signum)
        except OSError:  # the child has exited: its exit code is on its way
            pass


def run_through_server(argv: Sequence[str]) -> tuple[int | None, bool]:
    """The exit code of ``argv`` run by the command server, or None when no
    server took the command (it has not started to run: run it here); and
    whether starting a server would help the next command (none answered, or a
    stale one that now exits; not when one runs that may not serve this client)."""
    try:
        descriptors = [0, 1, 2, os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)]
        for fd in descriptors[:3]:
            os.fstat(fd)
    except OSError:  # a closed standard stream, a working directory gone
        return None, False
    try:
        sock = connect()
    except ReliveError:  # an unsafe state directory: the command run here reports it
        os.close(descriptors[3])
        return None, False
    if sock is None:
        os.close(descriptors[3])
        return None, True
    forwarder = _Forwarder()
    # A signal the caller ignores (nohup, a background job of a script) stays
    # ignored, as in-process: the child, outside the terminal's process group,
    # gets only what is passed on.
    previous = {
        signum: _signal.signal(signum, forwarder)
        for signum in FORWARDED
        if _signal.getsignal(signum) is not _signal.SIG_IGN
    }
    try:
        return _serve(sock, argv, descriptors, forwarder)
    except _Interrupted:
        return _after_interrupt(sock, forwarder), False
    finally:
        forwarder.done = True
        sock.close()
        for signum, handler in previous.items():
            _signal.signal(signum, handler)
        _redeliver(forwarder.pending)


def _serve(
    sock: _socket.socket, argv: Sequence[str], descriptors: list[int], forwarder: _Forwarder
) -> tuple[int | None, bool]:
    mask = os.umask(0o077)
    os.umask(mask)
    environment = [b"%s=%s" % item for item in os.environb.items()]
    body = pack(
        [
            code_stamp(),
            str(mask).encode(),
            pack([os.fsencode(arg) for arg in argv]),
            pack(environment),
            f"{sys.stdout.encoding}\0{sys.stdout.errors}".encode("ascii", "replace"),
        ]
    )
    request = frame(OP_RUN, body)
    rights = [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, _fds_bytes(descriptors))]
    try:
        sent = sock.sendmsg([request], rights)
        sock.sendall(request[sent:])
    except OSError:
        return None, True
    finally:
        os.close(descriptors[3])
    return _await_exit(sock, forwarder)


def _after_interrupt(sock: _socket.socket, forwarder: _Forwarder) -> int | None:
    """A signal came before the child's pid: a child that started meanwhile (its
    pid is waiting in the socket) gets it; else nothing runs (a child that starts
    later cannot tell the client, and gives up) and the caller delivers it here."""
    forwarder.holding = True  # from now on, a signal waits for the pid, if any
    sock.setblocking(False)
    try:
        tag, _, fd = _receive_reply(sock)
    except OSError:
        tag, fd = b"", -1
    sock.setblocking(True)
    if tag == PID and fd >= 0:
        _go(sock, forwarder, fd)  # passes the signal on
        return _await_exit(sock, forwarder)[0]
    if fd >= 0:
        os.close(fd)
    return None


def _fds_bytes(fds: Sequence[int]) -> bytes:
    return b"".join(fd.to_bytes(4, sys.byteorder) for fd in fds)


def _await_exit(sock: _socket.socket, forwarder: _Forwarder) -> tuple[int | None, bool]:
    started = False
    while True:
        _wait_readable(sock)  # a signal here leaves the reply in the socket
        forwarder.holding = True
        try:
            tag, value, fd = _receive_reply(sock)
        except OSError:
            tag, value, fd = b"", 0, -1
        if tag == PID:
            if fd < 0:  # no pidfd (descriptors exhausted): no go, the child runs nothing
                return None, False
            started = True
            _go(sock, forwarder, fd)
        elif fd >= 0:
            os.close(fd)
        forwarder.holding = False
        forwarder.interrupt_if_noted()
        if tag == EXITED:
            return value, False
        if tag == DECLINED:
            return None, False  # the command has not started: the caller runs it here
        if tag == STALE or (not tag and not started):
            return None, True
        if tag == KILLED or not tag:
            return _killed(value if tag else 0, forwarder), False


def _go(sock: _socket.socket, forwarder: _Forwarder, pidfd: int) -> None:
    """Signals go to the child from now on (those noted so far at once): let it run."""
    forwarder.attach(pidfd)
    try:  # noqa: SIM105 (no contextlib: the client imports little)
        sock.sendall(GO)
    except OSError:  # the child is gone: how it ended is on its way
        pass


def _wait_readable(sock: _socket.socket) -> None:
    """Until a reply (or the end) is there to read, without taking it."""
    try:  # noqa: SIM105 (no contextlib: the client imports little)
        sock.recv(1, _socket.MSG_PEEK)
    except OSError:  # the reply's read says what happened
        pass


def _killed(signum: int, forwarder: _Forwarder) -> int:
    """The child died without an exit code: by a signal the user sent the client
    (then the client dies of it too, as the command would have), else an error."""
    if signum in forwarder.sent and signum != _signal.SIGINT:
        _flush()
        _signal.signal(signum, _signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    from relive.cli.render import Renderer
    from relive.errors import CommandKilled

    how = f"by signal {signum}" if signum else "(the command server went away)"
    error = CommandKilled(
        f"the command server's process running this command was killed {how} before it finished",
        hint="`relive status -p PID` shows what is patched; RELIVE_SERVER=0 runs "
        "commands in relive's own process",
    )
    renderer = Renderer(json_lines="--json" in sys.argv[1:])
    renderer.error(error)
    renderer.close()
    return error.exit_code


def _redeliver(pending: list[int]) -> None:
    """Signals that came before the command started: as if they came now."""
    for signum in pending:
        if signum == _signal.SIGINT:
            _exit(130)  # what Ctrl+C before any work gives in-process
        _flush()
        _signal.signal(signum, _signal.SIG_DFL)
        os.kill(os.getpid(), signum)


# -- starting and asking the server --------------------------------------------------


def start_server() -> None:
    """Start a command server for the next command, detached: its own session, no
    terminal, stdio on /dev/null.  It exits by itself if another one wins the lock."""
    argv = [sys.executable, *_python_flags(), "-m", "relive.cli.server"]
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:  # noqa: SIM105 (no contextlib: the client imports little)
        os.posix_spawn(sys.executable, argv, os.environ, file_actions=actions, setsid=True)
    except OSError:  # no server next time: the commands still run in-process
        pass


def _python_flags() -> list[str]:
    """The interpreter flags this client runs with that change what it imports,
    and -P: the server's working directory is never on its import path."""
    flags = ["-P"]
    if sys.flags.isolated:
        flags.append("-I")
    if sys.flags.ignore_environment:
        flags.append("-E")
    if sys.flags.no_user_site:
        flags.append("-s")
    return flags


def ask(op: bytes) -> dict[str, object] | None:
    """The server's answer to a status (OP_STATUS) or stop (OP_STOP) request, or
    None when no server runs; a ReliveError when one listens but does not
    answer within :data:`ASK_TIMEOUT_S` (stopped or stuck: waiting for ever would
    hang ``relive server stop``, the command meant to deal with it), or when the
    state directory is unsafe (no server would start there either)."""
    import json

    sock = connect()
    if sock is None:
        return None
    sock.settimeout(ASK_TIMEOUT_S)
    try:
        sock.sendall(frame(op, pack([code_stamp()])))
        tag, size, fd = _receive_reply(sock)
        if fd >= 0:
            os.close(fd)
        if tag != INFO:
            return None
        answer = json.loads(receive_exactly(sock, size))
    except TimeoutError:
        raise _not_answering(sock) from None
    except (OSError, ValueError):
        return None
    finally:
        sock.close()
    return answer if isinstance(answer, dict) else None

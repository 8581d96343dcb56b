"""redis (threads, epoll, jemalloc): PING's reply is edited and reloaded while it serves.

A client connected over a raw socket (speaking RESP) before the reload keeps its
connection and sees the new reply; every key set before the reload is still
there; redis-cli (built from the same source) sees the new reply too.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from realworld.debsrc import SourceTree
from realworld.realworld_support import Connection, assert_reloaded, free_port, relive_reload
from support import SpawnFactory, Target

KEYS = 2000
NEW_REPLY = "PONG (hot-reloaded)"


class RespClient(Connection):
    """A minimal RESP2 client on one TCP connection that stays open."""

    @staticmethod
    def encode(*args: str) -> bytes:
        out = [f"*{len(args)}\r\n".encode()]
        for arg in args:
            data = arg.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    def send(self, *commands: tuple[str, ...]) -> None:
        """Send several commands at once (pipelined)."""
        self.sock.sendall(b"".join(self.encode(*c) for c in commands))

    def read(self) -> object:
        """One reply: str (status), int, bytes or None (bulk), list; errors raise."""
        line = self.file.readline()
        assert line.endswith(b"\r\n"), f"connection closed or bad reply: {line!r}"
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise AssertionError(f"redis error: {rest.decode()}")
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data = self.file.read(size + 2)
            return data[:-2]
        if kind == b"*":
            return [self.read() for _ in range(int(rest))]
        raise AssertionError(f"unexpected reply {line!r}")

    def call(self, *args: str) -> object:
        self.send(args)
        return self.read()


@pytest.fixture
def redis_server(
    redis_src: SourceTree, spawn: SpawnFactory, tmp_path: Path
) -> Iterator[tuple[Target, int]]:
    """redis-server on a free port, no persistence, with I/O threads (6 threads in all)."""
    port = free_port()
    target = spawn(
        [
            redis_src.path / "src/redis-server",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--io-threads", "3",
            "--dir", str(tmp_path),
        ],
        cwd=tmp_path,
    )  # fmt: skip
    target.wait_for(r"Ready to accept connections", timeout=30)
    yield target, port


def redis_cli(tree: SourceTree, port: int, *args: str) -> str:
    proc = subprocess.run(
        [str(tree.path / "src/redis-cli"), "-h", "127.0.0.1", "-p", str(port), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return proc.stdout.strip()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param((), id="whole-file"),
        pytest.param(("--function", "pingCommand"), id="function-only"),
    ],
)
def test_ping_reply_changes_while_clients_and_keys_stay(
    redis_src: SourceTree, redis_server: tuple[Target, int], options: tuple[str, ...]
) -> None:
    target, port = redis_server
    threads = len(list(Path(f"/proc/{target.pid}/task").iterdir()))
    assert threads >= 6, f"redis-server runs {threads} threads, expected at least 6"

    client = RespClient(port)
    try:
        client.send(*[("SET", f"key:{i}", f"value:{i}") for i in range(KEYS)])
        assert all(client.read() == "OK" for _ in range(KEYS))
        assert client.call("RPUSH", "list", "a", "b", "c") == 3
        assert client.call("PING") == "PONG"
        assert redis_cli(redis_src, port, "PING") == "PONG"
        client_id = client.call("CLIENT", "ID")

        source = redis_src.edit(
            "src/server.c", "addReply(c,shared.pong);", f'addReplyStatus(c,"{NEW_REPLY}");'
        )
        result = relive_reload(target.pid, source, *options)
        assert_reloaded(
            result, "pingCommand", ("-O2", "-ggdb", "-DREDIS_STATIC=", "-DUSE_JEMALLOC")
        )

        # The same connection, never closed: the new reply, the same client.
        assert client.call("PING") == NEW_REPLY
        assert client.call("CLIENT", "ID") == client_id
        assert client.call("PING", "hello") == b"hello"  # the other branch is unchanged
        # Every key is still there with its value.
        assert client.call("DBSIZE") == KEYS + 1
        values = client.call("MGET", *[f"key:{i}" for i in range(KEYS)])
        assert values == [f"value:{i}".encode() for i in range(KEYS)]
        assert client.call("LRANGE", "list", "0", "-1") == [b"a", b"b", b"c"]
        # A new client built from the same source sees the new reply too.
        assert redis_cli(redis_src, port, "PING") == NEW_REPLY
        assert redis_cli(redis_src, port, "GET", f"key:{KEYS - 1}") == f"value:{KEYS - 1}"
        # Writes still work after the reload.
        assert client.call("INCR", "counter") == 1
        assert target.alive()
    finally:
        client.close()

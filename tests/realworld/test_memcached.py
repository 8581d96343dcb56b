"""memcached (worker threads on libevent/epoll): its ``version`` reply is edited and reloaded.

A client connected before the reload keeps its connection and sees the new reply;
every key set before the reload is still there, and the server's statistics go on
counting.  An unmodified reload of several of its files redirects nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from realworld.debsrc import SourceTree
from realworld.realworld_support import (
    Connection,
    assert_nothing_redirected,
    assert_reloaded,
    dry_run,
    free_port,
    relive_reload,
)
from support import SpawnFactory, Target

KEYS = 500
THREADS = 4
SUFFIX = " (hot-reloaded)"
#: The sources linked into memcached (as its Makefile lists them), for the unmodified reload.
UNMODIFIED_FILES = (
    "memcached.c", "hash.c", "jenkins_hash.c", "murmur3_hash.c", "slabs.c", "items.c",
    "assoc.c", "thread.c", "daemon.c", "stats_prefix.c", "util.c", "cache.c", "bipbuffer.c",
    "base64.c", "logger.c", "crawler.c", "itoa_ljust.c", "slab_automove.c", "authfile.c",
    "restart.c", "proto_text.c", "proto_bin.c", "extstore.c", "crc32c.c", "storage.c",
    "slab_automove_extstore.c",
)  # fmt: skip


class TextClient(Connection):
    """memcached's text protocol on one TCP connection that stays open."""

    def line(self) -> str:
        raw = self.file.readline()
        assert raw.endswith(b"\r\n"), f"connection closed or bad reply: {raw!r}"
        return raw[:-2].decode()

    def call(self, command: str) -> str:
        """Send one command, return its one-line reply."""
        self.sock.sendall(command.encode() + b"\r\n")
        return self.line()

    def set_many(self, items: dict[str, str]) -> None:
        """``set`` every item, pipelined; each must be STORED."""
        commands = [f"set {k} 0 0 {len(v)}\r\n{v}\r\n" for k, v in items.items()]
        self.sock.sendall("".join(commands).encode())
        assert all(self.line() == "STORED" for _ in items)

    def get_many(self, keys: list[str]) -> dict[str, str]:
        """One ``get`` of every key: the values found."""
        self.sock.sendall(b"get " + " ".join(keys).encode() + b"\r\n")
        found = {}
        while (header := self.line()) != "END":
            _, key, _, size = header.split()
            found[key] = self.file.read(int(size) + 2)[:-2].decode()
        return found

    def stats(self) -> dict[str, str]:
        self.sock.sendall(b"stats\r\n")
        stats = {}
        while (line := self.line()) != "END":
            _, name, value = line.split(" ", 2)
            stats[name] = value
        return stats


def connect_when_ready(target: Target, port: int, timeout: float = 30) -> TextClient:
    """A client once memcached accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return TextClient(port)
        except OSError:
            assert target.alive(), "\n".join(target.lines[-20:])
            assert time.monotonic() < deadline, f"memcached did not listen on {port}"
            time.sleep(0.05)


@pytest.fixture
def memcached(memcached_src: SourceTree, spawn: SpawnFactory) -> Iterator[tuple[Target, int]]:
    """memcached on 127.0.0.1 (TCP only) with worker threads; root must name a user (-u)."""
    port = free_port()
    target = spawn(
        [memcached_src.path / "memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0",
         "-t", str(THREADS), "-u", "root", "-m", "64"],
        cwd=memcached_src.path,
    )  # fmt: skip
    yield target, port


def test_version_reply_changes_while_client_and_keys_stay(
    memcached_src: SourceTree, memcached: tuple[Target, int]
) -> None:
    target, port = memcached
    client = connect_when_ready(target, port)
    try:
        threads = len(list(Path(f"/proc/{target.pid}/task").iterdir()))
        assert threads > THREADS, f"memcached runs {threads} threads, expected over {THREADS}"
        items = {f"key:{i}": f"value:{i}" for i in range(KEYS)}
        client.set_many(items)
        version = client.call("version")
        assert version.startswith("VERSION 1.6"), version
        before = client.stats()
        assert int(before["curr_items"]) == KEYS

        source = memcached_src.edit(
            "proto_text.c",
            'out_string(c, "VERSION " VERSION);',
            f'out_string(c, "VERSION " VERSION "{SUFFIX}");',
        )
        result = relive_reload(target.pid, source)
        # process_version_command is inlined into the command dispatcher (gcc's
        # part of it that handles the rarer commands).
        own_flags = ("-O2", "-fstack-protector-strong", "-DHAVE_CONFIG_H")
        assert_reloaded(result, "process_command_ascii.part.0", own_flags)

        # The same connection, never closed: the new reply; every key still there.
        assert client.call("version") == version + SUFFIX
        assert client.get_many(list(items)) == items
        after = client.stats()
        assert int(after["curr_items"]) == KEYS
        assert int(after["total_items"]) == int(before["total_items"])
        assert int(after["get_hits"]) == int(before["get_hits"]) + KEYS
        assert after["pid"] == before["pid"] == str(target.pid)
        # Writes still work, and a new connection sees the new reply too.
        assert client.call("incr key:counter 1") == "NOT_FOUND"
        client.set_many({"key:after": "written after the reload"})
        other = TextClient(port)
        try:
            assert other.call("version") == version + SUFFIX
            assert other.get_many(["key:0", "key:after"]) == {
                "key:0": "value:0",
                "key:after": "written after the reload",
            }
        finally:
            other.close()
        assert target.alive()
    finally:
        client.close()


def test_memcached_unmodified_redirects_nothing(
    memcached_src: SourceTree, memcached: tuple[Target, int]
) -> None:
    target, port = memcached
    connect_when_ready(target, port).close()
    sources = [memcached_src.path / name for name in UNMODIFIED_FILES]
    assert_nothing_redirected(dry_run(target.pid, sources), at_least=350)

"""dnsmasq (one process, a poll() loop, a DNS cache): a statistic's reply is edited.

dnsmasq forwards to a fake upstream server run by the test and caches the
answers.  cache_make_stat (cache.c) formats the CHAOS TXT "hits.bind" reply;
after the reload it carries a prefix, its counter goes on from where it was,
and names cached before the reload are still answered from the cache (the
upstream server is not asked again).
"""

from __future__ import annotations

import random
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from realworld.debsrc import SourceTree
from realworld.realworld_support import assert_reloaded, free_port, relive_reload
from support import SpawnFactory, Target

A, TXT = 1, 16
IN, CH = 1, 3


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def skip_name(packet: bytes, i: int) -> int:
    while True:
        length = packet[i]
        if length == 0:
            return i + 1
        if length & 0xC0 == 0xC0:  # compression pointer
            return i + 2
        i += 1 + length


def read_question(packet: bytes) -> tuple[int, str, int, int, int]:
    """(id, name, type, class, offset after the question) of a query."""
    qid = struct.unpack(">H", packet[:2])[0]
    labels, i = [], 12
    while packet[i]:
        labels.append(packet[i + 1 : i + 1 + packet[i]].decode())
        i += 1 + packet[i]
    qtype, qclass = struct.unpack(">HH", packet[i + 1 : i + 5])
    return qid, ".".join(labels), qtype, qclass, i + 5


def query(port: int, name: str, qtype: int = A, qclass: int = IN) -> list[str]:
    """Ask 127.0.0.1:port; the A addresses or TXT strings of the answer (rcode 0)."""
    qid = random.randrange(1 << 16)
    packet = struct.pack(">6H", qid, 0x0100, 1, 0, 0, 0)
    packet += encode_name(name) + struct.pack(">HH", qtype, qclass)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(10)
        s.sendto(packet, ("127.0.0.1", port))
        reply = s.recv(4096)
    rid, flags, qdcount, ancount = struct.unpack(">4H", reply[:8])
    assert rid == qid and flags & 0xF == 0, f"bad reply to {name}: flags {flags:#x}"
    i = 12
    for _ in range(qdcount):
        i = skip_name(reply, i) + 4
    answers = []
    for _ in range(ancount):
        i = skip_name(reply, i)
        rtype, _class, _ttl, length = struct.unpack(">HHIH", reply[i : i + 10])
        data = reply[i + 10 : i + 10 + length]
        i += 10 + length
        if rtype == A:
            answers.append(socket.inet_ntoa(data))
        elif rtype == TXT:
            answers.append(data[1 : 1 + data[0]].decode())
    return answers


class FakeUpstream:
    """A DNS server on 127.0.0.1 answering every A query with 192.0.2.N (N counts up)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.asked: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                packet, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            qid, name, qtype, _qclass, end = read_question(packet)
            self.asked[name] += 1
            header = struct.pack(">6H", qid, 0x8180, 1, 1 if qtype == A else 0, 0, 0)
            reply = header + packet[12:end]
            if qtype == A:
                address = socket.inet_aton(f"192.0.2.{sum(self.asked.values())}")
                reply += struct.pack(">HHHIH", 0xC00C, A, IN, 3600, 4) + address
            self.sock.sendto(reply, peer)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream()
    yield server
    server.close()


@pytest.fixture
def dnsmasq(
    dnsmasq_src: SourceTree, spawn: SpawnFactory, upstream: FakeUpstream, tmp_path: Path
) -> Iterator[tuple[Target, int]]:
    """dnsmasq in the foreground on a free port of 127.0.0.1, logging queries to stderr."""
    port = free_port(socket.SOCK_DGRAM)
    target = spawn(
        [
            dnsmasq_src.path / "src/dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            f"--port={port}",
            f"--server=127.0.0.1#{upstream.port}",
            "--user=root",
            "--pid-file=",
            "--log-facility=-",
            "--log-queries",
            "--address=/local.test/10.1.2.3",
        ],
        cwd=tmp_path,
    )
    target.wait_for(r"started, version", timeout=30)
    target.wait_for(r"using nameserver 127\.0\.0\.1#", timeout=30)
    yield target, port


def test_stat_reply_changes_and_cache_stays(
    dnsmasq_src: SourceTree, dnsmasq: tuple[Target, int], upstream: FakeUpstream
) -> None:
    target, port = dnsmasq
    assert query(port, "www.example.test") == ["192.0.2.1"]
    assert query(port, "www.example.test") == ["192.0.2.1"]  # from the cache
    assert query(port, "local.test") == ["10.1.2.3"]
    assert upstream.asked["www.example.test"] == 1
    hits_before = int(query(port, "hits.bind", TXT, CH)[0])
    assert hits_before >= 2

    source = dnsmasq_src.edit(
        "src/cache.c",
        'sprintf(buff+1, "%u", daemon->metrics[METRIC_DNS_LOCAL_ANSWERED]);',
        'sprintf(buff+1, "hits=%u", daemon->metrics[METRIC_DNS_LOCAL_ANSWERED]);',
    )
    assert_reloaded(
        relive_reload(target.pid, source), "cache_make_stat", ("-O2", '-DVERSION="2.90"')
    )

    # The cached answer is still there: the upstream server is not asked again.
    assert query(port, "www.example.test") == ["192.0.2.1"]
    assert upstream.asked["www.example.test"] == 1
    assert query(port, "local.test") == ["10.1.2.3"]
    # A new name is forwarded and cached as before.
    assert query(port, "new.example.test") == ["192.0.2.2"]
    assert query(port, "new.example.test") == ["192.0.2.2"]
    assert upstream.asked["new.example.test"] == 1
    # The edited reply; its counter went on from where it was.
    (hits,) = query(port, "hits.bind", TXT, CH)
    assert hits.startswith("hits="), hits
    assert int(hits.removeprefix("hits=")) >= hits_before + 3
    # Other statistics (same function, other branches) are unchanged.
    assert query(port, "misses.bind", TXT, CH) == ["2"]
    target.wait_for(r"query\[A\] new\.example\.test from 127\.0\.0\.1")
    assert target.alive()

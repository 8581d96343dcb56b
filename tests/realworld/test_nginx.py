"""nginx (a master and pre-forked workers, epoll): its Server header is edited and reloaded.

The master and every worker are reloaded (``reload --all``: each process running
the same executable).  A keep-alive connection opened before the reload is served
on after it with the new header; the server's shared counters (stub_status) go on
counting.  An unmodified reload of several of its files redirects nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
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
from support import SpawnFactory, Target, wait_until

WORKERS = 2
NEW_SERVER = "nginx (hot-reloaded)"
HEADER_FILTER = "src/http/ngx_http_header_filter_module.c"
HELLO = "served by relive's test"
#: Files of nginx for the unmodified reload: the event loop, connections, the HTTP
#: request parser and core, the header filter and the static handler.
UNMODIFIED_FILES = (
    "src/event/ngx_event.c",
    "src/event/modules/ngx_epoll_module.c",
    "src/core/ngx_connection.c",
    "src/core/ngx_string.c",
    "src/http/ngx_http_request.c",
    "src/http/ngx_http_parse.c",
    "src/http/ngx_http_core_module.c",
    "src/http/ngx_http_header_filter_module.c",
    "src/http/modules/ngx_http_static_module.c",
)

CONFIG = """\
daemon off;
master_process on;
worker_processes {workers};
pid {root}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    server_tokens off;
    keepalive_timeout 120s;
    keepalive_requests 1000;
    server {{
        listen 127.0.0.1:{port};
        location = /status {{ stub_status; }}
        location = /hello {{ return 200 "{hello}"; }}
        location / {{ return 404; }}
    }}
}}
"""


class HttpConnection(Connection):
    """HTTP/1.1 requests on one keep-alive TCP connection."""

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        """Status, headers (lower-case names) and body of ``GET path``; the connection stays."""
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        status_line = self.file.readline().decode()
        assert status_line.startswith("HTTP/1.1 "), f"connection closed? {status_line!r}"
        headers = {}
        while (line := self.file.readline().decode().rstrip("\r\n")) != "":
            name, value = line.split(":", 1)
            headers[name.lower()] = value.strip()
        assert headers.get("connection") == "keep-alive", headers
        body = self.file.read(int(headers["content-length"]))
        return int(status_line.split()[1]), headers, body


def nginx_processes(master: int) -> list[int]:
    """The master and its worker processes."""
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [master, *map(int, children)]


def requests_served(connection: HttpConnection) -> int:
    """stub_status' count of requests, across all workers (shared memory)."""
    status, _, body = connection.get("/status")
    assert status == 200, body
    match = re.search(rb"^ *\d+ +\d+ +(\d+) *$", body, re.MULTILINE)
    assert match, body
    return int(match.group(1))


@pytest.fixture
def nginx(
    nginx_src: SourceTree, spawn: SpawnFactory, tmp_path: Path
) -> Iterator[tuple[Target, int]]:
    """nginx on a free port of 127.0.0.1: a master and ``WORKERS`` workers, in a process
    group of their own so that all of them are ended after the test."""
    port = free_port()
    (tmp_path / "logs").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(CONFIG.format(workers=WORKERS, root=tmp_path, port=port, hello=HELLO))
    # A copy of its own: ``reload --all`` takes every process of the same executable
    # file, and another run may be serving from the cached build.
    executable = tmp_path / "nginx"
    shutil.copy2(nginx_src.path / "objs/nginx", executable)
    target = spawn(
        [executable, "-p", f"{tmp_path}/", "-c", conf, "-e", "stderr"],
        cwd=tmp_path,
        new_session=True,
    )
    try:
        wait_until(
            lambda: len(nginx_processes(target.pid)) == 1 + WORKERS,
            timeout=30,
            what=f"nginx started {WORKERS} workers",
        )
        yield target, port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(target.pid, signal.SIGKILL)  # the workers too


def test_server_header_changes_in_master_and_workers(
    nginx_src: SourceTree, nginx: tuple[Target, int]
) -> None:
    target, port = nginx
    processes = nginx_processes(target.pid)
    connection = HttpConnection(port)
    try:
        status, headers, body = connection.get("/hello")
        assert (status, headers["server"]) == (200, "nginx"), headers
        assert body == HELLO.encode()
        served_before = requests_served(connection)

        # The plain edit, a longer string in the array, is refused: the array is a
        # variable whose storage in the running processes is too small.
        source = nginx_src.edit(
            HEADER_FILTER, '"Server: nginx" CRLF;', f'"Server: {NEW_SERVER}" CRLF;'
        )
        refused = relive_reload(target.pid, source, "--all")
        assert refused.returncode == 8, refused.output
        layout = [e for e in refused.events if e.get("type") == "LayoutChanged"]
        assert len(layout) == len(processes), refused.output
        assert "ngx_http_server_string changed size" in layout[0]["message"], layout
        assert connection.get("/hello")[1]["server"] == "nginx"
        nginx_src.restore()

        # The string as a literal in the code: the header filter changes.
        source = nginx_src.edit(
            HEADER_FILTER,
            'static u_char ngx_http_server_string[] = "Server: nginx" CRLF;',
            f'#define NGX_HTTP_SERVER_STRING "Server: {NEW_SERVER}" CRLF',
        )
        nginx_src.edit(
            HEADER_FILTER,
            "len += sizeof(ngx_http_server_string) - 1;",
            "len += sizeof(NGX_HTTP_SERVER_STRING) - 1;",
        )
        nginx_src.edit(
            HEADER_FILTER,
            "p = ngx_http_server_string;\n            len = sizeof(ngx_http_server_string) - 1;",
            "p = (u_char *) NGX_HTTP_SERVER_STRING;\n"
            "            len = sizeof(NGX_HTTP_SERVER_STRING) - 1;",
        )
        result = relive_reload(target.pid, source, "--all")
        # One compile, with the build's own flags; then one transaction per process,
        # each redirecting the header filter, switched back to back.
        assert_reloaded(
            result,
            "ngx_http_header_filter",
            ("-O2", "-fPIC", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2"),
        )
        assert result.names("redirected") == ["ngx_http_header_filter"] * len(processes)
        reloaded = [e["pid"] for e in result.events if e.get("kind") == "reloaded"]
        assert sorted(reloaded) == sorted(processes), result.output
        switched = [e for e in result.events if e.get("kind") == "switched"]
        assert [sorted(e["pids"]) for e in switched] == [sorted(processes)], result.output

        # The connection opened before the reload: served, with the new header.
        status, headers, body = connection.get("/hello")
        assert (status, headers["server"]) == (200, NEW_SERVER), headers
        assert body == HELLO.encode()
        # The shared counters went on: the requests before the reload still count.
        assert requests_served(connection) == served_before + 3  # /hello twice, /status
        # New connections (whichever worker takes them) get the new header too.
        for _ in range(2 * WORKERS):
            other = HttpConnection(port)
            try:
                status, headers, _ = other.get("/missing")
                assert (status, headers["server"]) == (404, NEW_SERVER), headers
            finally:
                other.close()
        assert nginx_processes(target.pid) == processes
    finally:
        connection.close()


def test_nginx_unmodified_redirects_nothing(
    nginx_src: SourceTree, nginx: tuple[Target, int]
) -> None:
    target, port = nginx
    worker = nginx_processes(target.pid)[1]
    connection = HttpConnection(port)
    try:
        assert connection.get("/hello")[0] == 200
    finally:
        connection.close()
    sources = [nginx_src.path / name for name in UNMODIFIED_FILES]
    assert_nothing_redirected(dry_run(worker, sources), at_least=200)

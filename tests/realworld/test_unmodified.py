"""An unmodified source reloads as nothing: no function of a real program is redirected.

Each program is built by its own build system (without -ffunction-sections, so
tail calls within a file are 2-byte jumps, strings and constants are merged by
the linker) and relive recompiles its files with -ffunction-sections: what the
code does must compare equal however it was encoded.  One dry run per program
reloads many files at once.  sqlite3's amalgamation is checked by test_sqlite3.py:
its reload of sqlite3.c with one function edited redirects that function alone
(one compile of sqlite3.c, about a minute, instead of two).
"""

from __future__ import annotations

from pathlib import Path

from realworld.debsrc import SourceTree
from realworld.realworld_support import assert_nothing_redirected, dry_run, free_port
from support import SpawnFactory

#: Files of redis-server in which an unmodified reload redirected something before
#: (short tail jumps, empty strings, constants read through an offset label).
REDIS_FILES = (
    "server.c",
    "db.c",
    "t_set.c",
    "t_zset.c",
    "sds.c",
    "config.c",
    "rdb.c",
    "replication.c",
)


def test_lua_unmodified_redirects_nothing(lua_src: SourceTree, spawn: SpawnFactory) -> None:
    lua = spawn([lua_src.path / "src/lua5.4", "-i"], cwd=lua_src.path, stdin_pipe=True)
    lua.wait_for(r"^Lua 5\.4")
    sources = sorted(p for p in (lua_src.path / "src").glob("*.c") if p.name != "luac.c")
    assert_nothing_redirected(dry_run(lua.pid, sources), at_least=700)


def test_redis_unmodified_redirects_nothing(
    redis_src: SourceTree, spawn: SpawnFactory, tmp_path: Path
) -> None:
    port = free_port()
    server = spawn(
        [redis_src.path / "src/redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        cwd=tmp_path,
    )  # fmt: skip
    server.wait_for(r"Ready to accept connections", timeout=30)
    sources = [redis_src.path / "src" / name for name in REDIS_FILES]
    assert_nothing_redirected(dry_run(server.pid, sources), at_least=700)

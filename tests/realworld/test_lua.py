"""lua5.4, the interpreter, driven through a pipe: print's separator is edited and reloaded.

Globals, tables and functions defined in the session before the reload are still
defined afterwards; print (luaB_print in lbaselib.c) uses the new separator.
"""

from __future__ import annotations

from realworld.debsrc import SourceTree
from realworld.realworld_support import assert_reloaded, relive_reload
from support import SpawnFactory

SEPARATOR = 'lua_writestring("\\t", 1);'
# Flags of Debian's build (dpkg-buildflags, luaconf) that relive must find by itself.
DEBIAN_FLAGS = ("-O2", "-fstack-protector-strong", "-D_FORTIFY_SOURCE=2", "-DLUA_USE_LINUX")


def test_print_separator_changes_and_globals_stay(lua_src: SourceTree, spawn: SpawnFactory) -> None:
    lua = spawn([lua_src.path / "src/lua5.4", "-i"], cwd=lua_src.path, stdin_pipe=True)
    lua.wait_for(r"^Lua 5\.4")

    def run(line: str) -> None:
        lua.write(line.encode() + b"\n")

    run("x = 42")
    run("t = {10, 20, 30}")
    run("function greet(name) return 'hi ' .. name end")
    run("counter = 0; for i = 1, 100 do counter = counter + i end")
    run("print('a', 'b', x, #t)")
    lua.wait_for(r"^a\tb\t42\t3$")

    source = lua_src.edit("src/lbaselib.c", SEPARATOR, 'lua_writestring(" | ", 3);')
    assert_reloaded(relive_reload(lua.pid, source), "luaB_print", DEBIAN_FLAGS)

    run("print('a', 'b', x, #t, greet('lua'), counter, t[3])")
    lua.wait_for(r"^a \| b \| 42 \| 3 \| hi lua \| 5050 \| 30$")

    # A second edit of the same file, compared with the first reload's code.
    lua_src.edit("src/lbaselib.c", 'lua_writestring(" | ", 3);', 'lua_writestring(", ", 2);')
    assert_reloaded(relive_reload(lua.pid, source), "luaB_print")
    run("y = x + 1; print(x, y, greet('again'))")
    lua.wait_for(r"^42, 43, hi again$")
    assert lua.alive()

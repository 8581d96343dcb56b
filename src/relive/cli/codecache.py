"""Code the standard library generates at class definition, compiled once.

``dataclasses`` writes the source of each method it adds (``__init__``,
``__repr__``, ``__eq__``, ``__hash__``, a frozen class's ``__setattr__``...)
and compiles it with ``exec`` when the class is defined; ``typing.NamedTuple``
compiles every string annotation (``ForwardRef``: relive's modules use
``from __future__ import annotations``) and ``collections.namedtuple`` its
``__new__``.  For relive's ~80 dataclasses and ~30 named tuples that was about
40% of everything ``relive reload`` of a one-function object executed, at every
start.  Python keeps the compiled code of modules (``__pycache__``) but not
this; the ``relive`` command keeps it here.

The code objects, keyed by their mode and exact source text, live in one state
file (marshal, the format of ``.pyc`` files; named after the interpreter's
bytecode magic number, so another Python never reads it).  A text found there
gets its cached code; any other is compiled as the library would compile it
(file name ``<string>``, no inherited ``__future__`` flags: those three modules
have none) and added.  Same text, same flags, same code: the classes are exactly
what the library makes without the cache.

The file holds code that runs, so it has every guarantee of the state
directory (``statedir``: relive's user's own directory and file, never through
a link).  Where they do not hold, or the file does not load, nothing is cached
and the library compiles as usual: the cache can make the command faster,
never make it fail.  Only the command installs it (``cli.main.entry_point``);
importing relive as a library changes nothing in the standard library.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import marshal
import sys
import typing
from collections.abc import Iterator
from importlib.util import MAGIC_NUMBER
from types import CodeType, ModuleType
from typing import Any

from relive.statedir import StateDirError, read_state_file, write_state_file

#: More texts than relive's classes ever generate (~450): a file that grew past
#: it (classes changed across versions) is rewritten with this run's texts only.
LIMIT = 4000

_Key = tuple[str, str]  # (compile mode, source text)


def cache_name() -> str:
    """The state file's name, for this interpreter's bytecode."""
    return f"codecache-{MAGIC_NUMBER.hex()}.marshal"


class CompiledTexts:
    """``exec``, ``eval`` and ``compile`` for the standard library's generated code,
    each source text compiled once."""

    def __init__(self, known: dict[_Key, CodeType]) -> None:
        self.known = known
        #: The texts this run used (what a rewrite past LIMIT keeps).
        self.used: dict[_Key, CodeType] = {}
        #: Texts compiled in this run, not in the file yet.
        self.added = 0

    def code(self, source: str, mode: str) -> CodeType:
        """``source`` compiled as ``exec``/``eval`` compile a string in a module
        without ``__future__`` imports (raises SyntaxError as they do)."""
        key = (mode, source)
        code = self.known.get(key)
        if code is None:
            code = compile(source, "<string>", mode, dont_inherit=True)
            self.known[key] = code
            self.added += 1
        self.used[key] = code
        return code

    def exec(
        self,
        source: str | bytes | CodeType,
        globals: dict[str, Any] | None = None,
        locals: Any = None,
        /,
    ) -> None:
        """``exec`` for ``dataclasses``."""
        if globals is None:  # exec's default: the caller's globals
            globals = sys._getframe(1).f_globals
        if isinstance(source, str):
            source = self.code(source, "exec")
        exec(source, globals, locals)

    def eval(
        self,
        source: str | bytes | CodeType,
        globals: dict[str, Any] | None = None,
        locals: Any = None,
        /,
    ) -> Any:
        """``eval`` for ``collections.namedtuple``."""
        if globals is None:
            globals = sys._getframe(1).f_globals
        if isinstance(source, str):
            source = self.code(source, "eval")
        return eval(source, globals, locals)

    def compile(self, source: Any, filename: Any, mode: str, *args: Any, **kwargs: Any) -> Any:
        """``compile`` for ``typing.ForwardRef``: the plain call is cached, any
        other goes to the builtin unchanged."""
        if args or kwargs or filename != "<string>" or not isinstance(source, str):
            return compile(source, filename, mode, *args, **kwargs)
        return self.code(source, mode)

    def contents(self) -> dict[_Key, CodeType]:
        """What the file should hold now."""
        return self.known if len(self.known) <= LIMIT else self.used


def load_cache() -> dict[_Key, CodeType]:
    """The cached code objects (empty when there is no usable file)."""
    try:
        data = read_state_file(cache_name())
    except StateDirError:
        return {}
    if not data:
        return {}
    try:
        loaded = marshal.loads(data)
    except (ValueError, EOFError, TypeError):  # a damaged file: start again
        return {}
    if not isinstance(loaded, dict):
        return {}
    return {key: code for key, code in loaded.items() if _is_entry(key, code)}


def _is_entry(key: object, code: object) -> bool:
    return (
        isinstance(key, tuple)
        and len(key) == 2
        and key[0] in ("exec", "eval")
        and isinstance(key[1], str)
        and isinstance(code, CodeType)
    )


def save_cache(texts: CompiledTexts) -> None:
    """Write the file when this run compiled something it did not have."""
    if not texts.added:
        return
    with contextlib.suppress(StateDirError):  # the command's own work is done
        write_state_file(cache_name(), marshal.dumps(texts.contents()))


@contextlib.contextmanager
def compiled_once() -> Iterator[CompiledTexts]:
    """Have the standard library use the cache while the block runs; save it after."""
    texts = CompiledTexts(load_cache())
    hooks: list[tuple[ModuleType, str, Any]] = [
        (dataclasses, "exec", texts.exec),
        (collections, "eval", texts.eval),
        (typing, "compile", texts.compile),
    ]
    before = [vars(module).get(name) for module, name, _ in hooks]
    for module, name, hook in hooks:
        vars(module)[name] = hook
    try:
        yield texts
    finally:
        for (module, name, _), old in zip(hooks, before, strict=True):
            if old is None:  # the module used the builtin
                del vars(module)[name]
            else:
                vars(module)[name] = old
        save_cache(texts)

"""The flags a compiler recorded in DWARF (``DW_AT_producer``).

gcc records its -O/-f/-m/-g switches but no -D/-I; clang records nothing unless
the program was built with -grecord-command-line, and then its whole command line.
"""

from __future__ import annotations

import re

from relive.toolchain.arguments import clean_arguments

__all__ = ["parse_producer"]

_GCC_KEEP_PREFIXES = ("-O", "-f", "-m", "-std=", "-g", "--param=")
_GCC_KEEP_EXACT = frozenset({"-ansi", "-p", "-pg", "-pthread"})
# Switches that name paths of the original build, make it reproducible, or only
# shape diagnostics or dump files: wrong or useless when recompiling one object.
_GCC_DROP_PREFIXES = (
    "-fdebug-prefix-map=", "-ffile-prefix-map=", "-fmacro-prefix-map=",
    "-frandom-seed", "-fdump-", "-fdiagnostics-", "-dumpbase", "-dumpdir",
)  # fmt: skip

# "Debian clang version 14.0.6", "clang version 17.0.6 (https://… 6009708b)",
# "Apple clang version 15.0.0 (clang-1500.3.9.4)": the version, then any number
# of parenthesised remarks, then (with -grecord-command-line) the command line.
_CLANG_RE = re.compile(r"\bclang version \S+(?:\s+\([^)]*\))*")


def parse_producer(producer: str) -> tuple[str, tuple[str, ...]]:
    """Split a DW_AT_producer string into (compiler family, flags).

    The family is "gcc" or "clang", or "" for a producer this does not know (the
    GNU assembler, other compilers), which then has no flags.  For gcc the flags
    are the recorded -O/-f/-m/-std/-g switches minus path maps, random seeds and
    dump options; gcc never records -D/-I/-W.  For clang they are the recorded
    command line, cleaned like a compile_commands.json entry, or nothing if the
    program was built without -grecord-command-line.
    """
    if producer.startswith("GNU ") and not producer.startswith("GNU AS"):
        return "gcc", _gcc_producer_flags(producer)
    match = _CLANG_RE.search(producer)
    if match:
        args = _split_clang_record(producer[match.end() :])
        # The recorded command starts with the driver's path.
        if args and not args[0].startswith("-"):
            args = args[1:]
        return "clang", clean_arguments(args)
    return "", ()


def _gcc_producer_flags(producer: str) -> tuple[str, ...]:
    # "GNU C17 12.2.0 (Debian 12.2.0-14) -O2 ...": switches start at the first
    # word beginning with "-"; the version remarks before it never do.
    start = re.search(r"(?:^|\s)-", producer)
    if start is None:
        return ()
    tokens = producer[start.start() :].split()
    flags: list[str] = []
    for i, token in enumerate(tokens):
        if token.startswith(_GCC_DROP_PREFIXES):
            continue
        if token.startswith(_GCC_KEEP_PREFIXES) or token in _GCC_KEEP_EXACT:
            flags.append(token)
        elif token == "--param" and i + 1 < len(tokens):
            flags.append(f"--param={tokens[i + 1]}")
    return tuple(flags)


def _split_clang_record(text: str) -> list[str]:
    # clang joins the arguments with spaces after escaping spaces and backslashes
    # with a backslash; quotes are literal, so shlex would be wrong here.
    args: list[str] = []
    current: list[str] = []
    in_arg = False
    chars = iter(text)
    for char in chars:
        if char == "\\":
            current.append(next(chars, "\\"))
            in_arg = True
        elif char.isspace():
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
        else:
            current.append(char)
            in_arg = True
    if in_arg:
        args.append("".join(current))
    return args

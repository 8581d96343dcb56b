"""Cleaning an original compiler command line down to the flags that shape code.

A command from compile_commands.json or a clang DWARF record names inputs,
outputs, dependency files and link options; relive compiles one object its own
way, so only the rest is kept.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["OPTIONS_WITH_VALUE", "clean_arguments"]

# Options whose value is the next argument; needed so that value is not taken
# for a source file (and dropped) when scanning for positional arguments.
_TAKES_VALUE = frozenset(
    {
        "-D", "-U", "-I", "-include", "-imacros", "-idirafter", "-iprefix",
        "-iwithprefix", "-iwithprefixbefore", "-isystem", "-isystem-after",
        "-isysroot", "-iquote", "-imultilib", "-imultiarch", "-iframework",
        "-x", "-Xclang", "-Xassembler", "-Xpreprocessor", "-Xanalyzer",
        "-aux-info", "--param", "-target", "-arch", "-mllvm", "-B",
        "-cxx-isystem", "-ivfsoverlay", "-include-pch", "-dumpbase",
        "-dumpbase-ext", "-dumpdir", "--sysroot", "-F",
    }
)  # fmt: skip

#: Options whose value is the next argument.
OPTIONS_WITH_VALUE = _TAKES_VALUE

# Output naming, dependency files and linking are relive's business (or
# irrelevant to compiling one object): drop them together with their value.
_DROP_WITH_VALUE = frozenset({"-o", "-MF", "-MT", "-MQ", "-MJ", "-Xlinker", "-z", "-T", "-u", "-e"})
_DROP = frozenset(
    {
        # relive always compiles to an object; other output modes make none.
        "-c", "-S", "-E", "-fsyntax-only", "-emit-llvm",
        # Dependency files: the compiler layer writes its own.
        "-MD", "-MMD", "-MP", "-M", "-MM", "-MG",
        # Link-only options: unused with -c (clang would warn about each).
        "-shared", "-rdynamic", "-pie", "-no-pie", "-s",
    }
)  # fmt: skip
_DROP_PREFIXES = (
    "-o", "-MF", "-MT", "-MQ", "-MJ",  # joined forms, e.g. -MFfoo.d
    "-Wp,-MD,", "-Wp,-MMD,",  # Linux-kernel style dependency files
    "-Wl,", "-l", "-L", "-static",
)  # fmt: skip


def clean_arguments(args: Sequence[str]) -> tuple[str, ...]:
    """Strip an original compiler command (without argv[0]) down to its flags.

    Removes source and other input files, ``-c``, ``-o X``, dependency-file
    options (``-MD -MMD -MF X -MT X -MQ X -MP``) and link-only options, and keeps
    everything else in order.  Response files (``@file``) are kept.
    """
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _DROP_WITH_VALUE:
            i += 2
            continue
        if arg in _DROP or arg.startswith(_DROP_PREFIXES):
            i += 1
            continue
        if arg in _TAKES_VALUE:
            out.extend(args[i : i + 2])
            i += 2
            continue
        # A positional argument is an input (the source, objects, "-" for stdin).
        if (arg.startswith("-") and arg != "-") or arg.startswith("@"):
            out.append(arg)
        i += 1
    return tuple(out)

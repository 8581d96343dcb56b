"""relive's peak memory when it reloads the real sqlite3.c (issue 13: at most 60 MB).

Uses the sqlite3 build of the real-program tests (``~/.cache/relive/realworld``:
run ``make test-realworld`` once).  ``upperFunc`` is edited as in
tests/realworld/test_sqlite3.py and the amalgamation compiled once, as relive
compiles it (the build's command from its compile_commands.json, plus relive's
``-ffunction-sections -fdata-sections``, paths mapped to the build tree), into an
object kept next to the build: gcc's minute is paid once, not per run.  Each run
starts the shell, reloads that object twice in-process (``RELIVE_SERVER=0``: the
figure is the command's own ``ru_maxrss`` and CPU time, no server) and undoes.  The second
reload is the next one (same object: nothing left to redirect).

    .venv/bin/python benchmarks/sqlite_memory.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from statistics import median

from relive.toolchain.compiler import SECTION_FLAGS

CACHE = Path.home() / ".cache" / "relive" / "realworld"
OLD_LOOP = "z1[i] = (char)sqlite3Toupper(z2[i]);"
NEW_LOOP = "z1[i] = z2[i]==' ' ? '_' : (char)sqlite3Toupper(z2[i]);"


def find_tree() -> Path:
    """The built sqlite3 source tree of the real-program tests."""
    for built in sorted(CACHE.glob("sqlite3_*/relive-built.json")):
        tree = Path(json.loads(built.read_text())["tree"])
        if (tree / ".libs" / "sqlite3").exists():
            return tree
    sys.exit(f"no sqlite3 build in {CACHE}: run `make test-realworld` once")


def edited_object(tree: Path) -> Path:
    """The edited sqlite3.c compiled with relive's flags (compiled once, then kept)."""
    work = tree.parent / "bench-memory"
    obj = work / "edited.o"
    if obj.exists():
        return obj
    work.mkdir(exist_ok=True)
    text = (tree / "sqlite3.c").read_text()
    assert text.count(OLD_LOOP) == 1, "upperFunc's loop not found"
    (work / "sqlite3.c").write_text(text.replace(OLD_LOOP, NEW_LOOP))
    [entry] = [
        e
        for e in json.loads((tree / "compile_commands.json").read_text())
        if e["file"].endswith("/sqlite3.c") and e["output"].endswith(".libs/sqlite3.o")
    ]
    args = [a for a in entry["arguments"] if a != "-I."]
    out = args.index("-o")
    args[out : out + 2] = ["-o", str(obj)]
    args[-1] = "sqlite3.c"
    args += [f"-I{tree}", *SECTION_FLAGS, f"-ffile-prefix-map={work}={tree}"]
    print("compiling the edited sqlite3.c once (about a minute)...", flush=True)
    subprocess.run(args, cwd=work, check=True)
    return obj


def reload_peak(pid: int, obj: Path) -> tuple[float, float, str]:
    """One in-process ``relive reload`` of ``obj``: its ru_maxrss (MB), its CPU
    time (user + system, s: start-up and imports included) and summary."""
    env = dict(os.environ, RELIVE_SERVER="0")
    argv = [sys.executable, "-m", "relive", "reload", "-p", str(pid), str(obj)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"relive reload failed:\n{output[-2000:]}")
    cpu_s = usage.ru_utime + usage.ru_stime
    return usage.ru_maxrss / 1024, cpu_s, output.strip().splitlines()[-1]


def one_run(tree: Path, obj: Path) -> tuple[float, float]:
    """Start the shell, reload twice (first, next), undo: the two peaks (MB)."""
    env = dict(os.environ, LD_LIBRARY_PATH=str(tree / ".libs"))
    shell = subprocess.Popen(
        [tree / ".libs" / "sqlite3", ":memory:"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert shell.stdin is not None and shell.stdout is not None
    try:
        shell.stdin.write(b"SELECT upper('a b');\n")
        shell.stdin.flush()
        shell.stdout.readline()
        first, cpu_s, summary = reload_peak(shell.pid, obj)
        print(f"  first {first:6.1f} MB  {cpu_s:5.2f} s CPU  {summary}")
        later, cpu_s, summary = reload_peak(shell.pid, obj)
        print(f"  next  {later:6.1f} MB  {cpu_s:5.2f} s CPU  {summary}")
        shell.stdin.write(b"SELECT upper('a b');\n")
        shell.stdin.flush()
        assert shell.stdout.readline() == b"A_B\n", "the new upper() does not run"
        subprocess.run(
            [sys.executable, "-m", "relive", "undo", "-p", str(shell.pid)],
            capture_output=True,
            env=dict(os.environ, RELIVE_SERVER="0"),
            check=True,
        )
    finally:
        shell.stdin.close()
        shell.wait()
    return first, later


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    tree = find_tree()
    obj = edited_object(tree)
    peaks = [one_run(tree, obj) for _ in range(runs)]
    print(
        f"sqlite3.c reload, relive's peak memory (median of {runs}): "
        f"first {median([p[0] for p in peaks]):.1f} MB, "
        f"next {median([p[1] for p in peaks]):.1f} MB (goal <= 60)"
    )


if __name__ == "__main__":
    main()

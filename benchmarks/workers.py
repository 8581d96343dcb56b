"""The ``workers`` scenario of ``make bench``: ``reload --all`` over forked workers.

A small program forks 8 workers (the parent only waits); each worker calls
``value()`` every 100 µs and prints the CLOCK_MONOTONIC time at which it first
sees a new result.  Each run starts a fresh program and runs ``relive --json
reload --all -p PARENT workers.c`` (the source edited: ``value()`` returns 2).
Measured per run:

* the switch spread relive reports (``switched`` event): the time from the
  first process's entry write to the last one's (the parent included: 9
  processes);
* the spread the workers see: from the first worker's first new result to the
  last worker's (includes the 100 µs polling and the machine's scheduling);
* compiles per reload (``compiled`` events) and the command's wall time.
"""

from __future__ import annotations

import functools
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from figures import median
from reader import LineReader

WORKERS = 8
TIMEOUT_S = 30.0

PROGRAM = r"""
#include <signal.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

__attribute__((noipa)) int value(void) { return VERSION; }

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < WORKERS; i++) {
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            int last = value();
            printf("WORKER %d\n", (int)getpid());
            for (;;) {
                int v = value();
                if (v != last) {
                    printf("NEW %d %d %lld\n", (int)getpid(), v, now_ns());
                    last = v;
                }
                usleep(100);
            }
        }
    }
    for (;;) pause();
}
"""


def source(version: int) -> str:
    """The program's source with ``value()`` returning ``version``."""
    return PROGRAM.replace("WORKERS", str(WORKERS)).replace("VERSION", str(version))


def build(root: Path) -> tuple[Path, Path]:
    """The workers program (built from version 1) and its source, now version 2."""
    folder = root / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "workers.c"
    src.write_text(source(1))
    exe = folder / "bench_workers"
    subprocess.run(
        ["gcc", "-g", "-O2", "-o", exe.name, src.name],
        cwd=folder,
        check=True,
        capture_output=True,
    )
    src.write_text(source(2))
    return exe, src


class _Program(LineReader[list[str]]):
    """The running program, its lines read by a thread (split into words)."""

    def __init__(self, exe: Path) -> None:
        proc = subprocess.Popen([str(exe)], stdout=subprocess.PIPE, text=True, bufsize=1)
        super().__init__(proc, str.split)

    def wait_count(self, word: str, count: int) -> list[list[str]]:
        def enough(lines: list[list[str]]) -> list[list[str]] | None:
            found = [line for line in lines if line and line[0] == word]
            return found if len(found) >= count else None

        def short(lines: list[list[str]]) -> str:
            seen = sum(1 for line in lines if line and line[0] == word)
            return f"workers: {seen}/{count} {word} lines"

        return self.wait(enough, TIMEOUT_S, short)

    def close(self) -> None:
        self.proc.kill()  # the workers die with it (PR_SET_PDEATHSIG)
        self.proc.wait()


def run_once(relive: str, exe: Path, src: Path) -> dict[str, float]:
    """One fresh program, ``reload --all`` once; the run's figures."""
    program = _Program(exe)
    try:
        program.wait_count("WORKER", WORKERS)
        started = time.monotonic()
        done = subprocess.run(
            [relive, "--json", "reload", "--all", "-p", str(program.proc.pid), str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        wall_ms = (time.monotonic() - started) * 1e3
        if done.returncode != 0:
            raise RuntimeError(f"reload --all failed ({done.returncode}):\n{done.stdout}")
        seen = program.wait_count("NEW", WORKERS)
    finally:
        program.close()
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    times = [int(line[3]) / 1e6 for line in seen]
    figures = {
        "seen_spread_ms": max(times) - min(times),
        "compiles": float(sum(e["kind"] == "compiled" for e in events)),
        "wall_ms": wall_ms,
    }
    for event in events:
        if event["kind"] == "switched":
            figures["switch_spread_ms"] = event["spread_ms"]
    return figures


def report_rows(summary: dict[str, Any]) -> list[tuple[str, float | None, float, str]]:
    """(label, median, goal, unit) rows for the targets table."""
    med = functools.partial(median, summary)
    return [
        ("--all, 8 workers: first-to-last entry write", med("switch_spread_ms"), 20.0, "ms"),
        (
            "--all, 8 workers: first-to-last new result seen",
            med("seen_spread_ms"),
            20.0,
            "ms",
        ),
        ("--all, 8 workers: compiles per reload", med("compiles"), 1.0, ""),
    ]


def print_table(summary: dict[str, Any], runs: int) -> None:
    """The figures of the workers scenario."""
    print(f"\nworkers: reload --all of {WORKERS} forked workers and their parent ({runs} runs)")
    for key, label in (
        ("switch_spread_ms", "first to last entry write (ms)"),
        ("seen_spread_ms", "first to last new result seen (ms)"),
        ("compiles", "compiles"),
        ("wall_ms", "command wall time (ms)"),
    ):
        row = summary.get(key)
        if row is None:
            print(f"  {label:40} {'-':>10}")
            continue
        print(f"  {label:40} {row['median']:>10.1f}  ({row['min']:.1f} .. {row['max']:.1f})")

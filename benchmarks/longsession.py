"""The long-session scenarios of ``make bench`` (issue 13 §3): what many reloads add
to the target's memory map.

* ``long``: 1,000 reloads of a one-function file (two prebuilt objects, copied
  in turn to one path, so each reload redirects ``value()``);
* ``redis10``: 10 reloads of redis's ``server.c`` (``pingCommand`` edited, two
  objects built once with the file's own compile command) into a running
  redis-server from the real-program cache (``tests/realworld``; skipped
  when it is not built).

The reloads run in one Python process that imports relive (``relive.attach``):
a thousand CLI start-ups would measure Python, not the target.  Reported, from
the target's /proc/PID/maps and smaps, before the first reload and after the
last:

* ``added_mappings``: lines of /proc/PID/maps added;
* ``added_rss_kb`` (the goal's "memory"): resident memory of the anonymous
  mappings that were not there before (relive's arenas, or its blocks), in KiB;
  pages a mapping reserves but nobody touched do not count;
* ``added_mapped_kb``: the size of those mappings (reserved address space);
* ``rss_delta_kb``: the whole process's resident memory after minus before
  (includes what the program itself allocated meanwhile).

Run directly (``python benchmarks/longsession.py --scenario long``) it prints
the figures as JSON; with ``PYTHONPATH`` set to another checkout's ``src`` it
measures that version of relive (how the "before" figures were taken).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LONG = "long"
REDIS = "redis10"
LONG_RELOADS = 1000
REDIS_RELOADS = 10
#: Goals of issue 13 §3.
GOALS = {LONG: (4, 1024.0), REDIS: (6, None)}

PROGRAM = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((noipa)) int value(void) { return VERSION; }
int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int last = 0;
    for (;;) {
        int v = value();
        if (v != last) { printf("NEW %d\n", v); last = v; }
        usleep(1000);
    }
}
"""

REDIS_CACHE = Path(
    os.environ.get(
        "RELIVE_REALWORLD_CACHE",
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "relive" / "realworld",
    )
)


def _maps(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/maps").read_text().splitlines()


def _smaps(pid: int) -> dict[tuple[int, int], dict[str, int]]:
    """Per mapping ``(start, end)``: its smaps fields in kB, and whether it is anonymous."""
    found: dict[tuple[int, int], dict[str, int]] = {}
    current: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            start, end = (int(x, 16) for x in head[0].split("-"))
            current = {"anonymous": int(len(head) < 6 and head[4] == "0")}
            found[(start, end)] = current
        elif head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
            current[head[0][:-1]] = int(head[1])
    return found


def snapshot(pid: int) -> dict[str, Any]:
    """What the figures are computed from."""
    return {"maps": _maps(pid), "smaps": _smaps(pid)}


def added(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """The figures: mappings added, and memory of the anonymous mappings that are new."""
    new = {k: v for k, v in after["smaps"].items() if k not in before["smaps"] and v["anonymous"]}
    return {
        "added_mappings": len(after["maps"]) - len(before["maps"]),
        "added_rss_kb": sum(v.get("Rss", 0) for v in new.values()),
        "added_pss_kb": sum(v.get("Pss", 0) for v in new.values()),
        "added_mapped_kb": sum((end - start) // 1024 for start, end in new),
        "rss_delta_kb": sum(v.get("Rss", 0) for v in after["smaps"].values())
        - sum(v.get("Rss", 0) for v in before["smaps"].values()),
    }


def reload_objects(pid: int, objects: Sequence[Path], at: Path, count: int) -> dict[str, float]:
    """Reload ``objects`` in turn (copied to ``at``) ``count`` times; the figures."""
    import relive

    session = relive.attach(pid)
    before = snapshot(pid)
    started = time.monotonic()
    stopped = []
    for k in range(count):
        shutil.copyfile(objects[k % len(objects)], at)
        result = session.reload([at])
        if not result.redirected:
            raise SystemExit(f"reload {k + 1} redirected nothing")
        stopped.append(result.stopped_us)
    seconds = time.monotonic() - started
    figures = added(before, snapshot(pid))
    figures["reloads"] = count
    figures["seconds_per_reload"] = seconds / count
    figures["stopped_us_median"] = statistics.median(stopped)
    return figures


def _child(
    python: str, env: dict[str, str], pid: int, objects: Sequence[Path], at: Path, count: int
) -> dict[str, float]:
    """Run :func:`reload_objects` in a child Python (relive as ``env`` finds it)."""
    done = subprocess.run(
        [
            python,
            __file__,
            "--child",
            str(pid),
            str(at),
            str(count),
            *map(str, objects),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"reloads failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.splitlines()[-1])
    return result


def _wait_line(proc: subprocess.Popen[str], text: str, timeout: float = 30.0) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.strip() == text:
            return
        if time.monotonic() > deadline:
            break
    raise RuntimeError(f"the program never printed {text!r}")


def run_long(
    root: Path, python: str, env: dict[str, str], count: int = LONG_RELOADS
) -> dict[str, float]:
    """1,000 reloads of ``value()`` alternating between two prebuilt objects."""
    folder = root / "long"
    folder.mkdir(parents=True, exist_ok=True)
    src = folder / "one.c"
    for version in (1, 2, 3):
        src.write_text(PROGRAM.replace("VERSION", str(version)))
        if version == 1:
            subprocess.run(["gcc", "-g", "-O2", "-o", "one", "one.c"], cwd=folder, check=True)
        else:
            subprocess.run(
                ["gcc", "-g", "-O2", "-c", "-o", f"v{version}.o", "one.c"], cwd=folder, check=True
            )
    proc = subprocess.Popen([str(folder / "one")], stdout=subprocess.PIPE, text=True)
    try:
        _wait_line(proc, "NEW 1")
        objects = [folder / "v2.o", folder / "v3.o"]
        figures = _child(python, env, proc.pid, objects, folder / "value.o", count)
        _wait_line(proc, f"NEW {3 if count % 2 == 0 else 2}")
        figures["alive"] = float(proc.poll() is None)
        return figures
    finally:
        proc.kill()
        proc.wait()


def find_redis() -> Path | None:
    """The redis source tree the real-program tests built, or None."""
    for tree in sorted(REDIS_CACHE.glob("redis_*/redis-*")):
        if (tree / "src/redis-server").exists() and (tree / "compile_commands.json").exists():
            return tree
    return None


def _redis_objects(tree: Path, folder: Path) -> list[Path]:
    """server.c with two edits of pingCommand's reply, built with its own command."""
    entries = json.loads((tree / "compile_commands.json").read_text())
    entry = next(e for e in entries if e["file"].endswith("/server.c"))
    text = (tree / "src/server.c").read_text()
    objects = []
    for reply in ("PONG-A", "PONG-B"):
        copy = folder / f"server-{reply}.c"
        copy.write_text(text.replace("addReply(c,shared.pong);", f'addReplyStatus(c,"{reply}");'))
        args = list(entry["arguments"])
        at = args.index("-o")
        output = folder / f"server-{reply}.o"
        args[at + 1] = str(output)
        args[-1] = str(copy)
        args.insert(1, f"-I{tree / 'src'}")
        subprocess.run(args, cwd=entry["directory"], check=True, capture_output=True)
        objects.append(output)
    return objects


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_redis(
    root: Path, python: str, env: dict[str, str], count: int = REDIS_RELOADS
) -> dict[str, float] | None:
    """10 reloads of server.c into a running redis-server (None: redis is not built)."""
    tree = find_redis()
    if tree is None:
        return None
    folder = root / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    objects = _redis_objects(tree, folder)
    port = _free_port()
    proc = subprocess.Popen(
        [
            str(tree / "src/redis-server"),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--io-threads",
            "4",
        ],
        stdout=subprocess.DEVNULL,
        cwd=folder,
    )
    try:
        cli = [str(tree / "src/redis-cli"), "-h", "127.0.0.1", "-p", str(port), "PING"]
        deadline = time.monotonic() + 30
        while (
            subprocess.run(cli, capture_output=True, text=True, check=False).stdout.strip()
            != "PONG"
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not answer")
            time.sleep(0.1)
        figures = _child(python, env, proc.pid, objects, folder / "server.o", count)
        reply = subprocess.run(cli, capture_output=True, text=True, check=False).stdout.strip()
        figures["reply_ok"] = float(reply == ("PONG-B" if count % 2 == 0 else "PONG-A"))
        return figures
    finally:
        proc.kill()
        proc.wait()


def report_rows(results: dict[str, Any]) -> list[tuple[str, float | None, float, str]]:
    """(label, value, goal, unit) rows for the targets table."""
    rows: list[tuple[str, float | None, float, str]] = []
    long = results.get(LONG)
    if long is not None:
        rows.append(
            (
                f"{LONG_RELOADS} reloads of one function: added mappings",
                long["added_mappings"],
                4,
                "",
            )
        )
        rows.append(
            (
                f"{LONG_RELOADS} reloads of one function: added memory (Rss)",
                long["added_rss_kb"] / 1024,
                1.0,
                "MB",
            )
        )
    redis = results.get(REDIS)
    if redis is not None:
        rows.append(
            (
                f"{REDIS_RELOADS} reloads of redis server.c: added mappings",
                redis["added_mappings"],
                6,
                "",
            )
        )
    return rows


def print_table(results: dict[str, Any]) -> None:
    """The figures of the long-session scenarios."""
    for name, label in (
        (LONG, f"{LONG_RELOADS} reloads of a one-function file"),
        (REDIS, f"{REDIS_RELOADS} reloads of redis server.c"),
    ):
        figures = results.get(name)
        print(f"\n{name}: {label}")
        if figures is None:
            print("  not run (redis is not built: see tests/realworld)")
            continue
        for key, what in (
            ("added_mappings", "mappings added"),
            ("added_rss_kb", "resident memory of added mappings (KiB)"),
            ("added_mapped_kb", "size of added mappings (KiB)"),
            ("rss_delta_kb", "process resident memory, after - before (KiB)"),
            ("seconds_per_reload", "seconds per reload (in-process)"),
            ("stopped_us_median", "threads stopped per reload, median (us)"),
        ):
            print(
                f"  {what:48} {figures[key]:>10.3f}"
                if isinstance(figures[key], float)
                else f"  {what:48} {figures[key]:>10}"
            )


def run_all(root: Path, names: Sequence[str], python: str | None = None) -> dict[str, Any]:
    """The chosen scenarios, measured with the relive ``python`` imports."""
    python = python or sys.executable
    env = dict(os.environ)
    results: dict[str, Any] = {}
    if LONG in names:
        results[LONG] = run_long(root, python, env)
    if REDIS in names:
        results[REDIS] = run_redis(root, python, env)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--scenario", action="append", choices=[LONG, REDIS])
    args = parser.parse_args(argv)
    if args.child:
        pid, at, count, *objects = args.child
        figures = reload_objects(int(pid), [Path(o) for o in objects], Path(at), int(count))
        print(json.dumps(figures))
        return 0
    with tempfile.TemporaryDirectory(prefix="relive-long-") as scratch:
        results = run_all(Path(scratch), args.scenario or [LONG, REDIS])
    print_table(results)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

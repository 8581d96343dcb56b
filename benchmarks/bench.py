"""relive's benchmark: how long a reload takes, and what the running program notices.

    make bench                                   # or: .venv/bin/python benchmarks/bench.py
    .venv/bin/python benchmarks/bench.py --runs 9 --scenarios one.o,many.o
    .venv/bin/python benchmarks/bench.py --compare results/A.json results/B.json

Builds its C targets at run time (see ``targets.py``), then for every scenario and
run starts a fresh target process and reloads it twice over: once with the minimal
ptrace floor (``floor.py``: seize + interrupt every thread, write the jumps through
/proc/PID/mem, detach) and once with ``relive reload``.  Every figure is shown as
the median and range over the runs, next to the floor's median and the ratio to it.

What is measured, and how:

* stall: the longest gap between two calls of the reloaded function, as the
  target's worker thread measures it itself (CLOCK_MONOTONIC), over the window from
  just before the command starts until it has exited; ``idle gap`` is the same
  measurement over an equally long window without any reload: the machine's noise.
  With ``--rt`` the target runs under SCHED_FIFO, so that other programs do not
  preempt it; windows over 0.95 s then include the kernel's RT throttling (50 ms).
* command -> new code: from ``time.monotonic()`` just before spawning the command
  to the CLOCK_MONOTONIC time the target saw the new code's first result (both are
  CLOCK_MONOTONIC on Linux).
* start-up: what is left of "command -> new code" outside relive's own phases:
  starting Python, imports, argument parsing (for 3,000 functions it is slightly
  low: the patch phase also reports each function after the jumps are in); for the
  floor, from spawning it to its first line of code after imports.
* attach, compile, link, patch: relive's own phases (``--timings``).
* threads stopped: relive's ``stopped_us`` (the stop that writes the entry jumps); the
  floor's seize-to-detach time.
* exit: from the new code running to the command's exit.
* command CPU time: of the command and its children (gcc); for a served command,
  the client's and that of the server's child that did the work (``relive server
  status`` before and after: ``children_cpu_s``).

``relive`` runs through its command server (``relive/cli/server.py``: a warm process
forks a child per command) as a user's command does: the warm-up run starts it, in
a private state directory.  ``one.o`` and ``one.c`` are also measured in-process
(``RELIVE_SERVER=0``: the command imports relive itself), as ``one.o in-process`` and
``one.c in-process``.

Results go to ``benchmarks/results/<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

import figures as figures_of  # noqa: E402  (sibling modules, found through sys.path)
import hugeunit  # noqa: E402
import longsession  # noqa: E402
import targets  # noqa: E402
import workers  # noqa: E402

NEW_CODE_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Scenario:
    """One row group of the table."""

    name: str
    target: str  # key into the built targets
    use_object: bool  # reload the prebuilt .o instead of the .c
    what: str
    #: Run relive without its command server (RELIVE_SERVER=0).
    in_process: bool = False


#: Suffix of a scenario's in-process twin (chosen with it).
IN_PROCESS = " in-process"

SCENARIOS = [
    Scenario("one.c", "one", False, "1 function from .c (gcc included), through the server"),
    Scenario(
        "one.c" + IN_PROCESS, "one", False, "1 function from .c (gcc included), in-process", True
    ),
    Scenario("one.o", "one", True, "1 function from a prebuilt .o, through the server"),
    Scenario("one.o" + IN_PROCESS, "one", True, "1 function from a prebuilt .o, in-process", True),
    Scenario("many.o", "many", True, "3,000 changed functions from a prebuilt .o"),
    Scenario("big.c", "big", False, "1 function from .c, 100,000-symbol executable"),
    Scenario("big.o", "big", True, "1 function from .o, 100,000-symbol executable"),
]

#: (metric, label, floor counterpart or None: compared with the floor's latency).
METRICS: list[tuple[str, str, str | None]] = [
    ("stall_ms", "stall (target-measured)", "stall_ms"),
    ("idle_gap_ms", "idle gap (machine noise)", "idle_gap_ms"),
    ("latency_ms", "command -> new code", "latency_ms"),
    ("startup_ms", "  start-up, imports (rest)", "startup_ms"),
    ("attach_ms", "  attach", None),
    ("compile_ms", "  compile", None),
    ("link_ms", "  parse + link", None),
    ("patch_ms", "  patch (mmap, write, stop)", None),
    ("phases_ms", "  all four phases", None),
    ("stopped_ms", "  threads stopped (entry stop)", "stopped_ms"),
    ("exit_ms", "exit after new code", "exit_ms"),
    ("wall_ms", "command wall time", "wall_ms"),
    ("cpu_ms", "command CPU time (+ gcc)", "cpu_ms"),
]


# -- the target process ---------------------------------------------------------------


class Meter:
    """A running stall meter: send commands, read timestamped output lines."""

    #: Run targets with SCHED_FIFO (``--rt``): then no other program on the machine
    #: preempts the worker, and the gaps it measures are the ones relive causes.
    realtime = False

    def __init__(self, exe: Path) -> None:
        argv = [str(exe)]
        if self.realtime:
            argv = ["chrt", "--fifo", "1", *argv]
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.lines: list[str] = []
        self._seen = 0
        self._cond = threading.Condition()
        threading.Thread(target=self._pump, daemon=True).start()
        ready = self.wait_for("READY").split()
        self.pid = int(ready[1])
        self.compute = int(ready[2].partition("=")[2], 16)
        self.floor_target = int(ready[3].partition("=")[2], 16)
        self.park()

    def park(self) -> None:
        """Under SCHED_FIFO, rest the worker between windows (see stall_meter.c)."""
        if self.realtime:
            self.send("park", "PARKED")

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_for(self, prefix: str, timeout: float = NEW_CODE_TIMEOUT_S) -> str:
        """The next unseen line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                while self._seen < len(self.lines):
                    line = self.lines[self._seen]
                    self._seen += 1
                    if line.startswith(prefix):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"target: no {prefix!r} line; output: {self.lines[-5:]}")
                self._cond.wait(left)

    def send(self, command: str, reply: str) -> str:
        """Send one command line and wait for its reply line."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.wait_for(reply)

    def report(self) -> dict[str, int]:
        """The current window's figures."""
        line = self.send("report", "REPORT")
        return {k: int(v) for k, _, v in (f.partition("=") for f in line.split()[1:])}

    def close(self) -> None:
        """Stop the target."""
        self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


# -- one measurement --------------------------------------------------------------------


def _child_env(in_process: bool = False) -> dict[str, str]:
    # A user's Python writes bytecode caches; measure that, not a cache-less start-up.
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["RELIVE_SERVER"] = "0" if in_process else "1"
    return env


def _measure(
    meter: Meter, argv: Sequence[str], in_process: bool = False
) -> tuple[dict[str, float], str]:
    """Run ``argv`` against the meter; the common figures and the command's stdout."""
    meter.send("reset", "RESET")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    env = _child_env(in_process)
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    ended = time.monotonic()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    new = meter.wait_for("NEW")
    report = meter.report()
    meter.park()
    new_at = int(new.split()[2]) / 1e9
    if meter.realtime:
        time.sleep(0.2)  # a new SCHED_FIFO budget period
    meter.send("reset", "RESET")
    time.sleep(ended - started)
    idle = meter.report()
    meter.park()
    figures = {
        "stall_ms": report["max_gap_ns"] / 1e6,
        "idle_gap_ms": idle["max_gap_ns"] / 1e6,
        "latency_ms": (new_at - started) * 1e3,
        "exit_ms": (ended - new_at) * 1e3,
        "wall_ms": (ended - started) * 1e3,
        # CPU time of the command and its children (gcc): steadier than wall time
        # on a busy machine.
        "cpu_ms": (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1e3,
        "_t0": started,
    }
    return figures, proc.stdout


def _jump(source: int, target: int) -> str:
    return "e9" + ((target - source - 5) & 0xFFFFFFFF).to_bytes(4, "little").hex()


def run_floor(target: targets.Target) -> dict[str, float]:
    """One floor reload on a fresh target process."""
    meter = Meter(target.exe)
    try:
        time.sleep(0.05)  # let the worker settle into its loop
        bias = meter.compute - target.symbols["compute"]
        writes = [f"{meter.compute:#x}={_jump(meter.compute, meter.floor_target)}"]
        writes += [f"{target.symbols[n] + bias:#x}" for n in target.changed if n != "compute"]
        argv = [sys.executable, str(HERE / "floor.py"), str(meter.pid), *writes]
        figures, out = _measure(meter, argv)
    finally:
        meter.close()
    line = json.loads(out.splitlines()[-1])
    figures["startup_ms"] = (line["started"] - figures.pop("_t0")) * 1e3
    figures["stopped_ms"] = line["stopped_s"] * 1e3
    return figures


def run_relive(
    relive: str, target: targets.Target, use_object: bool, in_process: bool = False
) -> dict[str, float]:
    """One ``relive reload`` on a fresh target process."""
    meter = Meter(target.exe)
    try:
        time.sleep(0.05)
        path = target.prebuilt if use_object else target.source
        argv = [relive, "--json", "reload", "--timings", "-p", str(meter.pid), str(path)]
        before = None if in_process else _server(relive, "status")
        figures, out = _measure(meter, argv, in_process)
        if before is not None:
            after = _server(relive, "status")
            while after.get("running"):  # the server reaps its child just after the exit
                after = _server(relive, "status")
            if after.get("pid") and after.get("pid") == before.get("pid"):
                served_s = after.get("children_cpu_s", 0.0) - before.get("children_cpu_s", 0.0)
                figures["cpu_ms"] += served_s * 1e3
            else:  # another server (or none) ran it: its CPU time is not known
                del figures["cpu_ms"]
    finally:
        meter.close()
    figures.pop("_t0")
    report = figures_of.read_reload(out)
    figures.update({f"{phase}_ms": ms for phase, ms in report.phases_ms.items()})
    if report.stopped_ms is not None:
        figures["stopped_ms"] = report.stopped_ms
    if report.redirected is not None:
        figures["redirected"] = report.redirected
    if figures.get("redirected") != len(target.changed):
        raise RuntimeError(f"expected {len(target.changed)} redirected functions: {out[-2000:]}")
    phases = sum(figures.get(f"{p}_ms", 0.0) for p in ("attach", "compile", "link", "patch"))
    figures["phases_ms"] = phases
    figures["startup_ms"] = max(0.0, figures["latency_ms"] - phases)
    return figures


# -- statistics and tables ----------------------------------------------------------------


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, min and max of every metric over the runs."""
    keys = sorted({k for run in runs for k in run})
    out: dict[str, dict[str, float]] = {}
    for key in keys:
        values = [run[key] for run in runs if key in run]
        out[key] = {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
            "n": len(values),
        }
    return out


def _ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def print_scenario(name: str, what: str, result: dict[str, Any], out: IO[str]) -> None:
    """The table of one scenario."""
    summary, floor = result["summary"], result["floor_summary"]
    runs = len(result["runs"])
    print(f"\n{name}: {what}  ({runs} runs; ms)", file=out)
    header = f"  {'':30} {'median':>8} {'range':>17} {'floor':>8} {'x floor':>8}"
    print(header, file=out)
    floor_latency = floor.get("latency_ms", {}).get("median")
    for key, label, counterpart in METRICS:
        if key not in summary:
            continue
        s = summary[key]
        span = f"{_ms(s['min'])}-{_ms(s['max'])}"
        ref = floor.get(counterpart, {}).get("median") if counterpart else floor_latency
        ref_text = _ms(ref) if counterpart and ref is not None else ""
        ratio = f"{s['median'] / ref:.1f}x" if ref else ""
        if not counterpart and ratio:
            ratio += "*"
        print(f"  {label:30} {_ms(s['median']):>8} {span:>17} {ref_text:>8} {ratio:>8}", file=out)


def targets_report(scenarios: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, measured (they are goals, not pass/fail tests)."""

    def med(name: str, key: str) -> float | None:
        value = scenarios.get(name, {}).get("summary", {}).get(key, {}).get("median")
        return None if value is None else float(value)

    def delta(a: str, b: str, key: str = "latency_ms") -> float | None:
        x, y = med(a, key), med(b, key)
        return None if x is None or y is None else x - y

    def to_floor(name: str) -> float | None:
        value = med(name, "latency_ms")
        floor = scenarios.get(name, {}).get("floor_summary", {}).get("latency_ms", {})
        return None if value is None or not floor.get("median") else value / floor["median"]

    rows = [
        ("stall, 1 function (one.o)", med("one.o", "stall_ms"), 1.0),
        ("stall, 1 function (one.c)", med("one.c", "stall_ms"), 1.0),
        ("stall, 3,000 functions (many.o)", med("many.o", "stall_ms"), 20.0),
        ("command -> new code, small .c (one.c)", med("one.c", "latency_ms"), 100.0),
        ("command -> new code, prebuilt .o (one.o)", med("one.o", "latency_ms"), 60.0),
        ("3,000-function reload, compile excluded (many.o)", med("many.o", "latency_ms"), 1000.0),
        ("100k symbols add, .o (big.o - one.o)", delta("big.o", "one.o"), 20.0),
        ("100k symbols add, .c (big.c - one.c)", delta("big.c", "one.c"), 20.0),
        (
            "  the same in relive's own phases, .o",
            delta("big.o", "one.o", "phases_ms"),
            20.0,
        ),
        (
            "  the same in relive's own phases, .c",
            delta("big.c", "one.c", "phases_ms"),
            20.0,
        ),
    ]
    ratios = [
        (f"command -> new code / floor ({name})", to_floor(name), 2.5)
        for name in ("one.o", "one.o" + IN_PROCESS, "one.c", "one.c" + IN_PROCESS)
    ]
    return [
        {"target": label, "value": value, "goal": goal, "unit": "ms"}
        for label, value, goal in rows
        if value is not None
    ] + [
        {"target": label, "value": value, "goal": goal, "unit": "x"}
        for label, value, goal in ratios
        if value is not None
    ]


def _server(relive: str, action: str) -> dict[str, Any]:
    """``relive server status`` (or ``stop``) as JSON."""
    done = subprocess.run(
        [relive, "--json", "server", action], capture_output=True, text=True, check=False
    )
    try:
        answer: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    except (IndexError, ValueError):
        return {"pid": 0}
    return answer


def wait_for_server(relive: str, timeout: float = 60.0) -> dict[str, Any]:
    """The command server's state once it listens (the warm-up run started it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _server(relive, "status")
        if state.get("pid") and state.get("current"):
            return state
        time.sleep(0.1)
    raise RuntimeError("the command server did not start (see relive server status)")


def print_targets(rows: list[dict[str, Any]], out: IO[str]) -> None:
    """The targets table."""
    print("\ntargets (medians; goals, not pass/fail):", file=out)
    for row in rows:
        met = "met" if row["value"] <= row["goal"] else "MISSED"
        unit = row["unit"]
        print(
            f"  {row['target']:50} {_ms(row['value']):>8} {unit}  <= {row['goal']:g} {unit}  {met}",
            file=out,
        )


def compare(a_path: Path, b_path: Path, out: IO[str]) -> None:
    """Medians of two result files side by side."""
    a, b = (json.loads(p.read_text()) for p in (a_path, b_path))
    print(f"A: {a_path} ({a['meta'].get('started')}, {a['meta'].get('git')})", file=out)
    print(f"B: {b_path} ({b['meta'].get('started')}, {b['meta'].get('git')})", file=out)
    for name in [s for s in a["scenarios"] if s in b["scenarios"]]:
        print(f"\n{name}", file=out)
        print(f"  {'':30} {'A':>8} {'B':>8} {'B/A':>7}  {'A floor':>8} {'B floor':>8}", file=out)
        sa, sb = a["scenarios"][name], b["scenarios"][name]
        for key, label, counterpart in METRICS:
            if key not in sa["summary"] or key not in sb["summary"]:
                continue
            ma, mb = sa["summary"][key]["median"], sb["summary"][key]["median"]
            fa = sa["floor_summary"].get(counterpart or "", {}).get("median")
            fb = sb["floor_summary"].get(counterpart or "", {}).get("median")
            ratio = f"{mb / ma:.2f}" if ma else ""
            print(
                f"  {label:30} {_ms(ma):>8} {_ms(mb):>8} {ratio:>7}  "
                f"{_ms(fa) if fa is not None else '':>8} {_ms(fb) if fb is not None else '':>8}",
                file=out,
            )
    print("\ntargets", file=out)
    for ra in a.get("targets", []):
        rb = next((r for r in b.get("targets", []) if r["target"] == ra["target"]), None)
        if rb is not None:
            # Older result files have value_ms/goal_ms (every row was a time).
            va, vb = ra.get("value", ra.get("value_ms")), rb.get("value", rb.get("value_ms"))
            unit, goal = ra.get("unit", "ms"), ra.get("goal", ra.get("goal_ms"))
            print(
                f"  {ra['target']:50} {_ms(va):>8} -> {_ms(vb):>8} {unit}  (goal {goal:g})",
                file=out,
            )


# -- driver ---------------------------------------------------------------------------------


def _meta(relive: str, runs: int) -> dict[str, Any]:
    def output(argv: list[str]) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, check=False).stdout.strip()
        except OSError:
            return ""

    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "git": output(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(output(["git", "-C", str(REPO), "status", "--porcelain", "src"])),
        "python": platform.python_version(),
        "gcc": output(["gcc", "-dumpfullversion"]),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_before": os.getloadavg(),
        "relive": relive,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "runs": runs,
    }


BUILDERS: dict[str, Callable[[Path], targets.Target]] = {
    "one": targets.build_one,
    "many": targets.build_many,
    "big": targets.build_big,
}


def build_all(root: Path, names: set[str], log: Callable[[str], None]) -> dict[str, targets.Target]:
    """Build the targets the chosen scenarios need."""
    built: dict[str, targets.Target] = {}
    for name in ("one", "many", "big"):
        if name in names:
            started = time.monotonic()
            built[name] = BUILDERS[name](root)
            log(f"built {name} in {time.monotonic() - started:.1f} s")
    return built


HUGE = "huge.o"
WORKERS = "workers"
LONG_SESSION = (longsession.LONG, longsession.REDIS)


def run_workers(
    args: argparse.Namespace, scratch: Path, log: Callable[[str], None]
) -> dict[str, Any]:
    """``reload --all`` of 8 forked workers (see ``workers.py``), ``--runs`` times."""
    exe, src = workers.build(scratch)
    runs = []
    for run in range(args.runs):
        log(f"{WORKERS} run {run + 1}/{args.runs}")
        runs.append(workers.run_once(args.relive, exe, src))
    return {"runs": runs, "summary": summarise(runs)}


def run_huge(args: argparse.Namespace, scratch: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The sqlite3-sized unit (see ``hugeunit.py``): build it, reload it ``--runs`` times."""
    started = time.monotonic()
    huge = targets.build_huge(scratch, args.huge_functions)
    log(f"built {HUGE} ({huge.lines:,} lines) in {time.monotonic() - started:.1f} s")
    runs = []
    for run in range(args.runs):
        log(f"{HUGE} run {run + 1}/{args.runs}")
        folder = scratch / f"huge-run-{run}"
        folder.mkdir()
        runs.append(hugeunit.run_once(args.relive, huge, Meter, folder))
    return {
        "lines": huge.lines,
        "functions": args.huge_functions,
        "runs": runs,
        "summary": summarise(runs),
    }


def extra_goals(
    huge: dict[str, Any] | None, forked: dict[str, Any] | None, sessions: dict[str, Any]
) -> list[dict[str, Any]]:
    """The targets rows of the scenarios without a floor counterpart."""
    rows = []
    if huge is not None:
        rows += hugeunit.report_rows(huge["summary"])
    if forked is not None:
        rows += workers.report_rows(forked["summary"])
    rows += longsession.report_rows(sessions)
    return [
        {"target": label, "value": value, "goal": goal, "unit": unit}
        for label, value, goal, unit in rows
        if value is not None
    ]


def run_scenarios(
    args: argparse.Namespace,
    chosen: list[Scenario],
    built: dict[str, targets.Target],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A warm-up run of each scenario (bytecode caches, page cache, the command
    server), then ``--runs`` rounds, each scenario's floor first; and how many runs
    the server served (all those not in-process, else the figures are wrong)."""
    results: dict[str, Any] = {
        s.name: {"what": s.what, "runs": [], "floor_runs": []} for s in chosen
    }
    if not chosen:
        return results, {}
    for scenario in chosen:
        run_relive(args.relive, built[scenario.target], scenario.use_object, scenario.in_process)
    server = wait_for_server(args.relive)
    for run in range(args.runs):
        log(f"run {run + 1}/{args.runs}")
        for scenario in chosen:
            target = built[scenario.target]
            entry = results[scenario.name]
            entry["floor_runs"].append(run_floor(target))
            entry["runs"].append(
                run_relive(args.relive, target, scenario.use_object, scenario.in_process)
            )
    after = _server(args.relive, "status")
    record = {
        "pid": server["pid"],
        "served": after.get("served", 0) - server["served"],
        "expected": args.runs * sum(not s.in_process for s in chosen),
    }
    if after.get("pid") != server["pid"] or record["served"] != record["expected"]:
        log(f"not every run went through one command server: {record}, now {after}")
    return results, record


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or compare two result files)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per scenario (default 5)")
    parser.add_argument(
        "--scenarios",
        default=",".join([*(s.name for s in SCENARIOS), HUGE, WORKERS, *LONG_SESSION]),
        help="comma-separated subset of "
        + ", ".join([*(s.name for s in SCENARIOS), HUGE, WORKERS, *LONG_SESSION]),
    )
    parser.add_argument(
        "--huge-functions",
        type=int,
        default=10_000,
        help=f"functions of the {HUGE} unit (default 10,000: about 250k lines)",
    )
    parser.add_argument(
        "--relive",
        default=str(Path(sys.executable).parent / "relive"),
        help="the relive command (default: the one next to this Python)",
    )
    parser.add_argument(
        "--rt",
        action="store_true",
        help="run the targets with SCHED_FIFO (root): stalls without the machine's noise",
    )
    parser.add_argument("--output", type=Path, help="result file (default results/<time>.json)")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"))
    args = parser.parse_args(argv)
    if args.compare:
        compare(args.compare[0], args.compare[1], sys.stdout)
        return 0

    names = args.scenarios.split(",")
    names += [name + IN_PROCESS for name in names]  # one.o brings one.o in-process
    chosen = [s for s in SCENARIOS if s.name in names]
    with_huge = HUGE in args.scenarios.split(",")
    with_workers = WORKERS in args.scenarios.split(",")
    long_names = [name for name in LONG_SESSION if name in args.scenarios.split(",")]
    if not chosen and not with_huge and not with_workers and not long_names:
        parser.error(f"no known scenario in {args.scenarios!r}")

    def log(text: str) -> None:
        print(f"bench: {text}", file=sys.stderr, flush=True)

    Meter.realtime = args.rt
    meta = _meta(args.relive, args.runs)
    meta["realtime_target"] = args.rt
    with tempfile.TemporaryDirectory(prefix="relive-bench-") as scratch:
        # A private state directory: a private command server, which no other
        # relive's commands (another checkout's code) make exit.
        os.environ["RELIVE_STATE_DIR"] = str(Path(scratch) / "state")
        built = build_all(Path(scratch), {s.target for s in chosen}, log)
        meta["compile_new_version_s"] = {k: t.compile_s for k, t in built.items()}
        results, meta["server"] = run_scenarios(args, chosen, built, log)
        # huge.o measures the command's own CPU time and peak memory (its rusage),
        # which a served command's client does not have: the rest runs in-process.
        os.environ["RELIVE_SERVER"] = "0"
        huge = run_huge(args, Path(scratch), log) if with_huge else None
        forked = run_workers(args, Path(scratch), log) if with_workers else None
        if long_names:
            log(f"long sessions: {', '.join(long_names)}")
        python = Path(args.relive).parent / "python"
        sessions = longsession.run_all(
            Path(scratch), long_names, str(python) if python.exists() else None
        )
        _server(args.relive, "stop")  # before its state directory goes
    for entry in results.values():
        entry["summary"] = summarise(entry["runs"])
        entry["floor_summary"] = summarise(entry["floor_runs"])
    meta["loadavg_after"] = os.getloadavg()
    goals = targets_report(results) + extra_goals(huge, forked, sessions)
    report = {
        "meta": meta,
        "scenarios": results,
        "targets": goals,
        HUGE: huge,
        WORKERS: forked,
        "long_sessions": sessions,
    }

    print(
        f"relive benchmark  {meta['started']}  git {meta['git']}"
        f"{' (modified)' if meta['git_dirty'] else ''}  python {meta['python']}  "
        f"gcc {meta['gcc']}  {meta['cpus']} cpus  load {meta['loadavg_before'][0]:.1f}"
        f"{'  SCHED_FIFO targets' if args.rt else ''}"
    )
    for scenario in chosen:
        print_scenario(scenario.name, scenario.what, results[scenario.name], sys.stdout)
    if chosen:
        print("\n  * ratio to the floor's command -> new code time (no floor counterpart)")
    if huge is not None:
        hugeunit.print_table(huge["summary"], huge["lines"], huge["functions"], args.runs)
    if forked is not None:
        workers.print_table(forked["summary"], args.runs)
    if long_names:
        longsession.print_table(sessions)
    print_targets(goals, sys.stdout)

    output = args.output or RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=1) + "\n")
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

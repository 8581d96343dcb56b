"""`relive watch`: from a save to the new code running, next to the compile it includes.

    .venv/bin/python benchmarks/watch_latency.py [--runs 9] [--json FILE]

Builds the ``one`` target (``targets.py``: the stall meter, ``compute()`` in
``func.c``), starts ``relive --json watch -p PID func.c`` on it and saves ``func.c``
``--runs`` times, alternately in place (truncate and write) and by write-and-rename,
each time with a new return value.  Per save: ``save -> new code`` is from
``time.monotonic()`` just before the save to the CLOCK_MONOTONIC time the target saw
the new value (the same clock); ``compile`` is the compile time watch reports for that
reload; ``overhead`` is the difference: the debounce, relive's own phases and the
rest.  Issue 13's goal: overhead <= 10 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import targets  # noqa: E402
from bench import Meter  # noqa: E402
from reader import LineReader  # noqa: E402

GOAL_OVERHEAD_MS = 10.0


class WatchProcess(LineReader[dict[str, Any]]):
    """``relive --json watch``, its JSON events read in the background."""

    def __init__(self, relive: str, pid: int, source: Path) -> None:
        proc = subprocess.Popen(
            [relive, "--json", "watch", "-p", str(pid), str(source)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        super().__init__(proc, json.loads)
        self._seen = 0

    def next(self, kinds: tuple[str, ...], timeout: float = 20.0) -> dict[str, Any]:
        """The next unseen event of one of ``kinds``."""

        def unseen(events: list[dict[str, Any]]) -> dict[str, Any] | None:
            while self._seen < len(events):
                event = events[self._seen]
                self._seen += 1
                if event["kind"] in kinds:
                    return event
            return None

        return self.wait(
            unseen, timeout, lambda events: f"watch: no {kinds} event; saw {events[-5:]}"
        )

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def save(path: Path, text: str, by_rename: bool) -> None:
    """Save as an editor does: in place, or write a temporary file and rename it over."""
    if by_rename:
        temporary = path.with_name(f".{path.name}.swp")
        temporary.write_text(text)
        os.replace(temporary, path)
    else:
        path.write_text(text)


def measure(relive: str, runs: int) -> dict[str, Any]:
    """Save ``runs`` times; per save the latency, the compile and the rest."""
    with tempfile.TemporaryDirectory(prefix="relive-watch-bench-") as scratch:
        target = targets.build_one(Path(scratch))
        target.source.write_text(targets.func_source(1))  # as built: nothing pending
        meter = Meter(target.exe)
        watch = WatchProcess(relive, meter.pid, target.source)
        samples: list[dict[str, float]] = []
        try:
            watch.next(("watching",))
            for run in range(runs):
                time.sleep(0.3)  # the watcher idle again, as between two edits
                value = 10 + run
                started = time.monotonic()
                save(target.source, targets.func_source(value), by_rename=run % 2 == 1)
                new = meter.wait_for(f"NEW {value} ")
                event = watch.next(("watch-reloaded", "watch-failed"))
                if event["kind"] != "watch-reloaded":
                    raise RuntimeError(f"reload failed: {event}")
                latency = (int(new.split()[2]) / 1e9 - started) * 1e3
                samples.append(
                    {
                        "save_to_new_code_ms": latency,
                        "compile_ms": event["compile_ms"],
                        "overhead_ms": latency - event["compile_ms"],
                        "by_rename": float(run % 2 == 1),
                    }
                )
        finally:
            watch.close()
            meter.close()
    keys = ("save_to_new_code_ms", "compile_ms", "overhead_ms")
    return {
        "samples": samples,
        "median": {key: statistics.median(s[key] for s in samples) for key in keys},
        "min": {key: min(s[key] for s in samples) for key in keys},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--relive", default=str(Path(sys.executable).parent / "relive"))
    parser.add_argument(
        "--json",
        type=Path,
        default=HERE / "results" / f"watch-{time.strftime('%Y%m%d-%H%M%S')}.json",
        help="where to write the figures (default results/watch-<time>.json)",
    )
    args = parser.parse_args()
    result = measure(args.relive, args.runs)
    median, least = result["median"], result["min"]
    print(f"watch, save -> new code ({args.runs} saves; ms)     median      min")
    for key, label in (
        ("save_to_new_code_ms", "save -> new code"),
        ("compile_ms", "compile"),
        ("overhead_ms", "overhead (the rest)"),
    ):
        print(f"  {label:30} {median[key]:8.1f} {least[key]:8.1f}")
    print(f"  goal: overhead <= {GOAL_OVERHEAD_MS:.0f} ms")
    for sample in result["samples"]:
        how = "rename " if sample["by_rename"] else "inplace"
        print(
            f"    {how} {sample['save_to_new_code_ms']:7.1f} = compile "
            f"{sample['compile_ms']:6.1f} + {sample['overhead_ms']:6.1f}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Where does a reload's time go?  One scenario, in-process, under cProfile.

    .venv/bin/python benchmarks/profile_reload.py one.c       # or one.o, many.o, big.c, big.o
    .venv/bin/python benchmarks/profile_reload.py big.o --sort tottime --limit 40

Builds the scenario's target (as ``bench.py`` does), starts it, and runs
``relive.cli.main.main(["reload", ...])`` inside this process, profiled.  Imports
are timed separately (first line of output), since ``python -X importtime`` is the
better tool for them.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402


def main() -> int:
    """Profile one reload."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=[s.name for s in bench.SCENARIOS])
    parser.add_argument("--sort", default="cumulative", help="pstats sort key")
    parser.add_argument("--limit", type=int, default=30, help="rows to print")
    args = parser.parse_args()
    scenario = next(s for s in bench.SCENARIOS if s.name == args.scenario)
    with tempfile.TemporaryDirectory(prefix="relive-profile-") as scratch:
        target = bench.BUILDERS[scenario.target](Path(scratch))
        meter = bench.Meter(target.exe)
        try:
            started = time.perf_counter()
            from relive.cli.main import main as relive_main

            print(f"import relive.cli.main: {(time.perf_counter() - started) * 1e3:.1f} ms")
            path = target.prebuilt if scenario.use_object else target.source
            argv = ["reload", "-p", str(meter.pid), str(path)]
            profile = cProfile.Profile()
            started = time.perf_counter()
            with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
                profile.enable()
                code = relive_main(argv)
                profile.disable()
            print(f"reload: exit code {code}, {(time.perf_counter() - started) * 1e3:.1f} ms")
            meter.wait_for("NEW")
        finally:
            meter.close()
    pstats.Stats(profile).sort_stats(args.sort).print_stats(args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())

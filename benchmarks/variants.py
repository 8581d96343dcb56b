"""What would the stall be if the transaction used the faster ``relive.process`` paths?

    .venv/bin/python benchmarks/variants.py              # one.o and many.o, 5 runs each
    .venv/bin/python benchmarks/variants.py --runs 9 --scenarios many.o --rt

Runs reloads in this process (``relive.attach(pid).reload``), each on a fresh
target, under these variants of the reload transaction (``relive.patch.transaction``,
``relive.patch.block``, ``relive.patch.jumps``) (patched here, for the
measurement only):

* ``as is``: the code as it stands;
* ``mmap on one thread``: the block is mapped with ``stop_one`` (one idle thread
  held for the injected mmap) instead of ``stop_all``;
* ``batched entry writes``: ``write_entries`` as proposed (``proposed_write_entries``
  below): /proc/PID/mem opened, entry pages read and the new pages built
  (``prepare_edits``) and the blocker intervals indexed before the stop; inside it,
  one read and one write per page (``PreparedEdits.apply``) instead of one of each
  per entry;
* ``both``.

It prints the stall the target measured and relive's ``stopped_us``, medians and
ranges per variant.  The variants reach into those modules' internals; if those moved,
a variant reports itself unavailable instead of measuring something else.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench  # noqa: E402

import relive  # noqa: E402
from relive.patch import block, jumps, transaction  # noqa: E402
from relive.process import threads  # noqa: E402
from relive.process.memory import ProcessMemory  # noqa: E402

Variant = Callable[[], Any]


def _reach(write: Any) -> tuple[int, int]:
    """[low, high): every pc at which ``write.blocks(pc)`` may be true."""
    low, high = write.address + 1, write.address + len(write.new)
    if hasattr(write, "function"):  # the function's code, when a loop runs into the window
        start, end = write.function
    else:  # older EntryWrite: an explicit guard range
        start, end = write.guard_start, write.guard_end
    if start < end:
        low, high = min(low, start), max(high, end)
    return low, high


def proposed_write_entries(pid: int, writes: list[Any]) -> Any:
    """``jumps.write_entries`` as proposed: everything that can be prepared is
    prepared while the program runs, so that the threads are held for one read
    and one write per page of entries, whatever their number."""
    # While the program runs: /proc/PID/mem open, expected and new page contents
    # read and built, the blocker intervals sorted with a running maximum of ends.
    memory = ProcessMemory(pid, poke_tid=pid)
    try:
        prepared = memory.prepare_edits([(w.address, w.expected, w.new) for w in writes])
        spans = sorted((*_reach(w), k) for k, w in enumerate(writes))
        starts = [lo for lo, _, _ in spans]
        reach = list(itertools.accumulate((hi for _, hi, _ in spans), max))

        def blockers(stopped: threads.StoppedProcess) -> list[tuple[int, str]]:
            found = []
            for tid, pc in stopped.iter_pcs():
                j = bisect.bisect_right(starts, pc) - 1
                while j >= 0 and reach[j] > pc:
                    write = writes[spans[j][2]]
                    if write.blocks(pc):
                        found.append((tid, write.name))
                    j -= 1
            return found

        with threads.stop_all(pid) as stopped:
            for attempt in range(jumps.MAX_ATTEMPTS):
                found = blockers(stopped)
                if not found:
                    break
                if attempt == jumps.MAX_ATTEMPTS - 1:
                    raise RuntimeError(f"thread {found[0][0]} keeps executing {found[0][1]}")
                stopped.resume_briefly(0.0005 * (2**attempt))
            if prepared.apply(memory):
                raise RuntimeError("entry bytes changed under the experiment")
            positions = list(stopped.iter_positions())
        return jumps.EntryReport(stopped.stopped_seconds, positions)
    finally:
        memory.close()


@contextmanager
def _patched(module: Any, **names: Any) -> Iterator[None]:
    saved = {name: getattr(module, name) for name in names}
    for name, value in names.items():
        setattr(module, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


@contextmanager
def _mmap_on_one_thread() -> Iterator[None]:
    original = block.allocate_and_link

    def allocate(*args: Any, **kwargs: Any) -> Any:
        with _patched(block, stop_all=threads.stop_one):
            return original(*args, **kwargs)

    with _patched(transaction, allocate_and_link=allocate):
        yield


@contextmanager
def _batched_entries() -> Iterator[None]:
    with _patched(transaction, write_entries=proposed_write_entries):
        yield


@contextmanager
def _both() -> Iterator[None]:
    with _mmap_on_one_thread(), _batched_entries():
        yield


@contextmanager
def _as_is() -> Iterator[None]:
    yield


VARIANTS: dict[str, Variant] = {
    "as is": _as_is,
    "mmap on one thread": _mmap_on_one_thread,
    "batched entry writes": _batched_entries,
    "both": _both,
}


def _available() -> dict[str, str]:
    """Variant name -> why it cannot run ("" if it can)."""
    missing = {
        "mmap on one thread": [(block, "stop_all"), (transaction, "allocate_and_link")],
        "batched entry writes": [
            (jumps, "EntryReport"),
            (jumps, "MAX_ATTEMPTS"),
            (transaction, "write_entries"),
        ],
    }
    missing["both"] = missing["mmap on one thread"] + missing["batched entry writes"]
    return {
        name: ", ".join(n for m, n in missing.get(name, []) if not hasattr(m, n))
        for name in VARIANTS
    }


def run_once(target: Any, path: Path) -> tuple[float, float]:
    """(stall ms as the target measured it, relive's stopped ms) of one reload."""
    meter = bench.Meter(target.exe)
    try:
        time.sleep(0.05)
        meter.send("reset", "RESET")
        result = relive.attach(meter.pid).reload([path])
        meter.wait_for("NEW")
        report = meter.report()
    finally:
        meter.close()
    if len(result.redirected) != len(target.changed):
        raise RuntimeError(f"redirected {len(result.redirected)} of {len(target.changed)}")
    return report["max_gap_ns"] / 1e6, result.stopped_us / 1e3


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every variant on every scenario."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--scenarios", default="one.o,many.o")
    parser.add_argument("--rt", action="store_true", help="SCHED_FIFO targets (see bench.py)")
    args = parser.parse_args(argv)
    bench.Meter.realtime = args.rt
    unavailable = _available()
    scenarios = [s for s in bench.SCENARIOS if s.name in args.scenarios.split(",")]
    with tempfile.TemporaryDirectory(prefix="relive-variants-") as scratch:
        built = bench.build_all(Path(scratch), {s.target for s in scenarios}, print)
        for scenario in scenarios:
            target = built[scenario.target]
            path = target.prebuilt if scenario.use_object else target.source
            figures: dict[str, list[tuple[float, float]]] = {}
            for _ in range(args.runs):  # interleaved: the machine's noise hits all alike
                for name, variant in VARIANTS.items():
                    if unavailable[name]:
                        continue
                    with variant():
                        figures.setdefault(name, []).append(run_once(target, path))
            print(f"\n{scenario.name}: {scenario.what} ({args.runs} runs; ms)")
            print(f"  {'variant':24} {'stall':>8} {'range':>14} {'held':>8} {'range':>14}")
            for name in VARIANTS:
                if unavailable[name]:
                    print(f"  {name:24} unavailable: no {unavailable[name]}")
                    continue
                stalls = [s for s, _ in figures[name]]
                held = [h for _, h in figures[name]]
                print(
                    f"  {name:24} {statistics.median(stalls):8.2f} "
                    f"{min(stalls):6.2f}-{max(stalls):<7.2f} {statistics.median(held):8.2f} "
                    f"{min(held):6.2f}-{max(held):<7.2f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`make demo`: start demo/counter.c, edit greet() twice, hot-reload it each time.

The source is copied to a scratch folder so the repository is left as it is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RELIVE = [sys.executable, "-m", "relive"]
EDITS = [
    (
        'snprintf(line, sizeof line, "hello #%ld", tick);',
        'snprintf(line, sizeof line, "HOT RELOADED #%ld!", tick);',
    ),
    (
        'snprintf(line, sizeof line, "HOT RELOADED #%ld!", tick);',
        'snprintf(line, sizeof line, "tick %ld squared %ld", tick, tick * tick);',
    ),
]


def say(text: str) -> None:
    print(f"\n\033[1;36m==> {text}\033[0m", flush=True)


def pump(proc: subprocess.Popen[str], seen: list[str], cond: threading.Condition) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        print("    " + line, end="", flush=True)
        with cond:
            seen.append(line)
            cond.notify_all()


def wait_for(text: str, seen: list[str], cond: threading.Condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    with cond:
        start = len(seen)
        while not any(text in line for line in seen[start:]):
            if not cond.wait(max(0.0, deadline - time.monotonic())):
                raise SystemExit(f"demo: timed out waiting for {text!r}")


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="relive-demo-"))
    source = scratch / "counter.c"
    shutil.copy(HERE / "counter.c", source)
    say(f"compiling {source.name} with gcc -g -O1")
    subprocess.run(["gcc", "-g", "-O1", "-o", "counter", "counter.c"], cwd=scratch, check=True)
    proc = subprocess.Popen([str(scratch / "counter")], stdout=subprocess.PIPE, text=True)
    seen: list[str] = []
    cond = threading.Condition()
    threading.Thread(target=pump, args=(proc, seen, cond), daemon=True).start()
    try:
        say(f"running pid {proc.pid}; its state: ticks and total keep growing")
        wait_for("ticks=3 ", seen, cond)
        for number, (old, new) in enumerate(EDITS, 1):
            say(f"edit {number}: greet() now does: {new.strip()}")
            source.write_text(source.read_text().replace(old, new))
            say(f"relive reload -p {proc.pid} counter.c")
            subprocess.run([*RELIVE, "reload", "-p", str(proc.pid), str(source)], check=True)
            marker = new.split('"')[1].split("#")[0].split("%")[0].strip()
            wait_for(marker, seen, cond)
            wait_for(marker, seen, cond)
        say("state survived both reloads (ticks/total never restarted)")
        subprocess.run([*RELIVE, "status", "-p", str(proc.pid)], check=True)
        say(f"relive undo -p {proc.pid}: back to the original code")
        subprocess.run([*RELIVE, "undo", "-p", str(proc.pid)], check=True)
        wait_for("hello #", seen, cond)
        wait_for("hello #", seen, cond)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    say("done")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

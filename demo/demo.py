"""`make demo`: run demo/counter.c under `relive run`, save two edits, watch them go live.

The program is started by ``relive run``, which watches its source file.  The
demo then edits greet() twice, the way an editor saves (first in place, then
write-and-rename); each save is reloaded into the running program while its
counters keep counting.  Then it edits mood(), which gcc inlined into main's
loop: main never returns, so relive moves its running frame into the new code
and the change shows at once.  Finally the program is stopped and relive exits
with it.
The source is copied to a scratch folder so the repository is left as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
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
        "in place",
    ),
    (
        'snprintf(line, sizeof line, "HOT RELOADED #%ld!", tick);',
        'snprintf(line, sizeof line, "tick %ld squared %ld", tick, tick * tick);',
        "by write-and-rename, as many editors do",
    ),
]


def say(text: str) -> None:
    print(f"\n\033[1;36m==> {text}\033[0m", flush=True)


class Output:
    """The merged output of `relive run` (relive's lines and the program's), line by line."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.read = 0
        threading.Thread(target=self._pump, args=(proc,), daemon=True).start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            print("    " + line, end="", flush=True)
            with self.cond:
                self.lines.append(line)
                self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 15) -> re.Match[str]:
        """The next line (after the last one matched) matching ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                while self.read < len(self.lines):
                    self.read += 1
                    match = regex.search(self.lines[self.read - 1])
                    if match:
                        return match
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    raise SystemExit(f"demo: timed out waiting for {pattern!r}")


def save(path: Path, text: str, in_place: bool) -> None:
    if in_place:
        path.write_text(text)
    else:
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text)
        os.replace(temporary, path)


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="relive-demo-"))
    source = scratch / "counter.c"
    shutil.copy(HERE / "counter.c", source)
    say(f"compiling {source.name} with gcc -g -O1")
    subprocess.run(["gcc", "-g", "-O1", "-o", "counter", "counter.c"], cwd=scratch, check=True)
    say("relive run -- ./counter   (starts it and reloads counter.c whenever it is saved)")
    proc = subprocess.Popen(
        [*RELIVE, "run", "--", "./counter"],
        cwd=scratch,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = Output(proc)
    try:
        pid = int(out.wait_for(r"started \./counter \(pid (\d+)\)").group(1))
        out.wait_for(r"^watching ")
        out.wait_for(r"ticks=3 ")
        say("its state: ticks and total keep growing")
        for number, (old, new, how) in enumerate(EDITS, 1):
            say(f"edit {number}, saved {how}: greet() now does {new.strip()}")
            save(source, source.read_text().replace(old, new), in_place=number == 1)
            out.wait_for(r"redirected \(greet\)")
            marker = re.escape(new.split('"')[1].split("#")[0].split("%")[0].strip())
            out.wait_for(marker)
            out.wait_for(marker)
        say(
            "edit 3: mood() is inlined into main's loop, and main never returns: "
            'relive moves its running frame into the new code ("(calm)" -> "(EXCITED!)")'
        )
        save(source, source.read_text().replace('"(calm)"', '"(EXCITED!)"'), in_place=True)
        out.wait_for(r"moved main on thread \d+ into the new code")
        out.wait_for(r"\(EXCITED!\)")
        out.wait_for(r"\(EXCITED!\)")
        say("state survived every reload (ticks/total never restarted)")
        subprocess.run([*RELIVE, "status", "-p", str(pid)], check=True)
        say(f"stopping the program (kill {pid}): relive run ends with it")
        os.kill(pid, signal.SIGTERM)
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()  # the program follows (it gets SIGTERM when relive dies)
            proc.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    say("done")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())

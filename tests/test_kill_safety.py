"""relive killed at the worst moment: the target carries on and the journal is exact
(issue 9 §4).

Every injected syscall runs through a frame that restores the thread by itself
(``relive.process.remote``), and every entry jump is journalled before it is
written (``relive.patch.wal``).  These tests kill relive with SIGKILL at each
ptrace call of one reload (strace's fault injection), and at random instants
of many reloads, and check each time that the target still runs, that its
main thread's read() neither failed nor lost input, and that ``status`` lists
exactly the jumps that are in memory.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

import relive
from relive.patch.journal import load_journal
from support import RELIVE, SpawnFactory, Target, assert_untouched, compile_c, edit, reload

#: Random-instant kills per test run; `make bench` runs 200.
KILL_RUNS = int(os.environ.get("RELIVE_KILL_RUNS", "30"))

#: These tests start a relive process (and most a target) per kill point: 30 to 60
#: of them, about 0.5 s each on a quiet machine, 3 s each at a load of 12 on 2 cores
#: (the every-call test took 156 s there). pytest's 120 s limit per test is for a
#: test that hangs, not for one that does 50 times the work of another.
MANY_PROCESSES = pytest.mark.timeout(900)

PROG = r"""
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int table[8] = {1, 2, 3, 4, 5, 6, 7, 8};
__attribute__((noinline)) int value(void) { return table[0]; }
static void *ticker(void *arg) {
    for (;;) { printf("value %d\n", value()); usleep(10000); }
    return arg;
}
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    pthread_t thread;
    pthread_create(&thread, NULL, ticker, NULL);
    char line[256];
    for (;;) {  /* the main thread sits in read(): the one relive borrows */
        ssize_t n = read(0, line, sizeof line - 1);
        if (n < 0) { printf("read error: %s\n", strerror(errno)); continue; }
        if (n == 0) return 0;
        line[n] = 0;
        printf("got %s", line);
    }
}
"""


def entry_bytes(pid: int, exe: Path, name: str) -> tuple[int, bytes, bytes]:
    """The address of ``name`` in ``pid``, its first 5 bytes in the file and in memory."""
    from elftools.elf.elffile import ELFFile

    with exe.open("rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        symbol = symtab.get_symbol_by_name(name)[0]  # type: ignore[union-attr]
        value = symbol["st_value"]
        text = elf.get_section(symbol["st_shndx"])
        offset = value - text["sh_addr"]
        original = text.data()[offset : offset + 5]
    resolved = str(exe.resolve())
    base = min(
        int(line.split("-")[0], 16)
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
        if line.endswith(resolved)
    )
    with open(f"/proc/{pid}/mem", "rb") as mem:
        mem.seek(base + value)
        return base + value, original, mem.read(5)


def assert_survived_and_exact(target: Target, exe: Path, ping: str) -> None:
    """Alive, ticking, its read() intact, and status lists exactly the live jumps."""
    assert target.alive(), f"target died: {target.proc.returncode}"
    target.wait_for(r"^value \d$", after=target.mark())
    target.write(f"{ping}\n".encode())
    target.wait_for(f"^got {ping}$")
    assert not [line for line in target.lines if "read error" in line]
    address, original, current = entry_bytes(target.pid, exe, "value")
    patches = relive.attach(target.pid).status()
    assert all(p.active for p in patches), patches  # nothing listed that is not in memory
    if current != original:  # a jump is live: the journal must know it
        assert [(p.name, p.address) for p in patches] == [("value", address)]
    else:
        assert patches == []
    # The code a live jump leads to is in a block the journal keeps: never free space.
    journal = load_journal(target.pid)
    assert not any(block.pending for block in journal.blocks)
    for patch in journal.patches.values():
        assert any(
            b.code[0] <= patch.target < b.code[0] + b.code[1] and not b.reclaimed
            for b in journal.blocks
        ), (patch, journal.blocks)


def start(tmp_path: Path, spawn: SpawnFactory) -> tuple[Target, Path]:
    exe = compile_c(tmp_path, PROG, link_flags=("-pthread",))
    target = spawn([exe], stdin_pipe=True)
    target.wait_for(r"^value 1$")
    return target, exe


def reload_command(pid: int, source: Path) -> list[str]:
    return [*RELIVE, "reload", "-p", str(pid), str(source)]


def compile_object(source: Path, level: str = "-O0") -> Path:
    """``source`` compiled as relive would (same ptrace calls, no compiler run per kill)."""
    obj = source.with_suffix(".o")
    flags = ["-g", level, "-ffunction-sections", "-fdata-sections"]
    subprocess.run(["gcc", "-c", *flags, "-o", obj, source], check=True)
    return obj


@MANY_PROCESSES
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_sigkill_at_every_ptrace_call_of_a_reload(tmp_path: Path, spawn: SpawnFactory) -> None:
    target, exe = start(tmp_path, spawn)
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    new = compile_object(tmp_path / "prog.c")
    trace = tmp_path / "trace.txt"
    strace = ["strace", "-qq", "-e", "trace=ptrace"]
    done = subprocess.run(
        [*strace, "-o", str(trace), *reload_command(target.pid, new)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    target.wait_for(r"^value 2$")
    calls = trace.read_text().count("ptrace(")
    assert calls > 10
    target.stop()
    killed_at = []
    for k in range(1, calls + 1):
        target = spawn([exe], stdin_pipe=True)
        target.wait_for(r"^value 1$")
        inject = f"inject=ptrace:signal=SIGKILL:when={k}"
        run = subprocess.run(
            [
                *strace,
                "-o",
                "/dev/null",
                "-e",
                inject,
                *reload_command(target.pid, new),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if run.returncode == -signal.SIGKILL or run.returncode == 128 + signal.SIGKILL:
            killed_at.append(k)
        assert_survived_and_exact(target, exe, f"after kill {k}")
        target.stop()
    assert len(killed_at) >= calls - 1  # every call but (maybe) the last was a kill point


@MANY_PROCESSES
def test_sigkill_at_random_instants_of_many_reloads(tmp_path: Path, spawn: SpawnFactory) -> None:
    target, exe = start(tmp_path, spawn)
    source = tmp_path / "prog.c"
    chooser = random.Random(9)
    started = time.monotonic()
    subprocess.run(reload_command(target.pid, source), check=True, capture_output=True)
    duration = time.monotonic() - started  # an unedited reload: compile and compare
    interrupted = 0
    for run in range(KILL_RUNS):
        text = source.read_text()
        current = text.split("return table[", 1)[1].split("]", 1)[0]
        edit(source, f"return table[{current}];", f"return table[{(int(current) + 1) % 8}];")
        relive_process = subprocess.Popen(
            reload_command(target.pid, source),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(chooser.uniform(0.3, 1.1) * duration)
        relive_process.kill()
        if relive_process.wait() == -signal.SIGKILL:
            interrupted += 1
        assert_survived_and_exact(target, exe, f"run {run}")
    assert interrupted > 0  # the kills did land inside reloads


def _limit_file_size() -> None:
    """In the child: every file write past 16 bytes fails (EFBIG), as on a full disk."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))


def test_an_unwritable_journal_refuses_before_touching_the_target(
    running: Target, tmp_path: Path
) -> None:
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    obj = compile_object(tmp_path / "prog.c")
    done = subprocess.run(
        reload_command(running.pid, obj),
        preexec_fn=_limit_file_size,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("relive: error: cannot write ")
    assert "File too large" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1  # no traceback
    assert_untouched(running)


@MANY_PROCESSES
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_sigkill_at_every_ptrace_call_of_an_undo(tmp_path: Path, spawn: SpawnFactory) -> None:
    exe = compile_c(tmp_path, PROG, link_flags=("-pthread",))
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    undo = [*RELIVE, "undo", "-p"]
    strace = ["strace", "-qq", "-e", "trace=ptrace"]
    calls = None
    k = 0
    while calls is None or k < calls:
        target = spawn([exe], stdin_pipe=True)
        target.wait_for(r"^value 1$")
        reload(target.pid, tmp_path / "prog.c")
        target.wait_for(r"^value 2$")
        if calls is None:  # a first, uninterrupted undo counts the ptrace calls
            trace = tmp_path / "undo-trace.txt"
            subprocess.run([*strace, "-o", str(trace), *undo, str(target.pid)], check=True)
            calls = trace.read_text().count("ptrace(")
            assert calls > 2
            target.wait_for(r"^value 1$")
        else:
            inject = f"inject=ptrace:signal=SIGKILL:when={k}"
            subprocess.run(
                [*strace, "-o", "/dev/null", "-e", inject, *undo, str(target.pid)],
                capture_output=True,
                check=False,
            )
        assert_survived_and_exact(target, exe, f"undo killed at {k}")
        target.stop()
        k += 1


FP_BUSY = r"""
#include <stdio.h>
int table[2] = {1, 2};
__attribute__((noinline)) int value(void) { return table[0]; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    double x = 0.0, y = 0.0;  /* at -O2 both live in xmm registers */
    for (unsigned long n = 1;; n++) {
        x += 1.0;
        y += 0.5;
        if (x != (double)n || y * 2.0 != x) {
            printf("FP ERROR at %lu\n", n);
            x = (double)n;
            y = n / 2.0;
        }
        if ((n & 0xffffff) == 0) printf("value %d\n", value());
    }
}
"""


@MANY_PROCESSES
@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_sigkill_while_a_busy_thread_runs_an_injected_syscall(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    """The borrowed thread is busy (no idle one): its registers, including the SSE
    ones its loop keeps its values in, come back from the restore frame."""
    exe = compile_c(tmp_path, FP_BUSY, flags=("-g", "-O2"))
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    new = compile_object(tmp_path / "prog.c", "-O2")
    strace = ["strace", "-qq", "-e", "trace=ptrace"]
    target = spawn([exe])
    target.wait_for(r"^value 1$")
    trace = tmp_path / "trace.txt"
    command = reload_command(target.pid, new)
    subprocess.run([*strace, "-o", str(trace), *command], check=True, capture_output=True)
    target.wait_for(r"^value 2$")
    target.stop()
    calls = [line for line in trace.read_text().splitlines() if "ptrace(" in line]
    setregs = [k for k, line in enumerate(calls, 1) if "PTRACE_SETREGS" in line]
    assert len(setregs) >= 2
    # Every kill point while the first injected syscall has the thread.
    for k in range(setregs[0] + 1, setregs[1] + 1):
        target = spawn([exe])
        target.wait_for(r"^value 1$")
        inject = f"inject=ptrace:signal=SIGKILL:when={k}"
        command = reload_command(target.pid, new)
        subprocess.run([*strace, "-o", "/dev/null", "-e", inject, *command], capture_output=True)
        target.wait_for(r"^value \d$", after=target.mark())
        target.wait_for(r"^value \d$", after=target.mark())  # it keeps going
        assert target.alive()
        assert not [line for line in target.lines if "ERROR" in line], k
        target.stop()


def test_a_failure_after_jumps_were_written_keeps_them_and_says_so(
    running: Target, tmp_path: Path
) -> None:
    from relive.events import Event
    from relive.patch.journal import PendingPatch, load_journal, save_journal
    from relive.patch.transaction import _abandon
    from relive.process.memory import ProcessMemory

    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    relive.attach(running.pid).reload([tmp_path / "prog.c"])
    running.wait_for(r"^value 2$")
    # As if the jump had just been written by a transaction that then failed.
    journal = load_journal(running.pid)
    key, patch = next(iter(journal.patches.items()))
    journal.pending[key] = PendingPatch(patch)
    events: list[Event] = []
    with ProcessMemory(running.pid) as memory:
        _abandon(journal, memory, [], save_journal(journal), events.append)
    assert [str(e) for e in events] == [
        "the reload failed after 1 entry jump(s) were written: value run(s) the new code "
        "(`relive undo` reverts them)"
    ]
    assert not journal.pending and key in journal.patches
    assert not load_journal(running.pid).pending

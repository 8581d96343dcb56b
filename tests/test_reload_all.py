"""``reload --all``: one compile, every worker switched, each its own transaction.

A program forks four workers that print what ``value()`` returns.  ``reload
--all`` compiles the edited file once, links it per process, and every worker
runs the new code; a worker killed while the others reload fails alone (its
error reported, the others reloaded).  Workers die with their parent
(PR_SET_PDEATHSIG), so the test's teardown ends them all.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pytest

import relive
from relive.cli.main import main
from relive.errors import ProcessGone, ReliveError
from relive.events import Compiled, Event
from relive.patch.outcome import ReloadResult
from relive.patch.transaction import held_signals
from relive.session import Session, Step, reload_together
from support import (
    RELIVE,
    SpawnFactory,
    Target,
    compile_c,
    fork_child,
    json_events,
    wait_event,
    wait_until,
)

NAME = "reloadallprog"
WORKERS = 4

WORKERS_PROG = r"""
#include <stdio.h>
#include <unistd.h>
#include <signal.h>
#include <sys/prctl.h>
__attribute__((noinline)) int value(void) { return 1; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (int i = 0; i < WORKERS; i++)
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (;;) { printf("worker %d value=%d\n", (int)getpid(), value()); usleep(20000); }
        }
    for (;;) pause();
}
""".replace("WORKERS", str(WORKERS))


def _start(tmp_path: Path, spawn: SpawnFactory) -> tuple[Target, list[int], Path]:
    exe = compile_c(tmp_path, WORKERS_PROG, name=NAME)
    target = spawn([exe])
    workers: set[int] = set()

    def all_printed() -> bool:
        workers.update(
            int(pid) for pid in re.findall(r"worker (\d+) value=1", "\n".join(target.lines))
        )
        return len(workers) == WORKERS

    wait_until(all_printed, what=f"{WORKERS} workers printing")
    return target, sorted(workers), tmp_path / f"{NAME}.c"


def _set_value(source: Path, value: int) -> None:
    source.write_text(re.sub(r"return \d+; }", f"return {value}; }}", source.read_text(), count=1))


def _prints(target: Target, pid: int, value: int) -> None:
    mark = target.mark()
    target.wait_for(rf"worker {pid} value={value}$", after=mark)
    target.wait_for(rf"worker {pid} value={value}$", after=target.mark())


def test_reload_all_compiles_once_and_reloads_every_worker(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    target, workers, source = _start(tmp_path, spawn)
    _set_value(source, 2)
    assert main(["--json", "reload", "--all", "-n", NAME, str(source)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    kinds = [event["kind"] for event in events]
    assert kinds.count("compiled") == 1
    reloaded = {event["pid"] for event in events if event["kind"] == "reloaded"}
    assert reloaded == {target.pid, *workers}
    assert all(event["redirected"] == 1 for event in events if event["kind"] == "reloaded")
    [switched] = [event for event in events if event["kind"] == "switched"]
    assert sorted(switched["pids"]) == sorted({target.pid, *workers})
    assert switched["spread_ms"] >= 0
    for worker in workers:
        _prints(target, worker, 2)
    # Each process's events follow its own header.
    headers = [i for i, event in enumerate(events) if event["kind"] == "process"]
    assert [events[i]["pid"] for i in headers] == sorted({target.pid, *workers})


def _outcome_ok(outcome: ReloadResult | ReliveError) -> bool:
    return isinstance(outcome, ReloadResult) and outcome.redirected == ["value"]


def test_a_worker_killed_while_compiling_fails_alone(tmp_path: Path, spawn: SpawnFactory) -> None:
    target, workers, source = _start(tmp_path, spawn)
    victim = workers[0]
    seen: dict[int, list[Event]] = {}

    def sink(pid: int) -> relive.events.EventSink:
        def on_event(event: Event) -> None:
            seen.setdefault(pid, []).append(event)
            if pid == victim and isinstance(event, Compiled):
                os.kill(victim, signal.SIGKILL)  # in the middle of its own plan

        return on_event

    sessions = [relive.attach(pid, on_event=sink(pid)) for pid in workers]
    _set_value(source, 3)
    outcomes = reload_together(sessions, [source], lambda event: None)
    # Its error depends on where the kill caught it (gone, or its memory unreadable).
    assert isinstance(outcomes[0], ReliveError)
    assert all(_outcome_ok(outcome) for outcome in outcomes[1:])
    # The compile happened once, in the victim's plan, and served the others.
    assert sum(isinstance(e, Compiled) for events in seen.values() for e in events) == 1
    for worker in workers[1:]:
        _prints(target, worker, 3)


def test_a_worker_killed_after_its_code_was_loaded_fails_alone(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    target, workers, source = _start(tmp_path, spawn)
    victim = workers[-1]
    _set_value(source, 4)
    sessions: list[Session] = [relive.attach(pid) for pid in workers]
    steps = [session.reload_steps([source]) for session in sessions]
    failed: list[ReliveError] = []
    with held_signals():  # as reload_together does
        for step in steps:
            assert step.advance(Step.LOADED)
        os.kill(victim, signal.SIGKILL)
        wait_until(
            lambda: not Path(f"/proc/{victim}/task").exists() or _zombie(victim), what="dead"
        )
        for step in steps:
            try:
                step.advance(None)
            except ReliveError as error:
                failed.append(error)
    assert len(failed) == 1 and isinstance(failed[0], ProcessGone)
    assert all(step.result.redirected == ["value"] for step in steps[:-1])
    for worker in workers[:-1]:
        _prints(target, worker, 4)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) & {signal.SIGINT, signal.SIGTERM} == set()
    # The survivors' journals know their patch; the others are untouched by the failure.
    for worker in workers[:-1]:
        [row] = relive.attach(worker).status()
        assert (row.name, row.active) == ("value", True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"
    except OSError:
        return True


FORKING_PROG = r"""
#include <stdio.h>
#include <unistd.h>
#include <signal.h>
#include <sys/prctl.h>
__attribute__((noinline)) int value(void) { return 1; }
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    char line[16];
    while (fgets(line, sizeof line, stdin))  /* one worker per line read */
        if (fork() == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (;;) { printf("worker %d value=%d\n", (int)getpid(), value()); usleep(20000); }
        }
    return 0;
}
"""


def _fork_worker(parent: Target) -> int:
    return fork_child(parent, r"worker {pid} value=")


def test_watch_all_follows_a_worker_forked_after_it_started(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, FORKING_PROG, name="forkwatch")
    source = tmp_path / "forkwatch.c"
    parent = spawn([exe], stdin_pipe=True)
    first = _fork_worker(parent)
    watch = spawn([*RELIVE, "--json", "watch", "-v", "-p", str(parent.pid), "--all"])
    assert sorted(wait_event(watch, "watching")["pids"]) == sorted([parent.pid, first])

    _set_value(source, 2)
    assert {wait_event(watch, "watch-reloaded")["pid"] for _ in range(2)} == {parent.pid, first}
    _prints(parent, first, 2)

    second = _fork_worker(parent)  # forked from the patched parent: it runs value 2
    _prints(parent, second, 2)
    _set_value(source, 3)
    assert wait_event(watch, "watch-follows")["pid"] == second
    reloaded = [wait_event(watch, "watch-reloaded") for _ in range(3)]
    assert {event["pid"] for event in reloaded} == {parent.pid, first, second}
    assert all(event["redirected"] == ["value"] for event in reloaded)
    for worker in (first, second):
        _prints(parent, worker, 3)
    # Every reload compiled its file once for all the processes, and switched them together.
    assert len(json_events(watch, "compiled")) == 2
    assert sorted(json_events(watch, "switched")[-1]["pids"]) == sorted([parent.pid, first, second])

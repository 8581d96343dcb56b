"""`relive run`: start a program, reload it on save or on a signal, exit with its status.

relive is started in a session of its own, so ``os.killpg(relive.pid, SIG)`` reaches
its process group the way a terminal's Ctrl+C or Ctrl+\\ would.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from support import RELIVE, SpawnFactory, Target, compile_c, edit, wait_event

PROG = r"""
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <unistd.h>
static void on_int(int sig) {
    static const char message[] = "PROGRAM GOT SIGINT\n";
    (void)sig;
    write(1, message, sizeof message - 1);
}
__attribute__((noinline)) int value(void) { return 1; }
int main(void) {
    struct rlimit none = {0, 0};
    setrlimit(RLIMIT_CORE, &none); /* SIGQUIT must leave no core file */
    setvbuf(stdout, NULL, _IONBF, 0);
    signal(SIGINT, on_int);
    for (long i = 0;; i++) { printf("value=%d i=%ld\n", value(), i); usleep(20000); }
}
"""


def start_run(spawn: SpawnFactory, tmp_path: Path, *options: str, json: bool = False) -> Target:
    exe = compile_c(tmp_path, PROG)
    argv = [*RELIVE, *(["--json"] if json else []), "run", *options, "--", str(exe)]
    relive = spawn(argv, cwd=tmp_path, new_session=True)
    if json:
        wait_event(relive, "watching")
    else:
        relive.wait_for(r"^watching ")
    relive.wait_for(r"value=1 ")
    return relive


def test_on_signal_int_reloads_on_ctrl_c_which_the_program_never_sees(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    relive = start_run(spawn, tmp_path, "--on-signal", "INT")
    child = int(relive.wait_for(r"^started .* \(pid (\d+)\)", after=0).group(1))
    edit(tmp_path / "prog.c", "return 1;", "return 2;")

    os.killpg(relive.pid, signal.SIGINT)  # the terminal's Ctrl+C
    relive.wait_for(r"^Caught SIGINT! reloading \.\.\. prog\.c$")
    relive.wait_for(r"prog\.c: 1 redirected \(value\)")
    relive.wait_for(r"value=2 ")

    os.killpg(relive.pid, signal.SIGINT)  # nothing changed since: nothing to reload
    relive.wait_for(r"^Caught SIGINT! reloading \.\.\. nothing changed")
    mark = relive.mark()
    relive.wait_for(r"value=2 ", after=mark)
    assert not any("PROGRAM GOT SIGINT" in line for line in relive.lines)

    # The program keeps its own SIGINT handling for a signal sent to it directly.
    os.kill(child, signal.SIGINT)
    relive.wait_for(r"PROGRAM GOT SIGINT")

    os.killpg(relive.pid, signal.SIGQUIT)  # the terminal's Ctrl+\ ends it, and relive with it
    relive.wait_for(rf"pid {child} exited \(killed by SIGQUIT\)")
    assert relive.wait_exit() == 128 + signal.SIGQUIT


def test_run_reloads_on_save_and_exits_with_the_program_status(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    relive = start_run(spawn, tmp_path, json=True)
    edit(tmp_path / "prog.c", "return 1;", "return 2;")
    assert wait_event(relive, "watch-reloaded")["redirected"] == ["value"]
    relive.wait_for(r"value=2 ")
    edit(tmp_path / "prog.c", "return 2;", "exit(7);")
    wait_event(relive, "watch-reloaded")
    exited = wait_event(relive, "exited")
    assert exited["status"] == 7
    assert wait_event(relive, "watch-stopped")["reason"] == "the program exited"
    assert relive.wait_exit() == 7


def test_without_on_signal_ctrl_c_is_the_programs_and_sigterm_is_passed_on(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    relive = start_run(spawn, tmp_path)
    os.killpg(relive.pid, signal.SIGINT)  # program and relive share the terminal's group
    relive.wait_for(r"PROGRAM GOT SIGINT")
    edit(tmp_path / "prog.c", "return 1;", "return 3;")  # relive is still watching
    relive.wait_for(r"prog\.c: 1 redirected \(value\)")
    relive.wait_for(r"value=3 ")
    relive.proc.send_signal(signal.SIGTERM)
    relive.wait_for(r"exited \(killed by SIGTERM\)")
    assert relive.wait_exit() == 128 + signal.SIGTERM


LIB = r"""
int lib_value(void) { return 1; }
"""
LIB_MAIN = r"""
#include <stdio.h>
#include <unistd.h>
int lib_value(void);
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("lib=%d\n", lib_value()); usleep(20000); }
}
"""


def test_run_watches_the_sources_of_loaded_shared_libraries(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    folder = tmp_path / "lib"
    folder.mkdir()
    (folder / "libdemo.c").write_text(LIB)
    subprocess.run(
        ["gcc", "-g", "-O1", "-fPIC", "-shared", "-o", "libdemo.so", "libdemo.c"],
        cwd=folder,
        check=True,
    )
    exe = compile_c(
        tmp_path, LIB_MAIN, link_flags=(f"-L{folder}", "-ldemo", f"-Wl,-rpath,{folder}")
    )
    relive = spawn([*RELIVE, "--json", "run", "--", str(exe)], cwd=tmp_path, new_session=True)
    started = wait_event(relive, "watching")
    assert os.path.realpath(folder / "libdemo.c") in started["units"]
    relive.wait_for(r"lib=1")
    edit(folder / "libdemo.c", "return 1;", "return 2;")
    assert wait_event(relive, "watch-reloaded")["redirected"] == ["lib_value"]
    relive.wait_for(r"lib=2")


def test_on_signal_reloads_a_file_edited_while_the_program_started(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, PROG)
    edit(tmp_path / "prog.c", "return 1;", "return 2;")  # the build is older than this
    argv = [*RELIVE, "run", "--on-signal", "INT", "--", str(exe)]
    relive = spawn(argv, cwd=tmp_path, new_session=True)
    relive.wait_for(r"prog\.c changed after the program was built: reloaded on the next SIGINT")
    relive.wait_for(r"value=1 ")
    os.killpg(relive.pid, signal.SIGINT)
    relive.wait_for(r"^Caught SIGINT! reloading \.\.\. prog\.c$")
    relive.wait_for(r"prog\.c: 1 redirected \(value\)")
    relive.wait_for(r"value=2 ")


def test_a_program_that_exits_at_once_reports_its_status(
    tmp_path: Path, spawn: SpawnFactory
) -> None:
    exe = compile_c(tmp_path, "int main(void) { return 3; }\n", name="quick")
    for _ in range(3):  # whatever the timing: before, while or after relive attaches
        relive = spawn([*RELIVE, "run", "--", str(exe)], cwd=tmp_path)
        relive.wait_for(r"exited \(exit status 3\)")
        assert relive.wait_exit() == 3
        assert not any("no such process" in line for line in relive.lines)


def test_ctrl_c_reloads_even_when_relive_was_started_with_sigint_blocked(
    tmp_path: Path,
) -> None:
    """A blocked signal mask is inherited across exec; the handlers relive installs unblock it."""
    exe = compile_c(tmp_path, PROG)
    edit(tmp_path / "prog.c", "return 1;", "return 2;")
    proc = subprocess.Popen(
        [*RELIVE, "run", "--on-signal", "INT", "--", str(exe)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}),
    )
    relive = Target(proc)
    try:
        relive.wait_for(r"reloaded on the next SIGINT")
        relive.wait_for(r"value=1 ")
        os.killpg(relive.pid, signal.SIGINT)
        relive.wait_for(r"^Caught SIGINT! reloading \.\.\. prog\.c$")
        relive.wait_for(r"value=2 ")
    finally:
        relive.stop()

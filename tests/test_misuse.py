"""The rest of what careless use and other users' processes found (issue 9 §7).

A thread id names its process; a user who may not trace a process is told so
(exit 3); a non-root user reads the build the process runs, or is told why not;
a reload that writes nothing maps nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import relive
from relive.patch.journal import journal_name
from relive.process.procfs import get_start_time
from relive.statedir import find_state_dir
from support import (
    NOBODY,
    VALUE_PROG,
    SpawnFactory,
    Target,
    assert_untouched,
    compile_c,
    edit,
    run_cli,
    wait_until,
)

SYSTEM_PYTHON = shutil.which("python3", path="/usr/bin:/bin")


def _python_for_others() -> str | None:
    """An interpreter another user may run (the test's may live in root's home)."""
    if SYSTEM_PYTHON is None:
        return None
    probe = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(sys.version_info >= (3, 11))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return SYSTEM_PYTHON if probe.stdout.strip() == "True" else None


as_nobody = pytest.mark.skipif(
    os.geteuid() != 0 or _python_for_others() is None,
    reason="needs root and a system python >= 3.11 to run relive as another user",
)


def relive_as_nobody(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the relive CLI as user nobody, with this checkout's code."""
    import site

    source = Path(relive.__file__).resolve().parent.parent
    path = os.pathsep.join([str(source), *site.getsitepackages()])
    python = _python_for_others()
    assert python is not None
    return subprocess.run(
        [python, "-m", "relive", *argv],
        user=NOBODY,
        group=NOBODY,
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "PYTHONPATH": path, "RELIVE_SERVER": "0"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder user nobody owns (pytest's tmp_path is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="relive-test-"))
    folder.chmod(0o755)
    os.chown(folder, NOBODY, NOBODY)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(f"/tmp/relive-{NOBODY}", ignore_errors=True)


def _start_as_nobody(argv: list[str | Path], cwd: Path) -> Target:
    proc = subprocess.Popen(
        [str(a) for a in argv],
        cwd=cwd,
        user=NOBODY,
        group=NOBODY,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return Target(proc)


def _give_away(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, NOBODY, NOBODY)


def _reload_as_nobody(
    folder: Path, target: Target, source: str
) -> subprocess.CompletedProcess[str]:
    """``relive reload -p PID SOURCE`` as nobody in ``folder``, once everything in it is
    nobody's (the files the test wrote since the last time included)."""
    _give_away(folder)
    return relive_as_nobody("reload", "-p", str(target.pid), source, cwd=folder)


# --- a thread id names its process -----------------------------------------------

THREADED = r"""
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>
__attribute__((noinline)) int value(void) { return 1; }
static void *worker(void *arg) {
    (void)arg;
    for (;;) { printf("value %d\n", value()); fflush(stdout); usleep(20000); }
    return NULL;
}
int main(void) {
    pthread_t thread;
    pthread_create(&thread, NULL, worker, NULL);
    pthread_join(thread, NULL);
}
"""


def test_thread_id_names_its_process(
    tmp_path: Path, spawn: SpawnFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    exe = compile_c(tmp_path, THREADED, link_flags=("-pthread",))
    target = spawn([exe])
    target.wait_for(r"^value 1$")
    tasks = os.listdir(f"/proc/{target.pid}/task")
    wait_until(lambda: len(os.listdir(f"/proc/{target.pid}/task")) == 2, what="the worker")
    [tid] = [int(t) for t in os.listdir(f"/proc/{target.pid}/task") if int(t) != target.pid]
    assert tasks  # the worker exists, with an id of its own
    edit(tmp_path / "prog.c", "return 1;", "return 2;")
    code, err = run_cli(capsys, "reload", "-p", str(tid), str(tmp_path / "prog.c"))
    assert code == 0, err
    target.wait_for(r"^value 2$")
    # Keyed by the process: status and undo with its pid see the patch.
    assert [p.name for p in relive.attach(target.pid).status()] == ["value"]
    assert (find_state_dir() / journal_name(target.pid, get_start_time(target.pid))).exists()
    assert not list(find_state_dir().glob(f"{tid}-*.json"))
    assert relive.attach(tid).pid == target.pid
    assert relive.attach(target.pid).undo() == ["value"]


# --- another user's process ---------------------------------------------------------


@as_nobody
@pytest.mark.parametrize("command", ["undo", "status"])
def test_another_users_process_is_exit_3(
    tmp_path: Path, spawn: SpawnFactory, shared_folder: Path, command: str
) -> None:
    exe = compile_c(tmp_path, VALUE_PROG)
    target = spawn([exe])  # runs as root
    target.wait_for(r"^value 1$")
    done = relive_as_nobody(command, "-p", str(target.pid), cwd=shared_folder)
    assert done.returncode == 3, done.stderr
    assert f"process {target.pid} runs as uid 0 but relive runs as uid {NOBODY}" in done.stderr
    assert "nothing" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr


# --- a build replaced on disk, as a user without CAP_SYS_ADMIN -------------------------


@as_nobody
def test_non_root_reloads_a_program_rebuilt_on_disk(shared_folder: Path) -> None:
    """The executable on disk is another build: relive reads the one that runs
    (/proc/PID/exe), not the file now at its path."""
    exe = compile_c(shared_folder, VALUE_PROG)
    _give_away(shared_folder)
    target = _start_as_nobody([exe], shared_folder)
    try:
        target.wait_for(r"^value 1$")
        rebuilt = compile_c(shared_folder, VALUE_PROG.replace("value %d", "v=%d"), name="next")
        os.replace(rebuilt, exe)  # a rebuild: a new file at the old path
        edit(shared_folder / "prog.c", "return table[0];", "return table[2];")
        done = _reload_as_nobody(shared_folder, target, "prog.c")
        assert done.returncode == 0, done.stderr
        assert "redirected value" in done.stdout
        target.wait_for(r"^value 3$")
    finally:
        target.stop()


LIB = r"""
__attribute__((noinline)) int value(void) { return 1; }
"""
LIB_MAIN = r"""
#include <stdio.h>
#include <unistd.h>
int value(void);
int main(void) {
    setvbuf(stdout, NULL, _IONBF, 0);
    for (;;) { printf("value %d\n", value()); usleep(20000); }
}
"""


def _build_library(folder: Path, source: str) -> Path:
    (folder / "lib.c").write_text(source)
    library = folder / "libvalue.so"
    fresh = folder / "libvalue.so.new"
    subprocess.run(
        ["gcc", "-g", "-O0", "-fPIC", "-shared", "-o", str(fresh), "lib.c"],
        cwd=folder,
        check=True,
    )
    os.replace(fresh, library)  # as `make` or an installer replaces it
    return library


@as_nobody
def test_non_root_and_a_rebuilt_library(shared_folder: Path) -> None:
    _build_library(shared_folder, LIB)
    exe = compile_c(
        shared_folder,
        LIB_MAIN,
        link_flags=("-L.", "-lvalue", "-Wl,-rpath,$ORIGIN"),
    )
    _give_away(shared_folder)
    target = _start_as_nobody([exe], shared_folder)
    try:
        target.wait_for(r"^value 1$")
        edit(shared_folder / "lib.c", "return 1;", "return 2;")
        # Rebuilt from the edited source: another build than the one that runs.
        _build_library(shared_folder, (shared_folder / "lib.c").read_text())
        done = _reload_as_nobody(shared_folder, target, "lib.c")
        assert done.returncode == 3, done.stdout + done.stderr
        assert "libvalue.so was replaced on disk (rebuilt?)" in done.stderr
        assert "restart the program" in done.stderr
        target.wait_for(r"^value 1$", after=target.mark())

        # Rebuilt from the same source: the same build id, so the file on disk is
        # the build that runs and relive may read it.
        _build_library(shared_folder, LIB)
        edit(shared_folder / "lib.c", "return 1;", "return 2;")
        done = _reload_as_nobody(shared_folder, target, "lib.c")
        assert done.returncode == 0, done.stderr
        assert "redirected value" in done.stdout
        target.wait_for(r"^value 2$")
    finally:
        target.stop()


# --- a reload that writes nothing maps nothing -------------------------------------------


def test_unchanged_reload_maps_nothing(
    running: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), str(tmp_path / "prog.c"))
    assert code == 0, err
    assert_untouched(running)


def test_unselected_change_maps_nothing(
    running: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit(tmp_path / "prog.c", "return table[0];", "return table[1];")
    code, err = run_cli(
        capsys, "reload", "-p", str(running.pid), "--function", "tick", str(tmp_path / "prog.c")
    )
    assert code == 0, err
    assert_untouched(running)


@pytest.mark.parametrize("case", ["emptied", "empty-new-file", "no-such-function"])
def test_reload_of_nothing_maps_nothing(
    running: Target, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    source = tmp_path / "prog.c"
    if case == "emptied":
        source.write_text("")
        argv = [str(source)]
    elif case == "empty-new-file":
        source = tmp_path / "other.c"
        source.write_text("")
        argv = ["--new-file", str(source)]
    else:
        # (a usage error once --function checks its names; either way nothing is mapped)
        argv = ["--function", "no_such_function", str(source)]
    code, err = run_cli(capsys, "reload", "-p", str(running.pid), *argv)
    assert code in (0, 2), err
    assert_untouched(running)

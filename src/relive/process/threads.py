"""Stop the world: hold every thread of a process in a ptrace-stop, then let go.

Threads are taken with PTRACE_SEIZE + PTRACE_INTERRUPT (never PTRACE_ATTACH):
no SIGSTOP is queued, so neither the program nor a parent waiting with
WUNTRACED sees a stop.  Signals are never lost:

* A signal that arrives while a thread is held stays pending in the kernel and
  is delivered after the detach.
* A thread may report a signal-delivery-stop (the kernel already dequeued the
  signal) instead of the interrupt's event-stop.  That counts as stopped; the
  signal is handed back on release with PTRACE_DETACH(data=signo), which
  delivers it with its original siginfo.
* While single-stepping, every signal that can be blocked is blocked
  (PTRACE_SETSIGMASK), so none is dequeued under our feet.  A signal the
  thread had already dequeued is passed back to the kernel on the first step;
  because it is blocked, the kernel re-queues it with its siginfo.

All ptrace requests must come from the OS thread that called ``stop_all``.

Syscalls a thread was blocked in are restarted by the kernel after release
(read, nanosleep, futex, poll...), except those signal(7) lists as never
restarted after a stop, e.g. epoll_wait: it fails with EINTR, which relive
turns into a restart with the time the wait had left (``waits``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field

from relive.arch import host_registers
from relive.arch.base import RegisterBlock
from relive.errors import ProcessGone, ReliveError
from relive.process import permissions, procfs, ptrace
from relive.process.waits import EpollWait, note_epoll_waits, shorten_restarted_wait

#: How long release() waits for a thread that had not reported its stop yet.
_RELEASE_GRACE_S = 1.0
#: How long one single step may take (it may run a syscall such as munmap).
_STEP_TIMEOUT_S = 10.0
#: How long a wait for a thread's stop polls without sleeping (see ``_wait``).
_SPIN_S = 0.002

# Signals left unblocked while single-stepping.  The kernel forces synchronous
# signals (the step's own SIGTRAP, faults, seccomp's SIGSYS) through a blocked
# mask by resetting the program's handler to SIG_DFL, which must not happen.
_SYNCHRONOUS = (
    signal.SIGTRAP, signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGSYS
)  # fmt: skip
_STEP_SIGMASK = ((1 << 64) - 1) & ~sum(1 << (s - 1) for s in _SYNCHRONOUS)


@dataclass
class _Thread:
    """Bookkeeping for one held thread."""

    tid: int
    #: We consumed its stop with waitpid; ptrace requests are valid.
    stopped: bool = False
    #: The current stop is a signal-delivery-stop, so PTRACE_DETACH honours a signal.
    in_signal_stop: bool = False
    #: The signal of the current signal-delivery-stop, not yet decided on.
    current: ptrace.SigInfo | None = None
    #: Signals taken out of the kernel that the thread is still owed.
    owed: list[ptrace.SigInfo] = field(default_factory=list)
    #: The current stop is a syscall-entry or -exit stop (PTRACE_SYSCALL).
    in_syscall_stop: bool = False
    #: The current stop is an event-stop (PTRACE_INTERRUPT).
    in_event_stop: bool = False
    #: Its registers in the current stop, once read (they change only when relive
    #: sets them or resumes it: read once, not once per look at the held threads).
    regs: RegisterBlock | None = None

    def record_stop(self, status: ptrace.WaitStatus) -> None:
        """Note a ptrace-stop reported by waitpid."""
        self.regs = None
        self.stopped = True
        self.in_signal_stop = status.is_signal_stop
        self.in_syscall_stop = status.is_syscall_stop
        self.in_event_stop = status.is_event_stop
        self.current = ptrace.get_siginfo(self.tid) if status.is_signal_stop else None

    def iter_undelivered(self) -> Iterator[ptrace.SigInfo]:
        """Signals to deliver on release: the current stop's first, then owed ones."""
        if self.current is not None:
            yield self.current
        yield from self.owed


class StoppedProcess:
    """Every thread of a process held in a ptrace-stop; a context manager.

    Create it with :meth:`stop_all`.  Leaving the ``with`` block (also on an
    exception) calls :meth:`release`, which detaches every thread.
    """

    def __init__(self, pid: int, timeout: float = 2.0) -> None:
        self.pid = pid
        self.timeout = timeout
        #: Hold only this thread (see stop_one); None: every thread.
        self._only: int | None = None
        self._threads: dict[int, _Thread] = {}
        self._owner = threading.get_ident()
        self._stopped_since: float | None = None
        self._epoll_waits: dict[int, EpollWait] = {}
        self._stopped_total = 0.0

    @classmethod
    def stop_all(cls, pid: int, timeout: float = 2.0) -> StoppedProcess:
        """Seize and stop every thread of ``pid`` within ``timeout`` seconds."""
        stopped = cls(pid, timeout)
        stopped._stop_world()
        return stopped

    @classmethod
    def stop_one(cls, pid: int, tid: int | None = None, timeout: float = 2.0) -> StoppedProcess:
        """Seize and stop one thread of ``pid``; the other threads keep running.

        Enough to run a system call in the target (see ``remote``) that no other
        thread can notice, such as mapping memory nothing refers to yet.  By
        default the thread is one blocked in a system call, the main thread first
        (its call restarts after the release, so the program sees no stall at
        all); failing that, the main thread.
        """
        stopped = cls(pid, timeout)
        stopped._only = tid if tid is not None else pick_idle_thread(pid)
        stopped._stop_world()
        return stopped

    def __enter__(self) -> StoppedProcess:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()

    # -- public API -------------------------------------------------------

    @property
    def tids(self) -> tuple[int, ...]:
        """Ids of the held threads, ascending."""
        return tuple(sorted(self._threads))

    @property
    def stopped_seconds(self) -> float:
        """Total time threads were held, summed over every hold of this object.

        Includes the current hold; the gaps of ``resume_briefly`` do not count.
        """
        current = 0.0 if self._stopped_since is None else time.monotonic() - self._stopped_since
        return self._stopped_total + current

    def get_regs(self, tid: int) -> RegisterBlock:
        """The registers of held thread ``tid`` (a copy: the caller may change it)."""
        thread = self._get_thread(tid)
        if thread.regs is None:
            try:
                thread.regs = ptrace.get_regs(tid)
            except OSError as exc:
                raise self._thread_error(tid, exc) from exc
        return type(thread.regs).from_buffer_copy(thread.regs)

    def set_regs(self, tid: int, regs: RegisterBlock) -> None:
        """Replace the registers of held thread ``tid``."""
        thread = self._get_thread(tid)
        thread.regs = None
        try:
            ptrace.set_regs(tid, regs)
        except OSError as exc:
            raise self._thread_error(tid, exc) from exc
        thread.regs = type(regs).from_buffer_copy(regs)

    def get_sigmask(self, tid: int) -> int:
        """The blocked-signal mask of held thread ``tid``."""
        self._get_thread(tid)
        try:
            return ptrace.get_sigmask(tid)
        except OSError as exc:
            raise self._thread_error(tid, exc) from exc

    def get_xstate(self, tid: int) -> bytes:
        """The FPU/SSE/AVX state of held thread ``tid`` (XSAVE layout)."""
        self._get_thread(tid)
        try:
            return ptrace.get_xstate(tid)
        except OSError as exc:
            raise self._thread_error(tid, exc) from exc

    def iter_pcs(self) -> Iterator[tuple[int, int]]:
        """``(tid, pc)`` for every held thread."""
        for tid in self.tids:
            yield tid, host_registers().get_pc(self.get_regs(tid))

    def iter_positions(self) -> Iterator[tuple[int, int, int]]:
        """``(tid, pc, sp)`` for every held thread."""
        for tid in self.tids:
            regs = self.get_regs(tid)
            yield tid, host_registers().get_pc(regs), host_registers().get_sp(regs)

    def single_step(self, tid: int) -> None:
        """Execute one instruction on held thread ``tid`` and stop it again.

        Signals that arrive meanwhile stay queued or are owed to the thread;
        a fault raised by the instruction itself raises ReliveError.
        """
        deadline = time.monotonic() + _STEP_TIMEOUT_S
        self._run_masked(tid, ptrace.singlestep, self._is_step_done, deadline)

    def run_injected(
        self, tid: int, at: int, *, to_exit: bool, cancel: bool = False, timeout: float = 0.0
    ) -> RegisterBlock:
        """Run held thread ``tid``, set up by ``remote`` to reach a ``syscall`` whose
        rip afterwards is ``at``, to that syscall's entry stop (and with ``to_exit``
        on to its exit stop); return its registers there.  With ``cancel`` the
        syscall is skipped.  The thread is then stopped again (PTRACE_INTERRUPT)
        before it runs another instruction, so the caller can restore it.

        Only syscall-stops and event-stops are used, never a single-step trap: if
        relive dies in one of them the thread goes on (into the code ``remote``
        set up to restore it) where a pending SIGTRAP would kill it.
        """
        thread = self._get_thread(tid)
        deadline = time.monotonic() + (timeout or _STEP_TIMEOUT_S)
        with self._masked(tid):
            signo = self._hand_back_current(thread)

            def at_syscall(t: _Thread) -> bool:
                return self._is_syscall_stop_at(t, at)

            self._resume_until(thread, ptrace.syscall, at_syscall, deadline, signo)
            if to_exit:
                self._resume_until(thread, ptrace.syscall, at_syscall, deadline, 0)
            try:
                regs = ptrace.get_regs(tid)
                if cancel:
                    thread.regs = None
                    ptrace.set_regs(tid, host_registers().cancel_syscall(regs))
            except OSError as exc:
                raise self._thread_error(tid, exc) from exc
            self._resume_until(thread, _interrupt_and_cont, self._is_event_stop, deadline, 0)
        return regs

    def _run_masked(
        self,
        tid: int,
        resume: Callable[[int, int], None],
        is_done: Callable[[_Thread], bool],
        deadline: float,
    ) -> None:
        """Resume held thread ``tid`` with ``resume`` until ``is_done`` says its stop
        is the one wanted.  Blockable signals are masked meanwhile (they stay
        queued); other signals the thread meets are owed to it."""
        thread = self._get_thread(tid)
        with self._masked(tid):
            signo = self._hand_back_current(thread)
            self._resume_until(thread, resume, is_done, deadline, signo)

    @contextlib.contextmanager
    def _masked(self, tid: int) -> Iterator[None]:
        """Block every blockable signal of held thread ``tid`` meanwhile."""
        try:
            saved_mask = ptrace.get_sigmask(tid)
            ptrace.set_sigmask(tid, _STEP_SIGMASK)
        except OSError as exc:
            raise self._thread_error(tid, exc) from exc
        try:
            yield
        finally:
            self._restore_sigmask(tid, saved_mask)

    def _resume_until(
        self,
        thread: _Thread,
        resume: Callable[[int, int], None],
        is_done: Callable[[_Thread], bool],
        deadline: float,
        signo: int,
    ) -> None:
        tid = thread.tid
        while True:
            try:
                resume(tid, signo)
                signo = 0
                status = self._wait(tid, deadline)
                if status is None or status.exited:
                    self._threads.pop(tid, None)
                    raise self._exited_during_step(tid)
                thread.record_stop(status)
            except OSError as exc:
                raise self._thread_error(tid, exc) from exc
            if is_done(thread):
                return

    def _is_syscall_stop_at(self, thread: _Thread, address: int) -> bool:
        """Classify a stop while injected code runs; True at its syscall's stops."""
        if thread.in_syscall_stop:
            return host_registers().get_pc(ptrace.get_regs(thread.tid)) == address
        info = thread.current
        if info is None:
            return False  # a pending interrupt fired first: run on
        thread.current = None
        if info.is_user_sent:
            thread.owed.append(info)
            return False
        pc = host_registers().get_pc(ptrace.get_regs(thread.tid))
        raise ReliveError(
            f"code run in thread {thread.tid} of process {self.pid} raised "
            f"{signal.Signals(info.signo).name} at {pc:#x}"
        )

    def _is_event_stop(self, thread: _Thread) -> bool:
        """True at the event-stop of our PTRACE_INTERRUPT; signals met first are owed."""
        if thread.in_event_stop:
            return True
        return self._is_syscall_stop_at(thread, -1)

    def resume_briefly(self, duration_s: float) -> None:
        """Let every thread run for about ``duration_s`` seconds, then stop them all again.

        New threads created meanwhile are stopped too; exited ones are dropped.
        """
        self.release()
        time.sleep(duration_s)  # a mechanism, not a wait for some condition
        try:
            self._stop_world()
        except ProcessGone:
            raise self._exited() from None

    def release(self) -> None:
        """Detach every thread, handing back owed signals.  Idempotent."""
        if self._stopped_since is None:
            return
        self._check_owner()
        failures: list[OSError] = []
        for thread in list(self._threads.values()):
            try:
                self._release_thread(thread)
            except OSError as exc:  # keep going: never leave a thread stopped
                failures.append(exc)
        self._threads.clear()
        self._stopped_total += time.monotonic() - self._stopped_since
        self._stopped_since = None
        if failures:
            raise ReliveError(f"could not detach from process {self.pid}: {failures[0]}")

    # -- stopping ---------------------------------------------------------

    def _stop_world(self) -> None:
        self._check_owner()
        procfs.check_alive(self.pid)
        # Before any thread stops: which ones wait in epoll_wait, and since when.
        tids = [self._only] if self._only is not None else procfs.iter_thread_ids(self.pid)
        self._epoll_waits = note_epoll_waits(self.pid, tids)
        self._stopped_since = time.monotonic()
        try:
            self._seize_until_stable(self._stopped_since + self.timeout)
        except BaseException:
            self.release()
            raise

    def _seize_until_stable(self, deadline: float) -> None:
        """Seize + interrupt new threads and wait for their stops, until no new one appears.

        A thread can be created while we attach; once every known thread is
        stopped, a rescan that finds nothing new proves the world is stopped.
        """
        skipped: set[int] = set()
        while True:
            if self._only is not None:
                if self._only in self._threads:
                    break
                if self._only in skipped:  # it exited meanwhile: take another one
                    self._only = pick_idle_thread(self.pid, exclude=skipped)
                new = [self._only]
            else:
                new = [t for t in self._scan_threads() if t not in self._threads]
                new = [t for t in new if t not in skipped]
            if not new:
                break
            for tid in new:
                if self._seize(tid):
                    self._threads[tid] = _Thread(tid)
                else:
                    skipped.add(tid)
            for tid in new:
                if tid in self._threads:
                    self._wait_first_stop(self._threads[tid], deadline)
        if not self._threads:
            raise self._exited()

    def _scan_threads(self) -> list[int]:
        try:
            return list(procfs.iter_thread_ids(self.pid))
        except ProcessGone:
            if self._threads:
                raise self._exited() from None
            raise

    def _seize(self, tid: int) -> bool:
        """Seize and interrupt one thread; False if it vanished or is a zombie."""
        try:
            ptrace.seize(tid, ptrace.PTRACE_O_TRACESYSGOOD)
        except OSError as exc:
            if exc.errno == errno.ESRCH or procfs.find_thread_state(self.pid, tid) in (
                None, "Z", "X"
            ):  # fmt: skip
                return False
            raise permissions.diagnose_trace_failure(self.pid, exc) from exc
        try:
            ptrace.interrupt(tid)
        except OSError as exc:
            # It died right after the seize; its exit is still ours to reap.
            if exc.errno != errno.ESRCH:
                raise
        return True

    def _wait_first_stop(self, thread: _Thread, deadline: float) -> None:
        status = self._wait(thread.tid, deadline)
        if status is None or status.exited:
            del self._threads[thread.tid]
            return
        try:
            thread.record_stop(status)
        except OSError as exc:  # killed while stopped (SIGKILL wakes a tracee)
            if exc.errno != errno.ESRCH:
                raise
            self._reap(thread.tid)
            del self._threads[thread.tid]

    def _wait(self, tid: int, deadline: float) -> ptrace.WaitStatus | None:
        """The next waitpid status of ``tid``; None if it is no longer our tracee.

        Polls with WNOHANG so that a thread that never stops (uninterruptible
        sleep, vfork) cannot hang relive.
        """
        delay = 50e-6
        spin_until = time.monotonic() + _SPIN_S
        while True:
            try:
                status = ptrace.waitpid(tid, ptrace.WNOHANG)
            except ChildProcessError:
                return None
            if status is not None:
                return status
            now = time.monotonic()
            if now > deadline:
                raise ReliveError(
                    f"thread {tid} of process {self.pid} did not stop within {self.timeout:g} s",
                    hint="it may be in uninterruptible sleep (state D) or in vfork(); retry",
                )
            if now < spin_until:
                # Threads are held meanwhile: poll again at once (giving up the CPU,
                # which the thread may need to reach its stop) rather than sleep, since
                # even the shortest sleep costs more than a stop usually takes.
                os.sched_yield()
                continue
            time.sleep(delay)
            delay = min(delay * 2, 0.002)

    # -- single-stepping --------------------------------------------------

    @staticmethod
    def _restore_sigmask(tid: int, mask: int) -> None:
        try:
            ptrace.set_sigmask(tid, mask)
        except OSError as exc:
            if exc.errno != errno.ESRCH:  # ESRCH: it died, nothing to restore
                raise

    @staticmethod
    def _hand_back_current(thread: _Thread) -> int:
        """The signal to pass to the first PTRACE_SINGLESTEP.

        If the thread sits in a signal-delivery-stop, its signal is passed back:
        blocked by the step mask, the kernel re-queues it with its siginfo.
        Signals the mask cannot block are owed instead and delivered on release.
        """
        info, thread.current = thread.current, None
        if info is None:
            return 0
        if _STEP_SIGMASK >> (info.signo - 1) & 1:
            return info.signo
        thread.owed.append(info)
        return 0

    def _is_step_done(self, thread: _Thread) -> bool:
        """Classify the stop after a step; True when it is the step's own trap."""
        info = thread.current
        if info is None:  # the pending PTRACE_INTERRUPT (or a group-stop) fired first
            return False
        thread.current = None
        if info.signo == signal.SIGTRAP and not info.is_user_sent:
            return True
        if info.is_user_sent:  # e.g. kill -TRAP or SIGSTOP: deliver it later
            thread.owed.append(info)
            return False
        pc = host_registers().get_pc(ptrace.get_regs(thread.tid))
        raise ReliveError(
            f"single step of thread {thread.tid} in process {self.pid} raised "
            f"{signal.Signals(info.signo).name} at {pc:#x}"
        )

    # -- releasing --------------------------------------------------------

    def _release_thread(self, thread: _Thread) -> None:
        deadline = time.monotonic() + _RELEASE_GRACE_S
        # A stop we have not collected yet may be a signal-delivery-stop whose
        # signal a blind detach would drop: collect it first.
        if not thread.stopped and not self._settle(thread, deadline):
            return
        while True:
            try:
                self._detach(thread)
                return
            except OSError as exc:
                if exc.errno != errno.ESRCH:
                    raise
            # Not in a ptrace-stop: it died, or its stop is still on the way.
            if not self._settle(thread, deadline):
                return

    def _settle(self, thread: _Thread, deadline: float) -> bool:
        """Collect the thread's next stop; False if it exited (or never stops)."""
        try:
            status = self._wait(thread.tid, deadline)
        except ReliveError:
            return False  # stuck (state D); the kernel detaches when relive exits
        if status is None or status.exited:
            return False
        thread.record_stop(status)
        return True

    def _detach(self, thread: _Thread) -> None:
        """PTRACE_DETACH, delivering the first owed signal if the stop allows it."""
        pending = list(thread.iter_undelivered())
        if thread.stopped and thread.in_signal_stop and pending:
            first = pending.pop(0)
            ptrace.set_siginfo(thread.tid, first)
            ptrace.detach(thread.tid, first.signo)
        else:
            if thread.stopped:
                self._restart_interrupted_syscall(thread)
            ptrace.detach(thread.tid, 0)
        for info in pending:
            # Rare (two unblockable signals during one step): re-send; the
            # signal arrives, though its siginfo now names relive as the sender.
            ptrace.tgkill(self.pid, thread.tid, info.signo)

    def _restart_interrupted_syscall(self, thread: _Thread) -> None:
        """Undo the EINTR our stop caused in a syscall the kernel never restarts
        (with the time an epoll wait had left)."""
        regs = ptrace.get_regs(thread.tid)
        if host_registers().make_interrupted_syscall_restart(regs):
            shorten_restarted_wait(regs, self._epoll_waits.get(thread.tid))
            ptrace.set_regs(thread.tid, regs)

    def _reap(self, tid: int) -> None:
        """Collect the exit of a traced thread that was killed while stopped."""
        with contextlib.suppress(ReliveError):
            self._wait(tid, time.monotonic() + _RELEASE_GRACE_S)

    # -- helpers ----------------------------------------------------------

    def _get_thread(self, tid: int) -> _Thread:
        self._check_owner()
        thread = self._threads.get(tid)
        if thread is None or self._stopped_since is None:
            raise ReliveError(f"thread {tid} of process {self.pid} is not stopped by relive")
        return thread

    def _check_owner(self) -> None:
        # ptrace binds a tracee to the tracing OS thread; any other thread gets ESRCH.
        if threading.get_ident() != self._owner:
            raise ReliveError("a StoppedProcess must be used from the thread that created it")

    def _exited(self) -> ProcessGone:
        return ProcessGone(f"process {self.pid} exited during the reload")

    def _exited_during_step(self, tid: int) -> ReliveError:
        if not procfs.is_alive(self.pid):
            return self._exited()
        return ReliveError(f"thread {tid} of process {self.pid} exited while single-stepping")

    def _thread_error(self, tid: int, exc: OSError) -> ReliveError:
        if not procfs.is_alive(self.pid):
            return self._exited()
        return ReliveError(f"ptrace on thread {tid} of process {self.pid} failed: {exc}")


def _interrupt_and_cont(tid: int, signo: int) -> None:
    """Queue an interrupt, then resume: the thread stops before its next instruction."""
    ptrace.interrupt(tid)
    ptrace.cont(tid, signo)


def stop_all(pid: int, timeout: float = 2.0) -> StoppedProcess:
    """Seize and stop every thread of ``pid``; see :class:`StoppedProcess`."""
    return StoppedProcess.stop_all(pid, timeout)


def stop_one(pid: int, tid: int | None = None, timeout: float = 2.0) -> StoppedProcess:
    """Seize and stop one (by default an idle) thread; see :meth:`StoppedProcess.stop_one`."""
    return StoppedProcess.stop_one(pid, tid, timeout)


def pick_idle_thread(pid: int, exclude: Collection[int] = ()) -> int:
    """A thread of ``pid`` asleep in a system call (state S), the main thread first;
    the main thread (or any thread) if none is.  Raises ProcessGone."""
    tids = [t for t in procfs.iter_thread_ids(pid) if t not in exclude]
    if not tids:
        raise ProcessGone(f"process {pid} exited during the reload")
    tids.sort(key=lambda t: t != pid)
    for tid in tids:
        if procfs.find_thread_state(pid, tid) == "S":
            return tid
    return tids[0]

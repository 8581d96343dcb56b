"""Explain why PTRACE_SEIZE failed, in one line with the fix.

The kernel answers every refusal with a bare EPERM.  The causes are told apart
here from what /proc shows: another tracer, another user, Yama, or a missing
CAP_SYS_PTRACE capability.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from relive.errors import PermissionDenied, ProcessGone, ReliveError
from relive.process import procfs

YAMA_PTRACE_SCOPE = Path("/proc/sys/kernel/yama/ptrace_scope")
#: Bit number of CAP_SYS_PTRACE in the capability masks (include/uapi/linux/capability.h).
CAP_SYS_PTRACE = 19


def read_yama_scope(path: Path = YAMA_PTRACE_SCOPE) -> int | None:
    """The Yama ptrace_scope (0-3), or None when Yama is not built in or not readable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def has_cap_sys_ptrace(pid: int | str = "self") -> bool:
    """Whether a process (default: this one) has CAP_SYS_PTRACE in its effective set."""
    try:
        status = (procfs.PROC / str(pid) / "status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> CAP_SYS_PTRACE & 1)
    return False


def _name_of(pid: int) -> str:
    try:
        return procfs.get_process_name(pid)
    except ReliveError:
        return "?"


def _is_own_thread(tid: int) -> bool:
    return (procfs.PROC / "self" / "task" / str(tid)).exists()


def find_other_tracer(pid: int) -> PermissionDenied | None:
    """PermissionDenied naming the process that already traces ``pid``, or None."""
    tracer = procfs.find_tracer_pid(pid)
    if tracer is None:
        return None
    if _is_own_thread(tracer):
        return PermissionDenied(
            f"process {pid} is already traced by this relive process",
            hint="release the earlier stop before stopping it again",
        )
    return PermissionDenied(
        f"process {pid} is already traced by {_name_of(tracer)} (pid {tracer})",
        hint="detach gdb/strace first; a process can have only one tracer",
    )


def find_other_user(pid: int, my_uid: int | None = None) -> PermissionDenied | None:
    """PermissionDenied when ``pid`` runs as another user and we may not cross users."""
    me = os.getuid() if my_uid is None else my_uid
    if me == 0 or has_cap_sys_ptrace():
        return None
    # The kernel wants the caller's uid to equal the target's real, effective
    # and saved uid alike (a setuid program fails even if its real uid is ours).
    uids = procfs.get_uids(pid)[:3]
    if all(uid == me for uid in uids):
        return None
    return PermissionDenied(
        f"process {pid} runs as uid {uids[1]} but relive runs as uid {me}",
        hint="run relive as that user or as root",
    )


def find_yama_block(scope: int | None = None) -> PermissionDenied | None:
    """PermissionDenied when Yama's ptrace_scope forbids attaching to a non-child."""
    level = read_yama_scope() if scope is None else scope
    if level is None or level == 0:
        return None
    if level == 3:
        return PermissionDenied(
            "Yama ptrace_scope is 3: no process may attach with ptrace",
            hint="scope 3 cannot be lowered at runtime; change kernel.yama.ptrace_scope "
            "at boot, or start the program under `relive run`",
        )
    if has_cap_sys_ptrace():  # scopes 1 and 2 let CAP_SYS_PTRACE through
        return None
    allowed = "only to its own children" if level == 1 else "only with CAP_SYS_PTRACE"
    return PermissionDenied(
        f"Yama ptrace_scope is {level}: a process may attach {allowed}",
        hint="`echo 0 | sudo tee /proc/sys/kernel/yama/ptrace_scope`, "
        "or start the program under `relive run`",
    )


def find_missing_capability() -> PermissionDenied | None:
    """PermissionDenied when we lack CAP_SYS_PTRACE (typical for root in a container)."""
    if has_cap_sys_ptrace():
        return None
    return PermissionDenied(
        "relive lacks the CAP_SYS_PTRACE capability",
        hint="in a container: docker run --cap-add=SYS_PTRACE (and a seccomp profile "
        "that allows ptrace)",
    )


def diagnose_trace_failure(pid: int, err: OSError) -> ReliveError:
    """The relive error explaining a failed PTRACE_SEIZE of ``pid`` with errno ``err``."""
    if err.errno == errno.ESRCH or not procfs.is_alive(pid):
        return ProcessGone(
            f"no such process: {pid}", hint="check the pid; the program may have exited"
        )
    if err.errno != errno.EPERM:
        return ReliveError(f"cannot trace process {pid}: {os.strerror(err.errno or 0)}")
    try:
        found = find_other_tracer(pid) or find_other_user(pid) or find_yama_block()
    except ProcessGone as gone:  # it exited while we looked
        return gone
    if found is None and os.getuid() == 0:
        found = find_missing_capability() or _refused_to_root(pid)
    return found or PermissionDenied(
        f"not permitted to trace process {pid}",
        hint="the program may be setuid or non-dumpable; run relive as root",
    )


LSM_LIST = Path("/sys/kernel/security/lsm")


def _refused_to_root(pid: int, lsm_list: Path = LSM_LIST) -> PermissionDenied:
    """Root with CAP_SYS_PTRACE was refused: a Linux security module said no."""
    try:
        modules = [m for m in lsm_list.read_text().strip().split(",") if m]
    except OSError:
        modules = []
    deciding = [m for m in modules if m not in ("capability", "lockdown", "yama")]
    label = _security_label(pid)
    what = f"the security module{'s' if len(deciding) != 1 else ''} " + (
        ", ".join(deciding) if deciding else "in force (see /sys/kernel/security/lsm)"
    )
    confined = f"; the program runs confined as {label}" if label else ""
    return PermissionDenied(
        f"the kernel refused to let relive trace process {pid} although relive runs as root "
        f"with CAP_SYS_PTRACE: {what} forbid it{confined}",
        hint="the denial is in the kernel log (`journalctl -k | grep -i denied`); allow "
        "ptrace in that module's policy, or start the program under `relive run`",
    )


def _security_label(pid: int) -> str:
    """The target's LSM label (AppArmor profile, SELinux context), if it has one."""
    for name in ("attr/apparmor/current", "attr/current"):
        try:
            label = (Path("/proc") / str(pid) / name).read_text().strip("\0\n ")
        except OSError:
            continue
        if label and label not in ("unconfined", "kernel"):
            return label
    return ""

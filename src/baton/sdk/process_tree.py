"""The processes of one task attempt (``ProcessExecutor``): a supervisor, the task's process under it, and what that
starts. The supervisor is forked from the flow's process; it forks the task's process and, on Linux, is its "child
subreaper", so that what the task starts, even a daemon that forked twice, stays in its tree.

How the tree ends:

* the task's process ends (however: ``os._exit``, a signal): the supervisor kills what is left and tells how it
  ended;
* the flow's process stops the attempt (a timeout, a cancellation): it kills the tree (SIGKILL);
* the flow's process dies without doing so (SIGKILL, out of memory): the supervisor, which watches it, kills the
  tree and exits; the task's process also dies with its supervisor (``PR_SET_PDEATHSIG``: the supervisor has one
  thread, so its death is its only thread's);
* SIGTERM and SIGINT (the agent cancelling the run signals its whole process group) do not end the supervisor nor
  the task's process: the flow's process decides, its cancelling kills them and records the task runs Cancelled.
  The task's process only ignores them by a handler (not SIG_IGN, which its programs would inherit across
  ``exec``), and what it forks gets the default actions back.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PR_SET_CHILD_SUBREAPER = 36
_KILL_ROUNDS = 20  # a tree that forks while it is being killed: scan again, a bounded number of times
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _find_prctl() -> Callable[..., int] | None:
    """libc's ``prctl``, looked up once, at import: never in a forked child, where loading may take a lock that a
    thread of the flow's process held at the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


_PRCTL = _find_prctl()


def _prctl(option: int, value: int) -> bool:
    return _PRCTL is not None and _PRCTL(option, value, 0, 0, 0) == 0


def supervise(attempt: Callable[[], None], flow_pid: int) -> int | None:
    """The supervisor's work (in the process forked from the flow's, ``flow_pid``): ``attempt()`` in a process of its
    own, then what that left killed. Returns the task process's exit code (negative: the signal that killed it), or
    None when the flow's process died first (the tree is killed then)."""
    for number in _STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    flow = _pidfd(flow_pid)
    if os.getppid() != flow_pid:  # it died before we watched it
        return None
    supervisor = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            _become_task_process(supervisor)
            attempt()
        finally:
            os._exit(0)  # never back into the supervisor's code (nor multiprocessing's exit handlers)
    code = _wait(pid, flow)
    kill_descendants(supervisor)  # what the task left; when the flow's process died, the task's process too
    return code


def _become_task_process(supervisor: int) -> None:
    if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) and os.getppid() != supervisor:
        os._exit(1)  # the supervisor died before the request: nobody would kill this process
    for number in _STOP_SIGNALS:
        signal.signal(number, _ignored)
    os.register_at_fork(after_in_child=_default_signals)


def _ignored(number: int, frame: Any) -> None:
    """SIGTERM or SIGINT in the task's process: the flow's process decides when the attempt ends."""


def _default_signals() -> None:
    for number in _STOP_SIGNALS:
        signal.signal(number, signal.SIG_DFL)


def _pidfd(pid: int) -> int | None:
    """A descriptor readable once process ``pid`` (all its threads) ended; None where there is none (not Linux 5.3+)."""
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):
        return None


def _wait(pid: int, flow: int | None) -> int | None:
    """The exit code of child ``pid``, or None (``pid`` left running) when the process behind ``flow`` ends first."""
    task = _pidfd(pid) if flow is not None else None
    if flow is not None and task is not None:
        try:
            ready, _, _ = select.select([task, flow], [], [])
        finally:
            os.close(task)
        if task not in ready:
            return None
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def kill_tree(process: Any) -> None:
    """SIGKILL ``process`` (a multiprocessing process) and its descendants (those first, while it still adopts
    their orphans). A process already closed (its attempt over) is left alone."""
    try:
        alive = process.is_alive()
    except ValueError:  # closed
        return
    if alive and process.pid is not None:
        kill_descendants(process.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.join(5)


def kill_descendants(pid: int) -> None:
    """SIGKILL every descendant of ``pid`` (Linux; elsewhere none are found). ``pid`` being a subreaper, the
    orphans of those killed come back under it: scan again until none is left."""
    for _ in range(_KILL_ROUNDS):
        found = _descendants(pid)
        if not found:
            return
        for descendant in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(descendant, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in _children(pending.pop()):
            if child not in found:
                found.append(child)
                pending.append(child)
    return found


def _children(pid: int) -> list[int]:
    """The living (not zombie) children of ``pid``, from ``/proc`` (empty where there is none)."""
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError, ValueError):
                children.extend(int(child) for child in (task / "children").read_text().split())
    return [child for child in children if not _zombie(child)]


def _zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # gone already
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}

"""The local agent's warm process: the engine imported once, one forked child per flow run (``agent/prefork.py``).

``python -m baton.engine.forkserver FD``: FD is one end of a ``SOCK_SEQPACKET`` socket pair whose other end the
agent keeps. Messages are JSON; file descriptors travel beside them (``SCM_RIGHTS``).

- agent → here: ``{"op": "fork", "id": N}`` with three descriptors: the read end of a pipe that carries the run's
  spec (environment, working directory, user; read by the child only), and the child's stdout and stderr.
  ``{"op": "release", "pid": P}``: the agent has read P's exit, its zombie may go (until then P stays reserved, so
  the agent's signals to its process group can reach no other process).
- here → agent: ``{"op": "forked", "id": N, "pid": P}`` or ``{"op": "error", "id": N, "message": ...}``, and
  ``{"op": "exited", "pid": P, "returncode": R}`` (R as ``subprocess`` gives it: ``-signal`` when killed).

This process never sees a run's token or environment: the child reads its spec from the pipe after the fork, so
no run's secrets can linger in the memory that later children are copied from. It has one thread (forking a
process with several is unsafe), waits on the socket and on one pidfd per child, and ends when the agent's end
closes; children it leaves behind are reparented and reaped by the system, and go on as spawned ones would.

The child becomes what ``subprocess.Popen([python, "-m", "baton.engine"], start_new_session=True, ...)`` makes:
its own session and process group (before the agent hears of it), the agent's rlimits and umask, its working
directory then the run's user and groups (in subprocess's order), the run's environment only (``os.environ``
replaced, ``TZ`` re-read), its directory first on ``sys.path`` then the run's ``PYTHONPATH`` made absolute, stdin
from /dev/null, the signal dispositions of a new interpreter, ``__main__`` and ``sys.argv`` of ``python -m
baton.engine``, and the interpreter's own ending: the child leaves the server's frames by an exception, runs the
engine, and ends as the interpreter would: non-daemon threads are joined, ``atexit`` handlers run, what the run
imported is released (its objects' finalizers run) and the standard streams are flushed, and an uncaught exception
or Ctrl-C ends it as it would a spawned one. Only the tear-down of the modules every run shares is skipped
(``_end_run``: it was half a run's CPU), so what a run left in their globals is not finalized, and C-level
``atexit(3)`` handlers do not run. ``/proc/PID/environ`` shows this process's
start-up environment with the run's id written over a placeholder (``_show_run_id``), so a restarted agent
recognises it as it does a spawned run. Unlike a spawned process it shares this process's hash seed, and
``/proc/PID/cmdline`` names ``baton.engine.forkserver``; interpreter start-up variables (``PYTHON*`` but
PYTHONPATH, ``LC_*``, ``LANG``) cannot change in a fork, so the agent spawns a run whose environment changes one
(``agent/prefork.py``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import gc
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable
from typing import Any, NoReturn

from baton.agent.hardening import set_dumpable

_MESSAGE_BYTES = 4096
# The warm process starts with this placeholder; a child writes its run's id over it (``_show_run_id``).
RUN_ID_VARIABLE = "BATON_FLOW_RUN_ID"
RUN_ID_PLACEHOLDER = "00000000-0000-0000-0000-000000000000"
# Descriptors of this process that a child must not keep (the socket, the pidfds), as _Server opens them.
_PRIVATE_FDS: set[int] = set()
_BASE_PATH: list[str] = []
# The modules of the warm process when it is ready (every run shares them): a run's exit leaves them be (_end_run).
_PRELOADED: set[str] = set()


def _preload() -> None:
    """Import what every flow run imports, once, here."""
    import baton.client.http
    import baton.engine.runner
    import baton.sdk.flows
    import baton.sdk.tasks
    import baton.settings  # noqa: F401


def _returncode(info: os.waitid_result) -> int:
    """The child's exit as ``subprocess`` reports it: its exit status, or ``-N`` when signal N ended it."""
    if info.si_code == os.CLD_EXITED:
        return int(info.si_status)
    return -int(info.si_status)


def _read_spec(fd: int) -> dict[str, Any]:
    chunks = []
    with os.fdopen(fd, "rb") as pipe:
        while chunk := pipe.read(65536):
            chunks.append(chunk)
    spec: dict[str, Any] = json.loads(b"".join(chunks))
    return spec


def _show_run_id(run_id: str) -> None:
    """Write ``run_id`` over the placeholder this process was started with, in the memory ``/proc/PID/environ``
    reads: a restarted agent recognises a run's process by it (``agent/local.py``, ``kill_stored``) as it does a
    spawned one's. Before ``os.environ`` changes anything: C's ``environ`` still points at the original strings."""
    if len(run_id) != len(RUN_ID_PLACEHOLDER):
        return
    entry = f"{RUN_ID_VARIABLE}={RUN_ID_PLACEHOLDER}".encode()
    environ = ctypes.POINTER(ctypes.c_void_p).in_dll(ctypes.CDLL(None), "environ")
    index = 0
    while (address := environ[index]) is not None:
        if ctypes.string_at(address, len(entry) + 1) == entry + b"\0":
            ctypes.memmove(address + len(RUN_ID_VARIABLE) + 1, run_id.encode(), len(run_id))
            return
        index += 1


def _become_the_run(spec_fd: int, out_fd: int, err_fd: int) -> None:
    """In the child, in its own session already: take the run's spec, descriptors, directory, user and
    environment, in the order of ``subprocess``."""
    spec = _read_spec(spec_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    for source, target in ((devnull, 0), (out_fd, 1), (err_fd, 2)):
        os.dup2(source, target)
    for fd in {devnull, out_fd, err_fd} - {0, 1, 2}:
        os.close(fd)
    if spec.get("cwd"):
        os.chdir(spec["cwd"])
    if spec.get("uid") is not None:  # groups, then group, then user
        os.setgroups(spec.get("groups") or [])
        os.setgid(spec["gid"])
        os.setuid(spec["uid"])
    set_dumpable(True)  # as exec makes a process (the warm one is not: see main)
    _signals_as_after_exec(set(spec.get("ignored_signals") or []))
    environment: dict[str, str] = spec["env"]
    _show_run_id(environment.get(RUN_ID_VARIABLE, ""))
    os.environ.clear()
    os.environ.update(environment)
    time.tzset()  # the run's TZ, as a new interpreter reads it
    # sys.path as a new interpreter builds it: its directory, then PYTHONPATH, then the installation's (site makes
    # the entries absolute and drops duplicates)
    extra = [os.path.abspath(path) for path in environment.get("PYTHONPATH", "").split(os.pathsep) if path]
    sys.path[:] = list(dict.fromkeys([os.getcwd(), *extra, *_BASE_PATH]))
    sys.argv[:] = [os.path.join(os.path.dirname(__file__), "__main__.py")]


def _signals_as_after_exec(ignored: set[int]) -> None:
    """The dispositions a spawned engine starts with: exec keeps what the agent ignores (subprocess restores
    SIGPIPE and SIGXFSZ first) and resets the rest; then Python ignores SIGPIPE and SIGXFSZ, and turns a default
    SIGINT into KeyboardInterrupt. The agent's at the fork, not the warm process's: it may have started before the
    agent set its own handlers (under nohup or a shell's background job, SIGINT and SIGHUP start ignored)."""
    for number in signal.valid_signals():
        if number in (signal.SIGKILL, signal.SIGSTOP):
            continue
        with contextlib.suppress(OSError, ValueError):  # a signal Python may not set (reserved by the C library)
            signal.signal(number, signal.SIG_IGN if number in ignored else signal.SIG_DFL)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    if signal.getsignal(signal.SIGINT) == signal.SIG_DFL:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _run_child(spec_fd: int, out_fd: int, err_fd: int) -> NoReturn:
    """The forked child, once the server's frames are gone (see ``main``): runs the engine and ends with its exit
    code (:func:`_end_run`). Its exceptions propagate, and the interpreter then ends as a spawned one would (threads
    joined, atexit run, files flushed)."""
    _become_the_run(spec_fd, out_fd, err_fd)
    import baton.engine.__main__ as engine

    sys.modules["__main__"] = engine  # what ``python -m baton.engine`` runs as __main__
    _end_run(engine.main([]))


def _end_run(code: int) -> NoReturn:
    """End the run's process as the interpreter's exit does, step for step (``Py_FinalizeEx``), but without tearing
    down the modules the warm process imported for every run.

    That tear-down, object by object, was half a forked run's CPU (~34 of ~70 ms on 2 cores, ``bench/throughput.py``):
    each decrement writes to an object's page, so it copies nearly every page the fork shared. It frees nothing the
    system would not free at ``_exit``. What the run itself imported (its flow's modules) does go, as the interpreter
    lets modules go: out of ``sys.modules``, a collection while their globals still stand (so finalizers in cycles
    can use them), then their globals cleared, newest first, and another collection (a file a flow module still
    holds is flushed). An error in a step is printed and the next step runs, as at exit.
    """
    shutdown = getattr(threading, "_shutdown", None)  # the interpreter's first step; private, so guarded
    if shutdown is not None:
        _step(shutdown)  # waits for non-daemon threads; runs threading's exit hooks (concurrent.futures' pools)
    _step(atexit._run_exitfuncs)  # an exception of a handler is printed and the others still run
    _step(_release_run_modules)
    for stream in (sys.stdout, sys.stderr):
        if stream is None or getattr(stream, "closed", False):
            continue  # as the interpreter: nothing to flush
        try:
            stream.flush()
        except Exception:
            code = 120  # the interpreter's exit code when flushing its standard streams fails
    # What C code buffered in stdio (a C extension's printf): exit(3) would flush it, _exit does not
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).fflush(None)
    os._exit(code)


def _step(step: Callable[[], object]) -> None:
    """One step of the exit: an exception (Ctrl-C included) is printed, as the interpreter prints one it ignores."""
    try:
        step()
    except BaseException:  # the exit goes on whatever a step raised, as the interpreter's does
        traceback.print_exc()


def _release_run_modules() -> None:
    """Let go of the modules the run imported, as the interpreter's exit does (see :func:`_end_run`)."""
    modules: list[types.ModuleType] = []
    for name in reversed(list(sys.modules)):  # newest first; a copy: a daemon thread may import meanwhile
        if name in _PRELOADED:
            continue
        module = sys.modules.pop(name, None)  # a finalizer may have taken it out already
        if isinstance(module, types.ModuleType):
            modules.append(module)
    gc.collect()  # the run's garbage, its modules' globals still standing; the warm process's objects are frozen
    # The interpreter clears every module's globals in the end, the warm process's too: what a run module still
    # holds (a file in its globals, while a shared registry holds its functions) is finalized only then. Here
    # the run's modules are cleared, which releases the same objects unless a shared module holds them directly.
    for module in modules:
        with contextlib.suppress(Exception):
            object.__getattribute__(module, "__dict__").clear()  # not a lazy module's __getattr__
    modules.clear()
    gc.collect()


class _BecomeRun(Exception):  # not an error: how a child leaves the server's loop
    """Raised in a forked child to unwind the server's frames; carries the run's three descriptors."""

    def __init__(self, fds: list[int]) -> None:
        super().__init__("forked")
        self.fds = fds


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    sock.send(json.dumps(message).encode())


class _Server:
    """Forks on request and reports exits until the agent's end of the socket closes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.children: dict[int, int] = {}  # pidfd -> pid, while it runs
        self.exited: dict[int, int] = {}  # pid -> pidfd of a child whose exit was reported, until released
        self.poller = select.poll()
        self.poller.register(sock.fileno(), select.POLLIN)
        _PRIVATE_FDS.add(sock.fileno())

    def serve(self) -> None:
        while True:
            for fd, _ in self.poller.poll():
                if fd != self.sock.fileno():
                    self._report_exit(fd)
                elif not self._handle_message():
                    return  # the agent is gone

    def _report_exit(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.poller.unregister(pidfd)
        info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT)
        self.exited[pid] = pidfd
        if info is not None:
            _send(self.sock, {"op": "exited", "pid": pid, "returncode": _returncode(info)})

    def _handle_message(self) -> bool:
        data, fds, _, _ = socket.recv_fds(self.sock, _MESSAGE_BYTES, 3)
        if not data:
            return False
        message = json.loads(data)
        if message.get("op") == "release":
            self._release(int(message["pid"]))
        elif message.get("op") == "fork" and len(fds) == 3:
            self._fork(message["id"], fds)
        else:
            _close_all(fds)
            _send(self.sock, {"op": "error", "id": message.get("id"), "message": "bad request"})
        return True

    def _release(self, pid: int) -> None:
        pidfd = self.exited.pop(pid, None)
        if pidfd is not None:
            os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
            os.close(pidfd)
            _PRIVATE_FDS.discard(pidfd)

    def _fork(self, request_id: int, fds: list[int]) -> None:
        # The answer waits until the child leads its own session (it closes ``in_session`` then), as Popen returns
        # only after its child's setsid and exec: a cancel right after the answer must reach the run's group.
        waiting, in_session = os.pipe()
        try:
            pid = os.fork()
        except OSError as exc:
            _close_all([*fds, waiting, in_session])
            _send(self.sock, {"op": "error", "id": request_id, "message": f"fork failed: {exc}"})
            return
        if pid == 0:
            os.close(waiting)
            os.setsid()
            os.close(in_session)
            self.sock.detach()  # the parent's: closed below without closing the socket object's descriptor twice
            _close_all(list(_PRIVATE_FDS))
            raise _BecomeRun(fds)
        os.close(in_session)
        os.read(waiting, 1)  # b"" once the child has closed its end (or died)
        os.close(waiting)
        _close_all(fds)
        pidfd = os.pidfd_open(pid)
        _PRIVATE_FDS.add(pidfd)
        self.children[pidfd] = pid
        self.poller.register(pidfd, select.POLLIN)
        _send(self.sock, {"op": "forked", "id": request_id, "pid": pid})


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m baton.engine.forkserver FD (started by the local agent)", file=sys.stderr)
        return 2
    sock = socket.socket(fileno=int(args[0]))
    python_path = {path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path}
    _BASE_PATH[:] = [path for path in sys.path[1:] if path not in python_path]
    _preload()
    # Everything imported so far lives as long as any run: moved out of the collector's reach, no run's collection
    # walks it (each walk would write to every object's header, copying every page the fork shared) and its
    # interpreter's exit does not collect it object by object (the documented use of gc.freeze before fork).
    gc.collect()
    gc.freeze()
    _PRELOADED.update(sys.modules)
    # A flow runs as this process's user unless --run-as: it must not attach to this process and so to every run
    # forked after it (the agent does the same to itself, agent/hardening.py)
    set_dumpable(False)
    sys.stdout.flush()
    sys.stderr.flush()
    _send(sock, {"op": "ready"})
    try:
        with sock:
            _Server(sock).serve()
    except _BecomeRun as child:
        _run_child(*child.fds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

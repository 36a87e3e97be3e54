"""The local agent's side of the warm engine process (``engine/forkserver.py``): fork a run instead of spawning it.

A spawned ``python -m baton.engine`` spends ~300 ms of CPU importing pydantic, httpx and the engine before its
first request; a child forked from a process that imported them once starts at its first line of work. The driver
(``local.py``) asks :class:`ForkServer` for a :class:`ForkedProcess`, which answers the part of ``subprocess.Popen``
the driver uses (``pid``, ``poll``, ``wait``, ``returncode``, ``stdout``), and spawns when it must:

- the warm process is off (``--no-prefork``) or failed to start;
- the run's environment changes what an interpreter reads only when it starts (``PYTHON*`` but PYTHONPATH,
  ``LC_*``, ``LANG``), which a fork cannot change.

The warm process's environment is the agent's allow-listed one (never its key) with a placeholder run id, which
each child overwrites with its own (``forkserver._show_run_id``): a restarted agent recognises a forked run's
process by its ``/proc/PID/environ`` as it does a spawned one's (``local.py``, ``kill_stored``). A warm process
that dies is not replaced: the agent spawns every later run (and says so).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any

from baton.engine.forkserver import RUN_ID_PLACEHOLDER, RUN_ID_VARIABLE

logger = logging.getLogger("baton.agent")

_MESSAGE_BYTES = 4096
# How long a fork request or the warm process's start may take before the run is spawned instead.
_REPLY_SECONDS = 30.0


def needs_spawn(run_env: dict[str, str], base_env: dict[str, str]) -> str | None:
    """Why a run with environment ``run_env`` cannot be forked from a process started with ``base_env``, or None."""
    for name in sorted(set(run_env) | set(base_env)):
        python = name.startswith("PYTHON") and name != "PYTHONPATH"
        if (python or name == "LANG" or name.startswith("LC_")) and run_env.get(name) != base_env.get(name):
            return f"its environment sets {name}, which Python reads only when it starts"
    return None


def ignored_signals() -> list[int]:
    """The signals this process ignores now, which a process it spawned would start with ignored too (exec keeps
    them; ``subprocess`` restores SIGPIPE and SIGXFSZ to default first)."""
    restored = {signal.SIGPIPE, signal.SIGXFSZ}
    return [int(number) for number in signal.valid_signals() if number not in restored and _ignored(number)]


def _ignored(number: int) -> bool:
    try:
        return signal.getsignal(number) == signal.SIG_IGN
    except (OSError, ValueError):
        return False


class ForkedProcess:
    """A run forked by the warm process: the part of ``subprocess.Popen`` the local driver uses.

    Its exit is reported by the warm process, which keeps the zombie (so the pid and its process group stay this
    run's) until :meth:`poll` has read it, as ``Popen.poll`` reaps only then. The agent holds a pidfd of it from the
    fork on: should the warm process die, the run's end is still seen (its exit code is then lost: 1).
    """

    def __init__(self, server: ForkServer, stdout: IO[str] | None) -> None:
        self._server = server
        self.pid = -1
        self.stdout = stdout
        self.returncode: int | None = None
        self.pidfd = -1
        self._reported: int | None = None
        self._ended = threading.Event()

    def forked(self, pid: int) -> None:
        """The warm process forked it as ``pid`` (its zombie keeps the pid ours until released)."""
        self.pid = pid
        with contextlib.suppress(OSError):
            self.pidfd = os.pidfd_open(pid)

    def exited(self, returncode: int) -> None:
        """Its exit, as the warm process reports it (or 1 when that process died first)."""
        if self._reported is None:
            self._reported = returncode
            on_exit = self._server.on_exit
            if on_exit is not None:
                try:
                    on_exit()  # its end is readable (poll) already
                except Exception:  # the agent's wake-up failed: its next inspection sees the end anyway
                    logger.exception("could not tell the agent of run process %s's end", self.pid)
            self._ended.set()

    def has_exited(self) -> bool:
        """Whether it has ended, without releasing it (its pid stays reserved)."""
        return self._ended.is_set()

    def poll(self) -> int | None:
        if self.returncode is None and self._reported is not None:
            self.returncode = self._reported
            if self.pidfd != -1:
                os.close(self.pidfd)
                self.pidfd = -1
            self._server.release(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Like ``Popen.wait``: the exit code; raises ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(["python", "-m", "baton.engine"], timeout or 0)
        code = self.poll()
        assert code is not None
        return code


class ForkServer:
    """One warm engine process for an agent; thread-safe. Started by :meth:`start` (or the first fork); once it
    has died or failed to start, :meth:`fork` refuses and the driver spawns."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = {**env, RUN_ID_VARIABLE: RUN_ID_PLACEHOLDER}
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, tuple[threading.Event, dict[str, Any], ForkedProcess]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._gone = False  # failed to start, died, or closed: never started again
        # Called (from a reader thread, possibly under this server's lock: it must not block) when a child has
        # exited, so the agent sees the end now rather than at its next inspection.
        self.on_exit: Callable[[], None] | None = None

    def start(self) -> bool:
        """Start the warm process unless it is running or gone; whether it is running."""
        with self._lock:
            return self._start() is not None

    def _start(self) -> socket.socket | None:
        if self._socket is not None or self._gone:
            return self._socket
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "baton.engine.forkserver", str(theirs.fileno())],
                pass_fds=[theirs.fileno()],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                start_new_session=True,  # the agent's terminal signals are the agent's; it stops this one itself
            )
        except OSError as exc:
            logger.warning("cannot start the warm engine process, spawning every run: %s", exc)
            self._gone = True
            ours.close()
            return None
        finally:
            theirs.close()
        ours.settimeout(_REPLY_SECONDS)
        try:
            ready = json.loads(ours.recv(_MESSAGE_BYTES) or b"{}")
        except (OSError, ValueError):
            ready = {}
        if ready.get("op") != "ready":
            logger.warning("the warm engine process did not start, spawning every run")
            self._gone = True
            self._process.kill()
            self._process.wait()
            ours.close()
            return None
        ours.settimeout(None)
        self._socket = ours
        threading.Thread(target=self._read, args=(ours,), name="baton-forkserver", daemon=True).start()
        return ours

    def _read(self, sock: socket.socket) -> None:
        """Dispatch the warm process's messages until it ends; then see its children's ends through pidfds."""
        while True:
            try:
                data = sock.recv(_MESSAGE_BYTES)
            except OSError:
                data = b""
            if not data:
                break
            try:
                self._dispatch(json.loads(data))
            except (ValueError, KeyError, TypeError) as exc:  # a bug on one side: say so, keep the others going
                logger.error("bad message from the warm engine process: %s", exc)
        with self._lock:
            self._gone = True
            self._socket = None
            orphans = list(self._children.values())
            self._children.clear()
            for event, reply, _ in self._replies.values():
                reply.setdefault("op", "error")
                reply.setdefault("message", "the warm engine process ended")
                event.set()
        if orphans:
            logger.warning("the warm engine process ended: the exit codes of %s running runs are lost", len(orphans))
        for child in orphans:  # their processes go on; each run still reports its own end to the API
            threading.Thread(target=_wait_orphan, args=(child,), daemon=True).start()

    def _dispatch(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        with self._lock:
            if op == "exited":
                pid, code = int(message["pid"]), int(message["returncode"])
                child = self._children.pop(pid, None)
                if child is not None:
                    child.exited(code)
                    return
            elif message.get("id") in self._replies:
                event, reply, child = self._replies[message["id"]]
                if op == "forked":  # registered here, before the next message: its exit cannot come first
                    child.forked(int(message["pid"]))
                    self._children[child.pid] = child
                reply.update(message)
                event.set()
                return
            elif op == "forked":
                pid = int(message["pid"])  # a request given up on: its child exits at once (empty spec)
                self._children[pid] = ForkedProcess(self, None)
                self._children[pid].forked(pid)
                return
        if op == "exited":
            self.release(int(message["pid"]))  # nobody waits for it

    def fork(self, spec: dict[str, Any], stdout_fd: int, stderr_fd: int, stdout: IO[str] | None) -> ForkedProcess:
        """Fork a run with ``spec`` (``env``, ``cwd``, ``uid``, ``gid``, ``groups``).

        Raises:
            OSError: no warm process, or it could not fork (the caller spawns instead).
        """
        child = ForkedProcess(self, stdout)
        with self._lock:
            sock = self._start()
            if sock is None:
                raise OSError("no warm engine process")
            request_id = next(self._ids)
            event, reply = threading.Event(), dict[str, Any]()
            self._replies[request_id] = (event, reply, child)
        spec_read, spec_write = os.pipe()
        try:
            try:
                socket.send_fds(
                    sock, [json.dumps({"op": "fork", "id": request_id}).encode()], [spec_read, stdout_fd, stderr_fd]
                )
            finally:
                os.close(spec_read)
            if not event.wait(_REPLY_SECONDS) or reply.get("op") != "forked":
                raise OSError(f"the warm engine process could not fork: {reply.get('message', 'no answer')}")
            with os.fdopen(spec_write, "wb") as pipe:  # the child reads it (and waits for it) after the fork
                spec_write = -1
                pipe.write(json.dumps(spec).encode())
            return child
        finally:
            if spec_write != -1:
                os.close(spec_write)
            with self._lock:
                self._replies.pop(request_id, None)

    def release(self, pid: int) -> None:
        """Let the warm process reap ``pid``, whose exit has been read."""
        sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.send(json.dumps({"op": "release", "pid": pid}).encode(), socket.MSG_DONTWAIT)

    def close(self) -> None:
        """Stop the warm process; runs it forked go on (each in its own session)."""
        with self._lock:
            sock, process = self._socket, self._process
            self._socket, self._gone = None, True
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the reader; the warm process reads EOF and exits
            sock.close()
        if process is not None:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_orphan(child: ForkedProcess) -> None:
    """A run whose warm process died: its end, seen through the pidfd taken at the fork (its code is lost)."""
    if child.pidfd != -1:
        select.select([child.pidfd], [], [])
    child.exited(1)

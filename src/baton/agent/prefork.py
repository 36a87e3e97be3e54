"""The local agent's side of the warm engine process (``engine/forkserver.py``): fork a run instead of spawning it.

A spawned ``python -m baton.engine`` spends ~300 ms of CPU importing pydantic, httpx and the engine before its
first request; a child forked from a process that imported them once starts at its first line of work. The driver
(``local.py``) asks :class:`ForkServer` for a :class:`ForkedProcess`, which answers the part of ``subprocess.Popen``
the driver uses (``pid``, ``poll``, ``wait``, ``returncode``, ``stdout``), and spawns when it must:

- the warm process is off (``--no-prefork``) or failed to start;
- the run's environment changes what an interpreter reads only when it starts (``PYTHON*`` but PYTHONPATH,
  ``LC_*``, ``LANG``), which a fork cannot change.

The fork server's environment is the agent's allow-listed one (never its key) plus ``BATON_FORKSERVER``, a random
token: a forked run's ``/proc/PID/environ`` shows it, which is how a restarted agent recognises its process
(``local.py``, ``kill_stored``), together with the process's start time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import secrets
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger("baton.agent")

TOKEN_VARIABLE = "BATON_FORKSERVER"  # noqa: S105 - the name of a variable, not a secret
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


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (with its pid, it names one process), or None."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class ForkedProcess:
    """A run forked by the warm process: the part of ``subprocess.Popen`` the local driver uses.

    Its exit is reported by the fork server, which keeps the zombie (so the pid and its process group stay this
    run's) until :meth:`poll` has read it, as ``Popen.poll`` reaps only then.
    """

    def __init__(self, server: ForkServer, pid: int, stdout: IO[str] | None) -> None:
        self._server = server
        self.pid = pid
        self.stdout = stdout
        self.returncode: int | None = None
        self.started = start_time(pid)
        self._reported: int | None = None
        self._ended = threading.Event()

    def _exited(self, returncode: int) -> None:
        self._reported = returncode
        self._ended.set()

    def has_exited(self) -> bool:
        """Whether it has ended, without releasing it (its pid stays reserved)."""
        return self._ended.is_set()

    def poll(self) -> int | None:
        if self.returncode is None and self._reported is not None:
            self.returncode = self._reported
            self._server.release(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        self._ended.wait(timeout)
        return self.poll()


class ForkServer:
    """One warm engine process for an agent; thread-safe. Started on first use, again after it died."""

    def __init__(self, env: dict[str, str]) -> None:
        self.token = secrets.token_hex(16)
        self.env = {**env, TOKEN_VARIABLE: self.token}
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None
        self._socket: socket.socket | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, tuple[threading.Event, dict[str, Any]]] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._early_exits: dict[int, int] = {}  # exits reported before the fork's reply was handled
        self._failed_at_start = False

    def _start(self) -> socket.socket | None:
        """The socket of a running, ready warm process (started now if needed); None when it cannot start."""
        if self._socket is not None and self._process is not None and self._process.poll() is None:
            return self._socket
        if self._failed_at_start:
            return None
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
            self._failed_at_start = True
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
            self._failed_at_start = True
            self._process.kill()
            self._process.wait()
            ours.close()
            return None
        ours.settimeout(None)
        self._socket = ours
        threading.Thread(target=self._read, args=(ours,), name="baton-forkserver", daemon=True).start()
        return ours

    def _read(self, sock: socket.socket) -> None:
        """Dispatch the warm process's messages until it ends; then no exit of its children can be read."""
        while True:
            try:
                data = sock.recv(_MESSAGE_BYTES)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            with self._lock:
                if message.get("op") == "exited":
                    child = self._children.pop(int(message["pid"]), None)
                    if child is None:
                        self._early_exits[int(message["pid"])] = int(message["returncode"])
                    else:
                        child._exited(int(message["returncode"]))
                elif message.get("id") in self._replies:
                    event, reply = self._replies[message["id"]]
                    reply.update(message)
                    event.set()
        with self._lock:
            orphans = list(self._children.values())
            self._children.clear()
            for event, reply in self._replies.values():
                reply.setdefault("op", "error")
                reply.setdefault("message", "the warm engine process ended")
                event.set()
        if orphans:
            logger.warning("the warm engine process ended: the exit codes of %s running runs are lost", len(orphans))
        for child in orphans:  # their processes go on; each run still reports its own end to the API
            threading.Thread(target=_wait_unparented, args=(child,), daemon=True).start()

    def fork(self, spec: dict[str, Any], stdout_fd: int, stderr_fd: int, stdout: IO[str] | None) -> ForkedProcess:
        """Fork a run with ``spec`` (``env``, ``cwd``, ``uid``, ``gid``, ``groups``).

        Raises:
            OSError: no warm process, or it could not fork (the caller spawns instead).
        """
        with self._lock:
            sock = self._start()
            if sock is None:
                raise OSError("no warm engine process")
            request_id = next(self._ids)
            event, reply = threading.Event(), dict[str, Any]()
            self._replies[request_id] = (event, reply)
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
            pid = int(reply["pid"])
            with self._lock:
                child = ForkedProcess(self, pid, stdout)
                early = self._early_exits.pop(pid, None)
                if early is None:
                    self._children[pid] = child
                else:
                    child._exited(early)
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
        with self._lock:
            sock = self._socket
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.send(json.dumps({"op": "release", "pid": pid}).encode())

    def close(self) -> None:
        """Stop the warm process; runs it forked go on (each in its own session)."""
        with self._lock:
            sock, process = self._socket, self._process
            self._socket = None
        if sock is not None:
            sock.close()  # its end reads EOF and it exits
        if process is not None:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_unparented(child: ForkedProcess) -> None:
    """A child of a warm process that died: see its end through a pidfd (its exit code is not ours to read)."""
    try:
        pidfd = os.pidfd_open(child.pid)
    except OSError:
        child._exited(1)
        return
    try:
        select.select([pidfd], [], [])
    finally:
        os.close(pidfd)
    child._exited(1)

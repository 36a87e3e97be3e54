"""API servers for the tests, forked from a process that has already imported the server (one per pytest worker).

``python -m baton.server`` spends ~0.8 of its ~1.1 s of start-up CPU importing FastAPI, SQLAlchemy, pydantic,
uvicorn and Baton's routes; the tests start ~75 servers (replicas, restarts, servers with settings of their own), a
tenth of the CPU of ``make test`` (issue 12). The zygote imports all that once; each server is then a fork that runs
``baton.server``'s ``__main__`` as ``python -m baton.server`` does (``runpy``), with its environment (``os.environ``
replaced whole), working directory and log file: the same settings, migrations, bootstrap, uvicorn, signals and exit
codes. It is a real process with its own pid, port, database and log file, which tests signal and SIGKILL as before.
What differs from a spawned server: its imports were done before its environment was set (Baton reads none at import
time), ``/proc/PID/environ`` and ``cmdline`` show the zygote's, and a worker's servers share one hash seed.
``tests/security/test_shutdown.py`` spawns its server, and the benchmarks spawn theirs (the zygote is the tests'
choice: ``ServerProcess.zygote``).

The protocol, over the zygote's stdin and stdout: one JSON line per server (its environment, working directory and
log file), answered by one line with its pid (or ``error: ...``). The zygote writes each server's exit code, as
``subprocess`` reports it (negative for a signal), to ``EXITS/PID`` before it reaps it. Its servers die with it
(``PR_SET_PDEATHSIG``); it SIGKILLs them and exits when its stdin closes: when the pytest worker that started it
exits, however it exits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# What the servers import, loaded before any fork (the lazily imported ones too: uvicorn's loop and protocols, the
# database drivers, the routes).
PRELOAD = (
    "baton.server.main",
    "baton.server.app",
    "baton.server.bootstrap",
    "baton.server.database.connection",
    "baton.server.database.migrate",
    "baton.server.graphql.endpoint",  # imported at the first GraphQL request
    "baton.settings",
    "uvicorn.loops.auto",
    "uvicorn.loops.uvloop",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.http.httptools_impl",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.lifespan.on",
    "sqlite3",
    "psycopg",
)


def exit_code_of(exit_: SystemExit) -> int:
    """The code a process ends with when ``exit_`` escapes: as the interpreter does, None is 0 and any other
    non-integer is printed on stderr and is 1 (the tests' in-process CLI calls share this)."""
    if exit_.code is None:
        return 0
    if isinstance(exit_.code, int):
        return exit_.code
    print(exit_.code, file=sys.stderr)
    return 1


class ForkedServer:
    """A server forked by the zygote, with what the tests use of ``subprocess.Popen``."""

    def __init__(self, pid: int, exits: Path, zygote: subprocess.Popen[str]) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exit_file = exits / str(pid)
        self._zygote = zygote

    def poll(self) -> int | None:
        if self.returncode is None and self._exit_file.exists():
            self.returncode = int(self._exit_file.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if self._zygote.poll() is not None:  # its servers died with it (PR_SET_PDEATHSIG): no exit file comes
                raise RuntimeError(f"the server zygote exited ({self._zygote.returncode}) before server {self.pid}")
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"server {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        # The zygote writes the exit file before it reaps the process, so a pid without one is still ours (dead or
        # alive): no signal reaches a reused pid. A server that has just died is no error, as with Popen.
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The tests' side: starts the zygote when first asked for a server."""

    def __init__(self, directory: Path) -> None:
        self._exits = directory / "exits"
        self._exits.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[str] | None = None
        self._lock = threading.Lock()

    def fork(self, env: dict[str, str], cwd: Path, log_path: Path) -> ForkedServer:
        request = json.dumps({"env": env, "cwd": str(cwd), "log": str(log_path)})
        with self._lock:
            process = self._started()
            assert process.stdin is not None and process.stdout is not None
            try:
                process.stdin.write(request + "\n")
                process.stdin.flush()
                answer = process.stdout.readline()
            except BaseException:
                # Interrupted between the request and its answer (a timeout, Ctrl-C): the next answer would be this
                # one. The zygote goes, and its servers with it; the next fork starts another.
                self._discard()
                raise
        if not answer.strip().isdigit():
            raise RuntimeError(f"the server zygote did not fork a server: {answer!r}; see {self._exits.parent}")
        return ForkedServer(int(answer), self._exits, process)

    def close(self) -> None:
        """Close the zygote's stdin: it SIGKILLs the servers still running and exits."""
        if self._process is not None and self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._close_pipes()

    def _discard(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
            self._close_pipes()
            self._process = None

    def _close_pipes(self) -> None:
        if self._process is not None:
            for pipe in (self._process.stdin, self._process.stdout):
                if pipe is not None:
                    with contextlib.suppress(OSError):
                        pipe.close()

    def _started(self) -> subprocess.Popen[str]:
        if self._process is None or self._process.poll() is not None:
            self._close_pipes()
            # An environment without the tests' settings: a server's is its own (what /proc/PID/environ shows of a
            # forked server is this one, the block its process started with).
            env = {name: value for name, value in os.environ.items() if not name.startswith("BATON")}
            env["PYTHONUNBUFFERED"] = "1"
            with (self._exits.parent / "zygote.log").open("ab") as log:
                self._process = subprocess.Popen(
                    [sys.executable, __file__, str(self._exits)],
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                )
        return self._process


# --- the zygote process ---------------------------------------------------------------------------------------------


def _serve(exits: Path) -> None:
    import gc
    import importlib
    import selectors

    for module in PRELOAD:
        with contextlib.suppress(ImportError):  # an optional dependency (psycopg, uvloop) not installed
            importlib.import_module(module)
    gc.collect()
    gc.freeze()  # the servers' copies of the imported objects stay shared pages
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the test run is pytest's to handle
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    children: dict[int, int] = {}  # pidfd -> pid
    while True:
        for key, _ in selector.select():
            if key.data is not None:
                _reap(exits, key.fd, key.data)
                selector.unregister(key.fd)
                os.close(key.fd)
                del children[key.fd]
                continue
            line = sys.stdin.readline()
            if not line:
                for pid in children.values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                os._exit(0)
            try:
                pid = _fork(json.loads(line), [selector.fileno(), *children])
                # A file left by an earlier server of the same pid would be read as this one's exit.
                (exits / str(pid)).unlink(missing_ok=True)
                pidfd = os.pidfd_open(pid)
            except Exception as exc:  # an answer the tests show, and the zygote serves on
                sys.stdout.write(f"error: {exc!r}\n")
            else:
                children[pidfd] = pid
                selector.register(pidfd, selectors.EVENT_READ, pid)
                sys.stdout.write(f"{pid}\n")
            sys.stdout.flush()


def _reap(exits: Path, pidfd: int, pid: int) -> None:
    """Write the exit code of the server behind ``pidfd`` (as ``subprocess`` reports it), then reap it: until it is
    reaped its pid cannot be reused, so a test's signal never reaches another process."""
    info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT)
    code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    temporary = exits / f".{pid}"
    temporary.write_text(str(code))
    temporary.rename(exits / str(pid))
    os.waitpid(pid, 0)


def _fork(request: dict[str, Any], inherited: list[int]) -> int:
    zygote = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _become_server(request, inherited, zygote)
        code = 0
    except SystemExit as exit_:
        code = exit_code_of(exit_)
    except KeyboardInterrupt:
        code = -signal.SIGINT
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        if code < 0:  # died of a signal, as an interpreter killed by it would
            signal.signal(-code, signal.SIG_DFL)
            os.kill(os.getpid(), -code)
        os._exit(code)
    return 0  # not reached


def _become_server(request: dict[str, Any], inherited: list[int], zygote: int) -> None:
    """In the forked child: ``python -m baton.server`` itself (its ``__main__`` run as a fresh interpreter would),
    with the environment, working directory and log file of the request."""
    import ctypes
    import runpy

    # Dies with the zygote, which is what reaps it and reports its exit.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != zygote:  # it died before the prctl
        os._exit(1)
    for fd in inherited:  # the selector and the other servers' pidfds
        os.close(fd)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.path[0] = request["cwd"]  # as ``python -m`` puts it (the zygote's was its own folder)
    sys.argv = [""]
    runpy.run_module("baton.server", run_name="__main__", alter_sys=True)


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))

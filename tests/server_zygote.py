"""API servers for the tests, forked from a process that has already imported the server (one per pytest worker).

``python -m baton.server`` spends ~0.8 of its ~1 s of start-up CPU importing FastAPI, SQLAlchemy, pydantic, uvicorn
and Baton's routes; the tests start ~75 servers (replicas, restarts, servers with settings of their own), a tenth
of the CPU of ``make test`` (issue 12). The zygote imports all that once; each server is then a fork that does what
``python -m baton.server`` does after its imports: the same settings from the same environment (replaced whole),
migrations, bootstrap, uvicorn, signals and exit codes. It is a real process with its own pid, port, database and
log file, which tests signal and SIGKILL as before.

What the fork does not exercise, ``python -m baton.server`` itself, stays covered by tests that spawn it
(``tests/server/test_server_entry.py``, the CLI's ``baton server start`` fixtures) and by every benchmark, which
spawn their servers (the zygote is the tests' choice: ``ServerProcess.zygote``).

The protocol, over the zygote's stdin and stdout: one JSON line per server (its environment, working directory and
log file), answered by one line with its pid. The zygote reaps its children and writes each one's exit code, as
``subprocess`` reports it (negative for a signal), to ``EXITS/PID``. It ends, SIGKILLing the servers still running,
when its stdin closes: when the pytest worker that started it exits, however it exits.
"""

from __future__ import annotations

import json
import os
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


class ForkedServer:
    """A server forked by the zygote, with what the tests use of ``subprocess.Popen``."""

    def __init__(self, pid: int, exits: Path) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exit_file = exits / str(pid)

    def poll(self) -> int | None:
        if self.returncode is None and self._exit_file.exists():
            self.returncode = int(self._exit_file.read_text())
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"server {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        return code

    def send_signal(self, sig: int) -> None:
        # The exit file is written as soon as the zygote reaps the process: no signal reaches a reused pid.
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)


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
            process = self._started(env)
            assert process.stdin is not None and process.stdout is not None
            process.stdin.write(request + "\n")
            process.stdin.flush()
            answer = process.stdout.readline()
        if not answer.strip().isdigit():
            raise RuntimeError(f"the server zygote did not fork a server: {answer!r}; see {self._exits.parent}")
        return ForkedServer(int(answer), self._exits)

    def close(self) -> None:
        if self._process is not None and self._process.poll() is None:
            assert self._process.stdin is not None and self._process.stdout is not None
            self._process.stdin.close()
            self._process.wait(10)
            self._process.stdout.close()

    def _started(self, env: dict[str, str]) -> subprocess.Popen[str]:
        if self._process is None or self._process.poll() is not None:
            with (self._exits.parent / "zygote.log").open("ab") as log:
                self._process = subprocess.Popen(
                    [sys.executable, __file__, str(self._exits)],
                    env=env,  # a server's environment: the zygote's own never reaches its servers
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
    import signal

    for module in PRELOAD:
        importlib.import_module(module)
    gc.collect()
    gc.freeze()  # the servers' copies of the imported objects stay shared pages
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C of the test run is pytest's to handle
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ, None)
    children: dict[int, int] = {}  # pidfd -> pid
    while True:
        for key, _ in selector.select():
            if key.data is None:
                line = sys.stdin.readline()
                if not line:
                    for pid in children.values():
                        os.kill(pid, signal.SIGKILL)
                    return
                pid = _fork(json.loads(line), list(children))
                pidfd = os.pidfd_open(pid)
                children[pidfd] = pid
                selector.register(pidfd, selectors.EVENT_READ, pid)
                sys.stdout.write(f"{pid}\n")
                sys.stdout.flush()
            else:
                selector.unregister(key.fd)
                os.close(key.fd)
                del children[key.fd]
                _, status = os.waitpid(key.data, 0)
                temporary = exits / f".{key.data}"
                temporary.write_text(str(os.waitstatus_to_exitcode(status)))
                temporary.rename(exits / str(key.data))


def _fork(request: dict[str, Any], inherited: list[int]) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _become_server(request, inherited)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return 0  # not reached


def _become_server(request: dict[str, Any], inherited: list[int]) -> None:
    """In the forked child: what ``python -m baton.server`` does once its imports are done."""
    import signal

    from baton.exits import exit_now
    from baton.server.main import serve
    from baton.settings import load_settings

    for fd in inherited:  # the other servers' pidfds
        os.close(fd)
    log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = ["baton.server"]
    serve(load_settings())
    exit_now(0)


if __name__ == "__main__":
    _serve(Path(sys.argv[1]))

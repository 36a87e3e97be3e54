"""Helpers shared by the test suite: real server processes on 127.0.0.1 and small polling utilities."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx

from baton.client import Client
from server_zygote import ForkedServer, Zygote

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent


def local_get(url: str, timeout: float = 2.0, **kwargs: Any) -> httpx.Response:
    """``httpx.get`` for the plain-http addresses of the tests' servers and agents, without the TLS context
    ``httpx.get`` builds each call (~25 ms of CPU loading the CA bundle): server starts poll their health ~30 times
    each, and that was ~0.75 s of CPU per start."""
    with httpx.Client(verify=False, trust_env=False, timeout=timeout) as http:
        return http.get(url, **kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# How far a poll's interval grows. The suite is CPU-bound on 2 cores, and a predicate is most often an API request
# (~10 ms of server CPU): polling a 5 s wait every 50 ms cost ~1 s of CPU, every 250 ms a fifth of it.
MAX_POLL_INTERVAL = 0.25


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test with ``what`` on timeout.

    The interval starts at ``interval`` (a quick answer is seen quickly) and grows by half each time up to
    :data:`MAX_POLL_INTERVAL` (or ``interval``, if that is longer).
    """
    deadline = time.monotonic() + timeout
    last: T | None = None
    longest = max(interval, MAX_POLL_INTERVAL)
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 1.5, longest)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}; last value: {last!r}")


def migrate_to_head(url: str) -> None:
    """Migrate the database at ``url`` to head and close every connection to it (a template copied by the tests'
    databases: ``migrated_engine``, ``PostgresCluster.create_migrated_database``)."""
    from baton.server.database.connection import create_database_engine
    from baton.server.database.migrate import upgrade

    engine = create_database_engine(url, 1)
    upgrade(engine)
    engine.dispose()


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment for a child process: no BATON settings inherited from the developer's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON")}
    env["BATON_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class ServerProcess:
    """``python -m baton.server`` as a real subprocess with its own $BATON_HOME and port.

    In the tests, forked from a process that has imported the server (``zygote``, set by ``tests/conftest.py``:
    ``tests/server_zygote.py``); elsewhere (the benchmarks) spawned.
    """

    zygote: ClassVar[Zygote | None] = None

    def __init__(self, home: Path, port: int | None = None, **settings_env: str) -> None:
        self.home = home
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Tests send many bad keys from 127.0.0.1 on purpose: the failed-auth limit is out of their way unless a
        # test sets it.
        # Tests with short leases and timeouts want the lease and recovery services at work right after the
        # start: no margin for agents backed off by an outage (the services' own tests set their clock).
        self.settings_env = {
            "BATON__SERVER__FAILED_AUTH_LIMIT": "100000",
            "BATON__SERVER__OUTAGE_GRACE_MARGIN_SECONDS": "0",
            **settings_env,
        }
        self.process: subprocess.Popen[bytes] | ForkedServer | None = None
        self.log_path = home / f"server-{self.port}.log"
        self._admin_client: Client | None = None
        self.database_url = settings_env.get("BATON__SERVER__DATABASE_URL") or f"sqlite:///{home}/baton.db"

    def start(self, timeout: float = 30.0) -> ServerProcess:
        self.home.mkdir(parents=True, exist_ok=True)
        env = clean_env(self.home, BATON__SERVER__PORT=str(self.port), **self.settings_env)
        if self.zygote is not None:
            self.process = self.zygote.fork(env, Path.cwd(), self.log_path)
        else:
            with self.log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
                self.process = subprocess.Popen(
                    [sys.executable, "-m", "baton.server"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_path.read_text()}")
            try:
                if local_get(f"{self.url}/api/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become healthy:\n{self.log_path.read_text()}")

    @property
    def admin_key(self) -> str:
        config = tomllib.loads((self.home / "config.toml").read_text())
        return str(config["api"]["key"])

    def client(self, key: str | None = None) -> Client:
        """A client with ``key``, or the shared admin client (closed when the server stops)."""
        if key is not None:
            return Client(self.url, key)
        if self._admin_client is None or self._admin_client._http.is_closed:
            self._admin_client = Client(self.url, self.admin_key)
        return self._admin_client

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a CLI or agent subprocess talking to this server with the admin key."""
        return clean_env(self.home, **{"BATON__API__URL": self.url, "BATON__API__KEY": self.admin_key, **extra})

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self._admin_client is not None:
            self._admin_client.close()
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no shutdown, requests in flight cut off, no clean-up."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.kill()
        self.process.wait()

    def restart(self, down_seconds: float = 0.0, timeout: float = 30.0) -> ServerProcess:
        """SIGKILL the server, keep it down ``down_seconds``, start it again on the same port and database."""
        self.kill()
        time.sleep(down_seconds)
        return self.start(timeout)

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


class TenantServer(ServerProcess):
    """A tenant of its own on a server that a module's tests share, seen as a server of the test's own: its admin key
    is the tenant's, and CLI and agent subprocesses get a ``BATON_HOME`` of their own. Flows, runs, agents and keys
    of other tenants are invisible to it, so tests need no server each (a start costs ~1.5 s and ~1 s of CPU).

    The process is the shared server's: ``stop`` only closes this view's client, and a test that stops, kills or
    restarts its server needs one of its own (``start_server``).
    """

    def __init__(self, shared: ServerProcess, home: Path, admin_key: str) -> None:
        super().__init__(home, shared.port, **shared.settings_env)
        home.mkdir(parents=True, exist_ok=True)
        self.process = shared.process
        self.log_path = shared.log_path
        self.database_url = shared.database_url
        self._key = admin_key

    @property
    def admin_key(self) -> str:
        return self._key

    def start(self, timeout: float = 30.0) -> ServerProcess:
        raise RuntimeError("a tenant of a shared server: start a server of the test's own instead")

    def close(self) -> None:
        """Close this view's client (the shared process runs on)."""
        if self._admin_client is not None:
            self._admin_client.close()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        raise RuntimeError("a tenant of a shared server: stop a server of the test's own instead")

    def kill(self) -> None:
        raise RuntimeError("a tenant of a shared server: kill a server of the test's own instead")

    def log(self) -> str:
        raise RuntimeError("a tenant of a shared server: its log is every tenant's; read a server of the test's own")


HELLO_SOURCE = """
from baton import flow, task

@task
def greet(name: str) -> str:
    print(f"hello {name}")
    return name

@flow
def hello(name: str = "world") -> str:
    return greet(name)
"""


def register_source_flow(client: Client, name: str = "hello", labels: list[str] | None = None, **extra: Any) -> str:
    """Register a flow straight through the API (no SDK import needed); return its id."""
    payload: dict[str, Any] = {
        "name": name,
        "entrypoint": "hello",
        "source": HELLO_SOURCE,
        "source_filename": f"/flows/{name}.py",
        "labels": labels or [],
        "parameters_schema": {"type": "object", "properties": {"name": {"type": "string"}}},
        "tasks": ["greet"],
    }
    payload.update(extra)
    return client.register_flow(payload).id

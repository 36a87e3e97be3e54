"""Fixtures of the reliability tests: real servers that are SIGKILLed and restarted on the same port and database,
and real local agents (``baton agent local start`` subprocesses) that must ride it out.

The chain: ``database_url`` (SQLite in the test's directory, or a fresh PostgreSQL database) → ``crash_server`` (a
server on a fixed port, restartable). ``start_agent`` starts agents against a given server, stopped after the test.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton.client import Client
from integration.conftest import AgentProcess, launch_local_agent
from support import ServerProcess, free_port, local_get, wait_for

StartAgent = Callable[..., AgentProcess]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database of the test's server: a SQLite file in the test's directory, or a fresh PostgreSQL database."""
    if request.param == "postgresql":
        cluster: Any = request.getfixturevalue("postgres_cluster")
        return str(cluster.create_database())
    return f"sqlite:///{tmp_path / 'crash-server' / 'baton.db'}"


@pytest.fixture
def crash_server(tmp_path: Path, database_url: str) -> Iterator[ServerProcess]:
    """A server on a fixed port: ``kill()`` / ``restart()`` bring it back on the same port and database."""
    server = ServerProcess(tmp_path / "crash-server", port=free_port(), BATON__SERVER__DATABASE_URL=database_url)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def crash_admin(crash_server: ServerProcess) -> Client:
    """The server's admin client; it reconnects by itself after a restart."""
    return crash_server.client()


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[StartAgent]:
    """Start ``baton agent local start`` subprocesses against a server, with a health address and no labels (so
    they take unlabelled runs); named ``agent-<n>`` unless ``--name`` is given. Every one is stopped after the
    test."""
    agents: list[AgentProcess] = []

    def start(server: ServerProcess, *args: str, **env: str) -> AgentProcess:
        number = len(agents)
        log = tmp_path / f"agent-{number}.log"
        address = f"http://127.0.0.1:{free_port()}"
        name = [] if "--name" in args else ["--name", f"agent-{number}"]
        arguments = [*name, "--no-hostname-label", "--agent-address", address, *args]
        agent = launch_local_agent(server, log, arguments, address, env)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop(signal.SIGTERM)
        if agent.process.poll() is None:
            agent.stop(signal.SIGINT)


def agent_health(agent: AgentProcess) -> int | None:
    """The status of the agent's ``/api/health``, or None when it does not answer."""
    assert agent.address is not None
    try:
        return local_get(f"{agent.address}/api/health", timeout=2).status_code
    except httpx.HTTPError:
        return None


def wait_until_healthy(agent: AgentProcess, timeout: float = 30) -> None:
    def healthy() -> bool:
        if agent.process.poll() is not None:
            raise AssertionError(f"agent exited with {agent.process.returncode}:\n{agent.log()}")
        return agent_health(agent) == 200

    wait_for(healthy, timeout=timeout, interval=0.1, what=f"agent health 200; its log:\n{agent.log()}")

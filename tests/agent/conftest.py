from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from pydantic import SecretStr

from baton.agent.base import Agent
from baton.agent.testing import InMemoryAgent
from baton.backoff import Backoff
from baton.settings import BatonSettings, load_settings

from .fake_api import FakeApi

if TYPE_CHECKING:
    # Imported where used: the server's stack costs a second or so to import, which tests without it need not pay.
    from baton.agent.docker import DockerAgent
    from baton.client import Client
    from docker_support import DockerCleanup
    from support import ServerProcess

    from .app_api import AppApi, InProcessServer

AGENT_KEY = "bat_agent_key_for_tests_0123456789abcdef"


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's ~/.baton or BATON_ variables."""
    for name in list(os.environ):
        if name.startswith("BATON"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("BATON_HOME", str(tmp_path / "baton-home"))


@pytest.fixture
def settings() -> BatonSettings:
    return load_settings(
        api={"url": "http://127.0.0.1:9", "key": AGENT_KEY},
        agent={"poll_wait_seconds": 0.2, "heartbeat_interval_seconds": 0.1, "max_consecutive_errors": 5},
    )


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


class AgentThread:
    """Runs ``agent.start()`` in a thread and keeps what it raised."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="agent-under-test", daemon=True)

    def _run(self) -> None:
        try:
            self.agent.start()
        except BaseException as exc:
            self.error = exc

    def start(self) -> AgentThread:
        self.thread.start()
        return self

    def join(self, timeout: float = 10.0) -> None:
        """Wait for the agent to return; fail the test if it does not, re-raise what it raised."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the agent did not stop"
        if self.error is not None:
            raise self.error

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()


@pytest.fixture
def run_in_thread() -> Iterator[Callable[[Agent], AgentThread]]:
    started: list[AgentThread] = []

    def _start(agent: Agent) -> AgentThread:
        running = AgentThread(agent).start()
        started.append(running)
        return running

    yield _start
    for running in started:
        if running.alive:
            running.agent.stop(cold=True)
            running.thread.join(10)


@pytest.fixture
def make_agent(settings: BatonSettings, api: FakeApi) -> Callable[..., InMemoryAgent]:
    def _make(**options: Any) -> InMemoryAgent:
        options.setdefault("settings", settings)
        options.setdefault("client", api)
        agent = InMemoryAgent(**options)
        agent.policy.backoff = Backoff(base_seconds=0.01, max_seconds=0.05)
        return agent

    return _make


# --- the real API server in process (tests/agent/app_api.py) ---------------------------------------------------


@pytest.fixture(scope="session")
def in_process_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServer]:
    """The real API server in this process (uvicorn in a thread, 127.0.0.1), once per session (per xdist worker):
    each test has a tenant of its own on it (``app_api``)."""
    from .app_api import InProcessServer

    server = InProcessServer(tmp_path_factory.mktemp("api-in-process")).start()
    yield server
    server.stop()


@pytest.fixture
def app_api(in_process_server: InProcessServer) -> Iterator[AppApi]:
    """A real client with a runner key of a new tenant of the in-process server, recording the agent's calls, with
    the test controls of ``FakeApi`` (``add_run``, ``wait_for_state``, ``fail_next``...)."""
    from .app_api import AppApi

    api = AppApi(in_process_server)
    yield api
    api.close_all()


@pytest.fixture
def app_settings(settings: BatonSettings, app_api: AppApi) -> BatonSettings:
    """``settings`` (the same object: a test may still change it) naming the in-process server and the runner key,
    as those of an agent started against it would."""
    settings.api.url = app_api.api_url
    settings.api.key = SecretStr(app_api.runner_key)
    return settings


@pytest.fixture
def make_app_agent(app_settings: BatonSettings, app_api: AppApi) -> Callable[..., InMemoryAgent]:
    """``make_agent`` on the in-process server: the agent's client is ``app_api``."""

    def _make(**options: Any) -> InMemoryAgent:
        options.setdefault("settings", app_settings)
        options.setdefault("client", app_api)
        agent = InMemoryAgent(**options)
        agent.policy.backoff = Backoff(base_seconds=0.01, max_seconds=0.05)
        return agent

    return _make


# --- the Docker agent's tests (test_docker*.py) ---------------------------------------------------------------


@pytest.fixture
def runner_key(admin: Client) -> str:
    return admin.create_api_key("runner", name="docker agent tests").key


@pytest.fixture
def fast_settings() -> BatonSettings:
    return load_settings(agent={"poll_wait_seconds": 1.0, "heartbeat_interval_seconds": 0.5})


@pytest.fixture
def docker_agent(server: ServerProcess, runner_key: str, fast_settings: BatonSettings) -> Callable[..., DockerAgent]:
    """Makes Docker agents of the test server (host network, a fast watch)."""
    from baton.agent.docker import DockerAgent

    def _make(**options: Any) -> DockerAgent:
        options.setdefault("networks", ["host"])
        agent = DockerAgent(settings=fast_settings, key=runner_key, api=server.url, **options)
        agent.watch_interval_seconds = 0.2
        return agent

    return _make


@pytest.fixture
def new_run(admin: Client, docker_cleanup: DockerCleanup) -> Callable[..., str]:
    """Create a run of a flow; its containers are removed after the test whatever happens."""

    def _create(flow_name: str, **options: Any) -> str:
        run_id = admin.create_flow_run(flow_name=flow_name, **options).id
        docker_cleanup.containers_labelled(f"io.baton.flow-run-id={run_id}")
        return run_id

    return _create

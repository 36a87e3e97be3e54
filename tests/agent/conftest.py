from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.agent.base import Agent
from baton.agent.testing import InMemoryAgent
from baton.backoff import Backoff
from baton.settings import BatonSettings, load_settings

from .fake_api import FakeApi

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
    def _make(cls: type[InMemoryAgent] = InMemoryAgent, **options: Any) -> InMemoryAgent:
        options.setdefault("settings", settings)
        options.setdefault("client", api)
        agent = cls(**options)
        agent.policy.backoff = Backoff(base_seconds=0.01, max_seconds=0.05)
        return agent

    return _make

"""Fixtures shared by every test package: real API servers on 127.0.0.1 with a throwaway $BATON_HOME."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from baton.client import Client
from support import ServerProcess


@pytest.fixture
def baton_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "baton-home"
    home.mkdir()
    monkeypatch.setenv("BATON_HOME", str(home))
    for name in list(__import__("os").environ):
        if name.startswith("BATON__"):
            monkeypatch.delenv(name)
    return home


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with settings given as env (e.g. ``BATON__SERVER__CLAIM_LEASE_SECONDS="1"``)."""
    started: list[ServerProcess] = []

    def start(home: Path | None = None, **settings_env: str) -> ServerProcess:
        server = ServerProcess(home or tmp_path / f"server-home-{len(started)}", **settings_env)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def server(start_server: Callable[..., ServerProcess]) -> ServerProcess:
    return start_server()


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[Client]:
    with server.client() as client:
        yield client

"""Fixtures for the CLI tests: an isolated $BATON_HOME, click's runner, a scripted fake client, and a real
``baton server start`` subprocess driven through the ``baton`` CLI as subprocesses."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import CliServer, FakeClient
from click.testing import CliRunner, Result

from baton.cli.context import CliState
from baton.cli.main import cli
from support import clean_env, free_port, local_get


@pytest.fixture(autouse=True)
def _isolated_home(baton_home: Path) -> Path:
    """Every CLI test gets its own $BATON_HOME and no BATON__ variables from the developer's shell."""
    return baton_home


@pytest.fixture
def invoke() -> Any:
    """Run the CLI in-process; unexpected exceptions fail the test instead of hiding in ``result``."""

    def run(*args: str, **kwargs: Any) -> Result:
        result = CliRunner().invoke(cli, list(args), **kwargs)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result

    return run


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Install a FakeClient as what every command gets from ``CliState.client``."""

    def install(client: FakeClient) -> FakeClient:
        monkeypatch.setattr(CliState, "client", lambda self: client)
        return client

    return install


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliServer]:
    """``baton server start --port P`` as a real subprocess with a fresh $BATON_HOME (shared by a module)."""
    home = tmp_path_factory.mktemp("cli-server-home")
    port = free_port()
    log_path = home / "server.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "server", "start", "--port", str(port)],
            env=clean_env(home),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = CliServer(home, f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"baton server start exited {process.returncode}:\n{log_path.read_text()}")
        try:
            if local_get(f"{server.url}/api/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"server did not become healthy:\n{log_path.read_text()}")
        time.sleep(0.05)
    yield server
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

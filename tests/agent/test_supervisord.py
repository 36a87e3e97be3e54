"""`baton agent local install` prints a config that a real supervisord runs: the agent starts, serves runs,
and stops warmly when supervisord stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from baton.schemas.states import FINAL_STATES
from support import ServerProcess, free_port, local_get, register_source_flow, wait_for

pytestmark = pytest.mark.integration

SUPERVISORD = Path(sys.executable).parent / "supervisord"
SUPERVISORCTL = Path(sys.executable).parent / "supervisorctl"


@pytest.fixture
def supervisor_available() -> None:
    if not SUPERVISORD.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("supervisord is not installed (pip install supervisor); CI must run this test")
        pytest.skip("supervisord is not installed (pip install supervisor)")


def _health(address: str) -> int | None:
    try:
        return local_get(f"{address}/api/health", timeout=2).status_code
    except httpx.HTTPError:
        return None


def test_generated_supervisord_config_runs_the_agent(
    supervisor_available: None, server: ServerProcess, tmp_path: Path
) -> None:
    # Given the config printed by `baton agent local install`, with its files moved into this test's directory
    address = f"http://127.0.0.1:{free_port()}"
    install = subprocess.run(
        [sys.executable, "-m", "baton.cli", "agent", "local", "install", "--key", server.admin_key,
         "--api", server.url, "--name", "supervised", "--no-hostname-label", "--agent-address", address],
        env=server.env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    assert server.admin_key not in next(line for line in install.stdout.splitlines() if line.startswith("command="))
    config = tmp_path / "supervisord.conf"
    config.write_text(install.stdout.replace("/tmp/baton-", f"{tmp_path}/baton-"))

    # When supervisord runs it (its environment has no Baton settings: the config must carry them)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("BATON")}
    environment["HOME"] = str(tmp_path)
    daemon = subprocess.Popen([str(SUPERVISORD), "-n", "-c", str(config)], env=environment)
    try:
        # Then the agent becomes healthy, registered under its name, and runs a flow run to Success
        wait_for(lambda: _health(address) == 200, timeout=30, what="the supervised agent's health to be 200")
        assert [agent.name for agent in server.client().list_agents()] == ["supervised"]
        register_source_flow(server.client())
        run = server.client().create_flow_run(flow_name="hello")
        wait_for(lambda: server.client().get_flow_run(run.id).state in FINAL_STATES, timeout=30, what="the run to end")
        assert server.client().get_flow_run(run.id).state == "Success"

        # and `supervisorctl stop` stops it (SIGTERM: a warm stop)
        stopped = subprocess.run(
            [str(SUPERVISORCTL), "-c", str(config), "stop", "baton-agent"],
            capture_output=True, text=True, timeout=60, env=environment,
        )  # fmt: skip
        assert "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
        wait_for(lambda: _health(address) is None, timeout=15, what="the agent's health server to be gone")
        log = (tmp_path / "baton-agent.log").read_text()
        assert "warm stop" in log
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()

"""Things going wrong on purpose: cancellation, a lost server, --max-polls.

Agents and flow-run processes SIGKILLed, and servers restarted under load, are in ``tests/reliability/``."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable

import httpx

from baton.schemas.states import FINAL_STATES
from integration.conftest import BATON, Cli, wait_for_state
from support import ServerProcess, local_get, register_source_flow, wait_for

SLEEPY_FLOW = """
import time
from baton import flow

@flow
def sleepy(seconds: float = 120.0):
    print("started sleeping", flush=True)
    time.sleep(seconds)
"""


def test_cancel_stops_the_flow_process_and_ends_cancelled(cli: Cli, start_agent, flow_file) -> None:
    cli("register", str(flow_file("sleepy", SLEEPY_FLOW)))
    start_agent()
    run = cli.json("run", "sleepy")
    running = wait_for_state(cli, run["id"], {"Running"})
    pid = next(s["data"]["pid"] for s in running["states"] if s["name"] == "Submitted")

    cancelled = cli("runs", "cancel", run["id"])
    assert cancelled.returncode == 0

    final = wait_for_state(cli, run["id"], set(FINAL_STATES), timeout=30)
    assert final["state"] == "Cancelled"
    assert "Cancelling" in [s["name"] for s in final["states"]]
    wait_for(lambda: not _alive(pid), timeout=15, what=f"flow process {pid} to be gone")


def test_cancel_of_an_undeployed_run_is_immediate(cli: Cli) -> None:
    register_source_flow(cli.server.client())
    run = cli.server.client().create_flow_run(flow_name="hello", labels=["nobody-serves-this"])
    cli("runs", "cancel", run.id)
    assert cli.server.client().get_flow_run(run.id).state == "Cancelled"


def test_agent_health_is_200_while_serving_and_503_once_the_server_is_gone(
    start_server: Callable[..., ServerProcess], start_agent
) -> None:
    server = start_server()  # of its own: it is stopped below
    agent = start_agent(health=True, against=server)
    assert agent.address is not None
    health_url = f"{agent.address}/api/health"

    def status() -> int | None:
        try:
            return local_get(health_url, timeout=2).status_code
        except httpx.HTTPError:
            return None

    wait_for(lambda: status() == 200, timeout=20, what="agent health 200")
    metrics = local_get(f"{agent.address}/metrics", timeout=2).text
    assert "# TYPE" in metrics and "baton_agent" in metrics

    server.stop()

    wait_for(lambda: status() == 503, timeout=60, what="agent health 503 after the server stopped")
    body = local_get(health_url, timeout=2).json()
    assert body["status"] != "healthy" and body.get("reason")


def test_max_polls_makes_the_agent_exit_after_that_many_claims(server: ServerProcess) -> None:
    started = time.monotonic()
    result = subprocess.run(
        [*BATON, "agent", "local", "start", "--max-polls", "2"],
        env=server.env(BATON__AGENT__POLL_WAIT_SECONDS="0.2"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 60


def test_max_polls_zero_makes_no_claim(server: ServerProcess) -> None:
    client = server.client()
    register_source_flow(client)
    run = client.create_flow_run(flow_name="hello")
    result = subprocess.run(
        [*BATON, "agent", "local", "start", "--max-polls", "0"],
        env=server.env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert client.get_flow_run(run.id).state == "Scheduled"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False

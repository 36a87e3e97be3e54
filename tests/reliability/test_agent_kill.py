"""Agents and flow-run processes SIGKILLed at the worst moments: no run is lost, none runs twice.

- An agent killed between its claim and the deployment: the claim's lease expires, the run goes back to
  Scheduled and another agent runs it. Restarted under the same identity, the agent itself releases it at once
  (its heartbeats would otherwise keep the dead claim's lease alive).
- A flow-run process killed: its agent's heartbeat reports the exit code, and the server fails the run with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator

import pytest

from baton.client import Client
from baton.schemas.responses import FlowRunRead
from baton.schemas.states import FINAL_STATES
from support import ServerProcess, register_source_flow, wait_for

from .conftest import StartAgent

pytestmark = pytest.mark.integration

# Registers as an agent and claims one run as an agent does, prints its id, then hangs before deploying it: the
# test SIGKILLs it there. argv: API URL, key, agent name.
CLAIM_AND_HANG = textwrap.dedent(
    """
    import sys, time
    from baton.client import Client
    client = Client(sys.argv[1], sys.argv[2])
    agent = client.register_agent(sys.argv[3], "local", [])
    claimed = client.claim(agent.id, limit=1, wait_seconds=10)
    print(claimed.runs[0].flow_run.id, flush=True)
    time.sleep(600)
    """
)

SLEEPY_SOURCE = """
import time
from baton import flow

@flow
def sleepy(seconds: float = 120.0) -> None:
    print("started sleeping", flush=True)
    time.sleep(seconds)
"""


def register_hello(client: Client) -> None:
    register_source_flow(client)


def register_sleepy(client: Client) -> None:
    schema = {"type": "object", "properties": {"seconds": {"type": "number"}}}
    register_source_flow(
        client, "sleepy", entrypoint="sleepy", source=SLEEPY_SOURCE, parameters_schema=schema, tasks=[]
    )


def wait_for_state(client: Client, run_id: str, states: set[str], timeout: float = 30) -> FlowRunRead:
    def reached() -> FlowRunRead | None:
        run = client.get_flow_run(run_id)
        return run if run.state in states else None

    run = wait_for(reached, timeout=timeout, interval=0.1, what=f"run {run_id} to reach {sorted(states)}")
    assert run is not None
    return run


@pytest.fixture
def claim_and_die() -> Iterator[Callable[[ServerProcess, str], str]]:
    """Claim the next unlabelled run as agent ``name`` would, in a process SIGKILLed right after; the run's id."""
    doomed: list[subprocess.Popen[str]] = []

    def claim(server: ServerProcess, name: str) -> str:
        process = subprocess.Popen(
            [sys.executable, "-c", CLAIM_AND_HANG, server.url, server.admin_key, name],
            env=server.env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        doomed.append(process)
        assert process.stdout is not None
        run_id = process.stdout.readline().strip()
        process.send_signal(signal.SIGKILL)
        process.wait()
        return run_id

    yield claim
    for process in doomed:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def test_an_agent_killed_between_claim_and_deploy_loses_the_lease_and_another_agent_runs_it(
    start_server: Callable[..., ServerProcess],
    start_agent: StartAgent,
    claim_and_die: Callable[[ServerProcess, str], str],
) -> None:
    # Given a run claimed by an agent that is SIGKILLed before deploying it, under a 2 s lease
    server = start_server(BATON__SERVER__CLAIM_LEASE_SECONDS="2", BATON__SERVER__SERVICES_INTERVAL_SECONDS="0.2")
    client = server.client()
    register_hello(client)
    run = client.create_flow_run(flow_name="hello")
    assert claim_and_die(server, "doomed") == run.id
    assert client.get_flow_run(run.id).state == "Pending"

    # When the lease expires while a healthy agent is running
    start_agent(server)

    # Then the run went back to Scheduled and the healthy agent ran it: claimed twice, deployed once
    final = wait_for_state(client, run.id, set(FINAL_STATES), timeout=60)
    names = [state.name for state in final.states]
    assert final.state == "Success", final.state_message
    assert names == ["Scheduled", "Pending", "Scheduled", "Pending", "Submitted", "Running", "Success"]
    assert "lease" in (final.states[2].message or "")


def test_an_agent_restarted_after_dying_between_claim_and_deploy_does_not_keep_its_dead_claim_alive(
    start_server: Callable[..., ServerProcess],
    start_agent: StartAgent,
    claim_and_die: Callable[[ServerProcess, str], str],
) -> None:
    # Given a run claimed by agent-0, which dies before deploying it (2 s lease)
    server = start_server(BATON__SERVER__CLAIM_LEASE_SECONDS="2", BATON__SERVER__SERVICES_INTERVAL_SECONDS="0.2")
    client = server.client()
    register_hello(client)
    run = client.create_flow_run(flow_name="hello")
    assert claim_and_die(server, "agent-0") == run.id

    # When agent-0 starts again at once and heartbeats: the same name, type and labels are the same agent id,
    # but its heartbeats name only the claims it holds, so the dead process's claim is not extended
    start_agent(server, "--name", "agent-0")

    # Then the dead claim expires, and the run is claimed again and run once
    final = wait_for_state(client, run.id, set(FINAL_STATES), timeout=60)
    names = [state.name for state in final.states]
    assert final.state == "Success", final.state_message
    assert names == ["Scheduled", "Pending", "Scheduled", "Pending", "Submitted", "Running", "Success"]
    assert "lease expired" in (final.states[2].message or "")


def test_a_killed_flow_process_fails_its_run_with_its_exit_code(
    server: ServerProcess, admin: Client, start_agent: StartAgent
) -> None:
    # Given a run whose flow-run process is running
    register_sleepy(admin)
    start_agent(server, BATON__AGENT__HEARTBEAT_INTERVAL_SECONDS="1")
    run = admin.create_flow_run(flow_name="sleepy")
    running = wait_for_state(admin, run.id, {"Running"})
    [submitted] = [state for state in running.states if state.name == "Submitted"]
    assert submitted.data is not None

    # When that process is SIGKILLed
    os.kill(submitted.data["pid"], signal.SIGKILL)

    # Then the agent's heartbeat reports its exit code, and the server fails the run with it
    final = wait_for_state(admin, run.id, set(FINAL_STATES))
    assert final.state == "Failed"
    assert "exited with code 137" in (final.state_message or ""), final.state_message
    assert final.states[-1].data == {"exit_code": 137}


def test_a_cancel_reaches_a_flow_process_that_its_agent_started_before_a_restart(
    server: ServerProcess, admin: Client, start_agent: StartAgent
) -> None:
    # Given a run whose flow process outlived its agent (SIGKILLed; the flow leads its own session)
    register_sleepy(admin)
    # (its flow inherits a 20 s heartbeat: it would learn of a cancel itself only long after its new agent)
    first = start_agent(server, "--name", "agent-0", BATON__AGENT__HEARTBEAT_INTERVAL_SECONDS="20")
    run = admin.create_flow_run(flow_name="sleepy")
    running = wait_for_state(admin, run.id, {"Running"})
    [submitted] = [state for state in running.states if state.name == "Submitted"]
    assert submitted.data is not None
    pid = submitted.data["pid"]
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    os.kill(pid, 0)  # still running

    # When the agent is back under the same identity and the run is cancelled
    second = start_agent(server, "--name", "agent-0", BATON__AGENT__HEARTBEAT_INTERVAL_SECONDS="1")
    admin.cancel_flow_run(run.id)

    # Then that agent finds the process from what Submitted stored and stops it (SIGTERM: the engine, told, ends
    # the run Cancelled itself; before, the agent marked it Cancelled and left the process running)
    final = wait_for_state(admin, run.id, set(FINAL_STATES))
    assert final.state == "Cancelled"
    wait_for(lambda: not _alive(pid), timeout=10, what=f"process {pid} to end")
    wait_for(lambda: f"stopped its process {pid}, deployed before this agent restarted" in second.log(), timeout=10)
    assert "holds no deployment" not in (final.state_message or "")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (not reaped yet by whoever adopted it) has ended too
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"

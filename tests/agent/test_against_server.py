"""Agents against the real API server (a subprocess on 127.0.0.1), with real flow-run processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any

import pytest

from baton.agent import LocalAgent
from baton.agent.testing import FakeDeployment, InMemoryAgent
from baton.client import Client
from baton.schemas.states import FINAL_STATES
from baton.settings import BatonSettings, load_settings
from support import ServerProcess, register_source_flow, wait_for

from .conftest import AgentThread

pytestmark = pytest.mark.integration

ENV_FLOW = """
import json, os
from baton import flow

@flow
def envdump():
    with open(os.environ["OUT"], "w") as out:
        json.dump({name: value for name, value in os.environ.items() if name.startswith(("BATON", "OUT"))}, out)
"""

SLEEPY_FLOW = """
import time
from baton import flow

@flow
def sleepy(seconds: float = 60.0):
    time.sleep(seconds)
"""


@pytest.fixture
def runner_key(admin: Client) -> str:
    return admin.create_api_key("runner", name="agent tests").key


@pytest.fixture
def fast_settings() -> BatonSettings:
    return load_settings(agent={"poll_wait_seconds": 1.0, "heartbeat_interval_seconds": 0.5})


@pytest.fixture
def local_agent(server: ServerProcess, runner_key: str, fast_settings: BatonSettings) -> Callable[..., LocalAgent]:
    def _make(**options: Any) -> LocalAgent:
        options.setdefault("hostname_label", False)
        return LocalAgent(settings=fast_settings, key=runner_key, api=server.url, **options)

    return _make


def register(admin: Client, name: str, source: str, entrypoint: str) -> None:
    register_source_flow(admin, name=name, entrypoint=entrypoint, source=source, tasks=[], parameters_schema={})


def wait_state(admin: Client, run_id: str, states: Collection[str], timeout: float = 30) -> Any:
    return wait_for(
        lambda: (run := admin.get_flow_run(run_id)).state in states and run,
        timeout=timeout,
        interval=0.1,
        what=f"run {run_id} to reach {states}",
    )


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split(")")[-1].split()[0] == "Z"


def test_local_agent_runs_a_flow_to_success_through_every_state(
    admin: Client, local_agent: Callable[..., LocalAgent], run_in_thread: Callable[[Any], AgentThread]
) -> None:
    register_source_flow(admin)
    run_id = admin.create_flow_run(flow_name="hello", parameters={"name": "agent"}).id
    agent = local_agent()
    running = run_in_thread(agent)

    run = wait_state(admin, run_id, FINAL_STATES)

    assert run.state == "Success", run.state_message
    assert [state.name for state in run.states] == ["Scheduled", "Pending", "Submitted", "Running", "Success"]
    submitted = run.states[2]
    assert submitted.message == f"PID: {submitted.data['pid']}"
    assert run.agent_id == agent.agent_id
    agent.stop()
    running.join()


def test_the_flow_run_gets_its_run_token_never_the_agent_key(
    admin: Client,
    runner_key: str,
    local_agent: Callable[..., LocalAgent],
    run_in_thread: Callable[[Any], AgentThread],
    tmp_path: Path,
) -> None:
    register(admin, "envdump", ENV_FLOW, "envdump")
    out = tmp_path / "env.json"
    run_id = admin.create_flow_run(flow_name="envdump").id
    agent = local_agent(env={"OUT": str(out)}, labels=["envtest"], no_cloud_logs=True)
    admin_run = admin.create_flow_run(flow_name="envdump", labels=["envtest"])
    running = run_in_thread(agent)

    run = wait_state(admin, admin_run.id, FINAL_STATES)
    assert run.state == "Success", run.state_message
    env = json.loads(out.read_text())
    assert env["BATON__API__KEY"].startswith("batr_")
    assert runner_key not in env.values()
    assert env["BATON_FLOW_RUN_ID"] == admin_run.id
    assert env["BATON_TENANT_ID"] == admin.whoami().tenant_id
    assert json.loads(env["BATON__AGENT__LABELS"]) == ["envtest"]
    assert env["BATON__LOGGING__SEND_TO_API"] == "false"
    # The labelled agent never took the unlabelled run.
    assert admin.get_flow_run(run_id).state == "Scheduled"
    agent.stop()
    running.join()


def test_cancel_kills_the_flow_process_and_the_run_ends_cancelled(
    admin: Client, local_agent: Callable[..., LocalAgent], run_in_thread: Callable[[Any], AgentThread]
) -> None:
    register(admin, "sleepy", SLEEPY_FLOW, "sleepy")
    run_id = admin.create_flow_run(flow_name="sleepy").id
    agent = local_agent()
    running = run_in_thread(agent)
    run = wait_state(admin, run_id, {"Running"})
    pid = next(state.data["pid"] for state in run.states if state.name == "Submitted")

    admin.cancel_flow_run(run_id)

    assert wait_state(admin, run_id, FINAL_STATES, timeout=20).state == "Cancelled"
    wait_for(lambda: process_gone(pid), timeout=10, what="the flow process to end")
    agent.stop()
    running.join()


def test_max_polls_leaves_submitted_runs_running_on_their_own(
    admin: Client, local_agent: Callable[..., LocalAgent]
) -> None:
    register(admin, "sleepy", SLEEPY_FLOW, "sleepy")
    run_id = admin.create_flow_run(flow_name="sleepy", parameters={"seconds": 1.0}).id

    local_agent(max_polls=1).start()  # returns once the run it claimed is Submitted

    assert admin.get_flow_run(run_id).state in {"Submitted", "Running"}
    assert wait_state(admin, run_id, FINAL_STATES).state == "Success"


@pytest.fixture
def agent_process(
    server: ServerProcess, runner_key: str, tmp_path: Path
) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        env = server.env(
            BATON__AGENT__POLL_WAIT_SECONDS="1",
            BATON__AGENT__HEARTBEAT_INTERVAL_SECONDS="0.5",
            BATON__AGENT__HOSTNAME_LABEL="false",
        )
        env["BATON__API__KEY"] = runner_key
        code = "from baton.agent import LocalAgent; LocalAgent().start()"
        log = (tmp_path / f"agent-{len(processes)}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-c", code], env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
        log.close()
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_sigterm_is_a_warm_stop_that_lets_the_running_flow_finish(
    admin: Client, agent_process: Callable[[], subprocess.Popen[str]]
) -> None:
    register(admin, "sleepy", SLEEPY_FLOW, "sleepy")
    run_id = admin.create_flow_run(flow_name="sleepy", parameters={"seconds": 3.0}).id
    agent = agent_process()
    wait_state(admin, run_id, {"Running"})

    agent.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    later = admin.create_flow_run(flow_name="sleepy", parameters={"seconds": 0.1}).id

    assert agent.poll() is None, "a warm stop waits for the running flow"
    assert agent.wait(30) == 0
    assert admin.get_flow_run(run_id).state == "Success"
    assert admin.get_flow_run(later).state == "Scheduled"


def test_a_second_sigterm_is_a_cold_stop_that_kills_the_flow(
    admin: Client, agent_process: Callable[[], subprocess.Popen[str]]
) -> None:
    register(admin, "sleepy", SLEEPY_FLOW, "sleepy")
    run_id = admin.create_flow_run(flow_name="sleepy").id
    agent = agent_process()
    run = wait_state(admin, run_id, {"Running"})
    pid = next(state.data["pid"] for state in run.states if state.name == "Submitted")

    agent.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    agent.send_signal(signal.SIGTERM)

    agent.wait(20)
    # The engine may record its own Cancelled on SIGTERM before the agent's Failed: either is a final end.
    assert wait_state(admin, run_id, FINAL_STATES, timeout=10).state in {"Failed", "Cancelled"}
    wait_for(lambda: process_gone(pid), timeout=10, what="the flow process to end")


def test_many_in_memory_agents_deploy_each_run_exactly_once(
    server: ServerProcess, admin: Client, runner_key: str, fast_settings: BatonSettings
) -> None:
    # Given 100 runs and 6 agents that end each deployment as soon as it starts (bench/chaos.py runs thousands)
    register_source_flow(admin)
    run_ids = {admin.create_flow_run(flow_name="hello").id for _ in range(100)}
    agents: list[InMemoryAgent] = []

    def finish_at_once(deployment: FakeDeployment) -> None:
        deployment.exit_code = 0  # the process "ended" as soon as it started

    for index in range(6):
        agent = InMemoryAgent(settings=fast_settings, key=runner_key, api=server.url, name=f"memory-{index}", limit=10)
        agent.on_deploy = finish_at_once
        agents.append(agent)
    threads = [AgentThread(agent).start() for agent in agents]

    # Then every run is deployed by exactly one agent, and ends
    try:
        wait_for(
            lambda: sum(len(agent.deployments) for agent in agents) >= len(run_ids),
            timeout=60,
            what="all runs deployed",
        )
        deployed = Counter(run_id for agent in agents for run_id in agent.deployments)
        assert set(deployed) == run_ids
        assert max(deployed.values()) == 1
        assert sum(1 for agent in agents if agent.deployments) > 1, "the work was shared"
        assert all(agent.status.active_runs <= 10 for agent in agents)
        wait_for(
            lambda: all(admin.get_flow_run(run_id).state in FINAL_STATES for run_id in list(run_ids)[:20]),
            timeout=30,
            what="runs to end",
        )
    finally:
        for agent in agents:
            agent.stop(cold=True)
        for running in threads:
            running.join(20)

"""Issue 8, item 9 on the Docker agent: a run past its timeout has its container stopped and ends Failed
"timed out after N s", through the same watch-loop rule as the local agent (the driver's kill)."""

from __future__ import annotations

import threading
from pathlib import Path

import docker
import pytest

from baton.agent.docker import DockerAgent
from baton.client import Client
from baton.schemas.responses import FlowRunRead
from baton.schemas.states import FINAL_STATES
from baton.settings import load_settings
from docker_support import DockerCleanup
from support import ServerProcess, register_source_flow, wait_for

pytestmark = pytest.mark.integration

SLEEPER = """
import time
from baton import flow

@flow
def sleeper():
    time.sleep(120)
"""


def test_a_container_past_the_agents_run_timeout_is_stopped_and_the_run_fails(
    server: ServerProcess,
    admin: Client,
    docker_client: docker.DockerClient,
    docker_cleanup: DockerCleanup,
    baton_image: str,
    tmp_path: Path,
) -> None:
    # Given a flow that sleeps two minutes, and a Docker agent started with --run-timeout 3
    register_source_flow(
        admin,
        name="sleeper",
        entrypoint="sleeper",
        source=SLEEPER,
        tasks=[],
        parameters_schema={},
        run_config={"type": "docker", "image": baton_image},
    )
    run_id = admin.create_flow_run(flow_name="sleeper").id
    docker_cleanup.containers_labelled(f"io.baton.flow-run-id={run_id}")
    key = admin.create_api_key("runner", name="docker timeout").key
    settings = load_settings(
        agent={"poll_wait_seconds": 1.0, "heartbeat_interval_seconds": 0.5, "run_timeout_seconds": 3}
    )
    agent = DockerAgent(settings=settings, key=key, api=server.url, networks=["host"], no_pull=True)
    agent.watch_interval_seconds = 0.2
    thread = threading.Thread(target=agent.start, daemon=True)
    thread.start()
    try:
        # When the run has been going longer than that
        def ended() -> FlowRunRead | None:
            run = admin.get_flow_run(run_id)
            return run if run.state in FINAL_STATES else None

        run = wait_for(ended, timeout=90, interval=0.2, what="the run to end")
        # Then it failed with the timeout's message, after it had been Running, and its container is gone
        assert (run.state, run.state_message) == ("Failed", "timed out after 3 s")
        assert "Running" in [s.name for s in run.states]

        def no_running_container() -> bool:
            found = docker_client.containers.list(filters={"label": f"io.baton.flow-run-id={run_id}"})
            return not found

        wait_for(no_running_container, timeout=30, what="the run's container to stop")
    finally:
        agent.stop(cold=True)
        thread.join(30)

"""Prefect 1.4.1's Docker agent against a Baton server: a flow with ``DockerRun`` runs in a container of the real
daemon (host network, 127.0.0.1), its run Submitted with the container's id; an image the daemon lacks fails the
run with the deployment error."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest

from prefect1.conftest import VENV, Prefect1, skip_or_fail
from support import ServerProcess

IMAGE = "baton-prefect1:1.4.1"

FLOW = """
import prefect
from prefect import Flow, Parameter, task
from prefect.run_configs import DockerRun
from prefect.storage import Local


@task
def greet(name):
    prefect.context.get("logger").info("hello %s from a container", name)
    return name


with Flow("in-docker", run_config=DockerRun(image=IMAGE, labels=["p1docker"]),
          storage=Local(path=SCRIPT, stored_as_script=True, add_default_labels=False)) as flow:
    greet(Parameter("name", default="baton"))
"""


@pytest.fixture
def prefect1_image(docker_client: docker.DockerClient) -> str:
    try:
        docker_client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        skip_or_fail(f"no image {IMAGE} in the daemon: make it with scripts/prefect1/image.sh")
    return IMAGE


def register(prefect1: Prefect1, image: str) -> Path:
    assert prefect1.cli("auth", "login", "--key", prefect1.server.admin_key).returncode == 0
    assert prefect1.cli("create", "project", "d").returncode == 0
    flows = prefect1.home / "flows"
    flows.mkdir()
    script = flows / "in_docker.py"
    script.write_text(FLOW.replace("SCRIPT", repr(str(script))).replace("IMAGE", repr(image)))
    done = prefect1.cli("register", "--project", "d", "--path", str(flows))
    assert done.returncode == 0, done.stdout + done.stderr
    return flows


@contextmanager
def docker_agent(prefect1: Prefect1, flows: Path) -> Iterator[None]:
    log = (prefect1.home / "agent.log").open("w")
    agent = subprocess.Popen(
        [
            *(str(VENV / "bin" / "prefect"), "agent", "docker", "start", "--label", "p1docker", "--no-pull"),
            *("--network", "host", "--volume", f"{flows}:{flows}", "--show-flow-logs"),
        ],
        env=prefect1.env,
        cwd=prefect1.home,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield
    finally:
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        log.close()


def run_flow(prefect1: Prefect1, server: ServerProcess, flows: Path, timeout: float = 120) -> str:
    created = prefect1.cli("run", "--name", "in-docker", "--project", "d", "--quiet")
    assert created.returncode == 0, created.stdout + created.stderr
    run_id = created.stdout.strip().splitlines()[-1]
    with docker_agent(prefect1, flows):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.client().get_flow_run(run_id).state in ("Success", "Failed", "Cancelled"):
                return run_id
            time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not end; agent:\n{(prefect1.home / 'agent.log').read_text()}")


def test_docker_agent_runs_a_flow_in_a_container(
    prefect1: Prefect1, server: ServerProcess, prefect1_image: str, docker_client: docker.DockerClient
) -> None:
    flows = register(prefect1, prefect1_image)

    run_id = run_flow(prefect1, server, flows)

    run = server.client().get_flow_run(run_id)
    assert run.state == "Success", (run.state_message, (prefect1.home / "agent.log").read_text())
    assert run.deployment is not None
    container_id = run.deployment["prefect1"].removeprefix("Container ID: ")
    assert len(container_id) == 64
    lines = [line.message for line in server.client().get_logs(run_id).logs]
    assert any("hello baton from a container" in line for line in lines), lines


def test_an_image_the_daemon_lacks_fails_the_run_with_the_deployment_error(
    prefect1: Prefect1, server: ServerProcess, prefect1_image: str
) -> None:
    flows = register(prefect1, "baton-prefect1:no-such-tag")

    run_id = run_flow(prefect1, server, flows)

    run = server.client().get_flow_run(run_id)
    assert run.state == "Failed"
    assert "no-such-tag" in (run.state_message or "")
    assert [state.name for state in run.states] == ["Scheduled", "Pending", "Submitted", "Failed"]

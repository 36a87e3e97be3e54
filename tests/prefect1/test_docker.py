"""Prefect 1.4.1's Docker agent against a Baton server: a flow with ``DockerRun`` runs in a container of the real
daemon (host network, 127.0.0.1), its run Submitted with the container's id; an image the daemon lacks fails the
run with the deployment error."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import pytest

from prefect1.conftest import Prefect1, log_lines, skip_or_fail
from prefect1.runs_support import prefect1_agent
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
    options = ("--label", "p1docker", "--no-pull", "--network", "host", "--volume", f"{flows}:{flows}")
    with prefect1_agent(prefect1, "docker", *options, "--show-flow-logs"):
        yield


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
    lines = log_lines(server, run_id, "hello baton from a container")
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


IN_IMAGE = """
import prefect
from prefect import Flow, task
from prefect.run_configs import DockerRun
from prefect.storage import Docker


@task
def where():
    prefect.context.get("logger").info("running from the image's own copy of the flow")


with Flow("in-image", run_config=DockerRun(labels=["p1docker"]),
          storage=Docker(image_name="baton-prefect1-flow", image_tag=TAG, path="/opt/flows/in_image.py",
                         stored_as_script=True)) as flow:
    where()

if __name__ == "__main__":
    flow.storage.add_flow(flow)  # what a build would record: where the image holds the flow
    flow.register(project_name="d", build=False, no_url=True)
"""


def test_docker_storage_runs_the_flow_baked_into_its_image(
    prefect1: Prefect1, server: ServerProcess, prefect1_image: str, docker_client: docker.DockerClient
) -> None:
    # Docker storage's own build installs pip from an index (none is reachable here): the image is built the same
    # way offline, and the flow registered with build=False, as a CI that builds images apart would.
    assert prefect1.cli("auth", "login", "--key", prefect1.server.admin_key).returncode == 0
    assert prefect1.cli("create", "project", "d").returncode == 0
    tag = f"t{uuid.uuid4().hex[:12]}"
    context = prefect1.home / "image"
    context.mkdir()
    (context / "in_image.py").write_text(IN_IMAGE.replace("TAG", repr(tag)))
    (context / "Dockerfile").write_text(f"FROM {prefect1_image}\nCOPY in_image.py /opt/flows/in_image.py\n")
    image, _logs = docker_client.images.build(path=str(context), tag=f"baton-prefect1-flow:{tag}", network_mode="none")
    try:
        registered = prefect1.python((context / "in_image.py").read_text())
        assert registered.returncode == 0, registered.stdout + registered.stderr
        created = prefect1.cli("run", "--name", "in-image", "--project", "d", "--quiet")
        run_id = created.stdout.strip().splitlines()[-1]
        with docker_agent(prefect1, context):
            deadline = time.monotonic() + 120
            while server.client().get_flow_run(run_id).state not in ("Success", "Failed", "Cancelled"):
                assert time.monotonic() < deadline, (prefect1.home / "agent.log").read_text()
                time.sleep(0.5)
        run = server.client().get_flow_run(run_id)
        assert run.state == "Success", (run.state_message, (prefect1.home / "agent.log").read_text())
        lines = log_lines(server, run_id, "image's own copy")
        assert any("image's own copy" in line for line in lines), lines
    finally:
        # The agent's container may still be on its way out (Prefect 1 auto-removes it after it exits).
        for container in docker_client.containers.list(all=True, filters={"ancestor": image.id}):
            container.remove(force=True)
        docker_client.images.remove(image.id, force=True)

"""Storage ``docker`` on a real daemon: the flow's code is inside an image built FROM baton:<version> (offline, no
pull), and the Docker agent runs that image; the local agent refuses such a run with a clear message."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from baton.agent.docker import DockerAgent
from baton.client import Client
from baton.schemas.states import FINAL_STATES
from baton.sdk.registration import build_flow_payload, load_flows
from baton.sdk.storage import DockerStorage

from .conftest import AgentThread
from .docker_helpers import wait_state

pytestmark = pytest.mark.integration

IN_IMAGE_FLOW = """
from baton import flow
from helper import WORD


@flow
def in_image() -> str:
    print("the word is", WORD, flush=True)
    return WORD
"""


@pytest.fixture(scope="module")
def flows_image(docker_client: docker.DockerClient, baton_image: str) -> Iterator[str]:
    """An image FROM the Baton image with a flow and its helper in /opt/flows (built with no network)."""
    files = {
        "Dockerfile": f"FROM {baton_image}\nCOPY in_image.py helper.py /opt/flows/\n",
        "in_image.py": IN_IMAGE_FLOW,
        "helper.py": "WORD = 'baked into the image'\n",
    }
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    context.seek(0)
    tag = "baton-test-flows:storage"
    docker_client.images.build(fileobj=context, custom_context=True, tag=tag, pull=False, network_mode="none", rm=True)
    yield tag
    docker_client.images.remove(tag, force=True)


def test_the_docker_agent_runs_a_flow_whose_code_is_in_its_image(
    admin: Client,
    flows_image: str,
    tmp_path: Path,
    docker_agent: Callable[..., DockerAgent],
    new_run: Callable[..., str],
    run_in_thread: Callable[[Any], AgentThread],
) -> None:
    # Given the flow registered from a local copy, with storage docker naming the image and the file in it
    local_copy = tmp_path / "in_image.py"
    local_copy.write_text(IN_IMAGE_FLOW)
    (tmp_path / "helper.py").write_text("WORD = 'the local copy: must not be what runs'\n")
    [flow] = load_flows(local_copy)
    payload = build_flow_payload(flow, local_copy, storage=DockerStorage(image=flows_image))
    assert payload["storage"] == {
        "type": "docker",
        "image": flows_image,
        "path": "/opt/flows/in_image.py",
        "repo": None,
        "ref": None,
        "bundle": None,
    }
    admin.register_flow(payload)
    run_id = new_run("in_image")

    # When the Docker agent runs it (no run config image: the storage's image)
    agent = docker_agent(no_pull=True)
    running = run_in_thread(agent)
    run = wait_state(admin, run_id, FINAL_STATES, timeout=90)

    # Then the code in the image ran
    assert run.state == "Success", run.state_message
    printed = [line.message for line in admin.get_logs(run_id).logs if line.name == "stdout"]
    assert "the word is baked into the image" in " ".join(printed), printed
    agent.stop(cold=True)
    running.join(30)

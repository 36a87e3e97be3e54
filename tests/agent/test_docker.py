"""The Docker agent on the real Docker engine, against a real API server: every flow run is a container.

Containers use the host network and reach the server on 127.0.0.1; images are local (``baton_image`` is built from
this checkout), nothing is pulled from the internet. Everything a test creates in Docker is removed by
``docker_cleanup``. The daemon stop/start test runs a private dockerd, so it disturbs no other test.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from baton.agent.base import Agent
from baton.agent.docker import DockerAgent, DockerDriver
from baton.agent.docker_spec import DockerOptions
from baton.agent.driver import Deployment, Ended
from baton.client import Client
from baton.exceptions import PlatformUnavailableError
from baton.schemas.responses import ClaimedRun
from baton.schemas.states import FINAL_STATES
from baton.settings import BatonSettings
from docker_support import DockerCleanup
from support import HELLO_SOURCE, ServerProcess, free_port, local_get, wait_for

from .conftest import AgentThread
from .docker_helpers import (
    ENV_FLOW,
    HOG_FLOW,
    SLEEPY_FLOW,
    VOLUME_FLOW,
    PrivateDockerd,
    copy_image,
    private_dockerd,
    register_flow,
    run_containers,
    submitted_container_id,
    wait_state,
)
from .fake_api import FakeApi

pytestmark = pytest.mark.integration

MakeAgent = Callable[..., DockerAgent]
RunInThread = Callable[[Any], AgentThread]


def stop_agent(agent: DockerAgent, running: AgentThread) -> None:
    agent.stop(cold=True)
    running.join(30)


def test_a_docker_run_reaches_success_and_submitted_carries_the_container_id(
    admin: Client,
    baton_image: str,
    docker_client: docker.DockerClient,
    docker_agent: MakeAgent,
    new_run: Callable[..., str],
    run_in_thread: RunInThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    register_flow(admin, "hello-docker", HELLO_SOURCE, "hello", image=baton_image)
    run_id = new_run("hello-docker", parameters={"name": "docker"})
    agent = docker_agent(show_flow_logs=True)
    running = run_in_thread(agent)

    run = wait_state(admin, run_id, FINAL_STATES, timeout=90)

    assert run.state == "Success", run.state_message
    assert [state.name for state in run.states] == ["Scheduled", "Pending", "Submitted", "Running", "Success"]
    submitted = run.states[2]
    assert submitted.data is not None
    container_id = submitted.data["container_id"]
    assert submitted.message == f"Container ID: {container_id}"
    assert submitted.data["image"] == baton_image
    assert submitted.data["container_name"] == f"baton-{run.name}-{run_id.replace('-', '')[:8]}"
    # The container is removed once its exit code was read; its output reached the agent's stdout (-f).
    wait_for(lambda: not run_containers(docker_client, run_id), timeout=10, what="the container to be removed")
    wait_for(lambda: f"[{run.name}] hello docker" in capsys.readouterr().out, timeout=5, what="the flow's output")
    stop_agent(agent, running)


def test_run_config_env_beats_agent_env_and_the_container_gets_the_run_token(
    admin: Client,
    runner_key: str,
    server: ServerProcess,
    baton_image: str,
    docker_agent: MakeAgent,
    new_run: Callable[..., str],
    run_in_thread: RunInThread,
    tmp_path: Path,
) -> None:
    run_env = {"SHARED": "from the run config", "baton__api__key": "stolen", "BATON__API__URL": "http://evil"}
    register_flow(admin, "envdump-docker", ENV_FLOW, "envdump", image=baton_image, env=run_env)
    run_id = new_run("envdump-docker")
    agent = docker_agent(env={"SHARED": "from the agent", "AGENT_ONLY": "yes"}, volumes=[f"{tmp_path}:/out"])
    running = run_in_thread(agent)

    run = wait_state(admin, run_id, FINAL_STATES, timeout=90)

    assert run.state == "Success", run.state_message
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["SHARED"] == "from the run config"
    assert env["AGENT_ONLY"] == "yes"
    assert env["BATON__API__KEY"].startswith("batr_")
    assert runner_key not in json.dumps(env)
    assert "baton__api__key" not in env
    assert env["BATON__API__URL"] == server.url  # the host network: the agent's own URL
    assert env["BATON_FLOW_RUN_ID"] == run_id
    stop_agent(agent, running)


def test_a_read_only_volume_is_visible_but_not_writable_and_named_volumes_are_created(
    admin: Client,
    baton_image: str,
    docker_client: docker.DockerClient,
    docker_cleanup: DockerCleanup,
    docker_agent: MakeAgent,
    new_run: Callable[..., str],
    run_in_thread: RunInThread,
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "in.txt").write_text("from the host")
    volume = docker_cleanup.volume(f"baton-test-{secrets.token_hex(4)}")
    register_flow(admin, "shared-docker", VOLUME_FLOW, "shared", image=baton_image)
    reader = new_run("shared-docker")
    writer = new_run("shared-docker", parameters={"write": True})
    agent = docker_agent(volumes=[f"{shared}:/shared:ro", f"{volume}:/cache", "/scratch"])
    running = run_in_thread(agent)

    read = wait_state(admin, reader, FINAL_STATES, timeout=90)
    wrote = wait_state(admin, writer, FINAL_STATES, timeout=90)

    assert read.state == "Success", read.state_message
    assert wrote.state == "Failed"
    assert "Read-only file system" in (wrote.state_message or "")
    assert not (shared / "out.txt").exists()
    assert docker_client.volumes.get(volume).attrs["Labels"] == {"io.baton.created-by": "docker-agent"}
    stop_agent(agent, running)


def test_a_network_that_does_not_exist_fails_the_run_with_the_daemons_message(
    admin: Client,
    baton_image: str,
    docker_client: docker.DockerClient,
    docker_agent: MakeAgent,
    new_run: Callable[..., str],
    run_in_thread: RunInThread,
) -> None:
    network = f"baton-test-missing-{secrets.token_hex(4)}"
    register_flow(admin, "hello-docker", HELLO_SOURCE, "hello", image=baton_image)
    run_id = new_run("hello-docker")
    agent = docker_agent(networks=[network])
    running = run_in_thread(agent)

    run = wait_state(admin, run_id, FINAL_STATES, timeout=60)

    assert run.state == "Failed"
    assert f"network {network} not found" in (run.state_message or "")
    assert not run_containers(docker_client, run_id)
    stop_agent(agent, running)


@pytest.mark.parametrize(
    ("image", "options", "message"),
    [
        (
            "baton-test-missing:{hex}",
            {"no_pull": True},
            "image baton-test-missing:{hex} is not present locally and pulling is disabled (--no-pull)",
        ),
        (
            # Nothing is contacted: the allow-list is checked before any pull.
            "127.0.0.1:9/baton-test:{hex}",
            {"registry_allow_list": ["registry.example.com"]},
            "image 127.0.0.1:9/baton-test:{hex} is from registry 127.0.0.1:9, which is not in the agent's "
            "registry allow-list (registry.example.com)",
        ),
        (
            # A pull that fails: no registry listens on 127.0.0.1:9 (the discard port), so the daemon says so.
            "127.0.0.1:9/baton-test:{hex}",
            {},
            "cannot pull image 127.0.0.1:9/baton-test:{hex}: ",
        ),
    ],
    ids=["missing-with-no-pull", "registry-not-allowed", "pull-fails"],
)
def test_an_image_that_cannot_be_had_fails_the_run_clearly(
    admin: Client,
    docker_client: docker.DockerClient,
    docker_agent: MakeAgent,
    new_run: Callable[..., str],
    run_in_thread: RunInThread,
    image: str,
    options: dict[str, Any],
    message: str,
) -> None:
    hex_id = secrets.token_hex(4)
    register_flow(admin, "hello-docker", HELLO_SOURCE, "hello", image=image.format(hex=hex_id))
    run_id = new_run("hello-docker")
    agent = docker_agent(**options)
    running = run_in_thread(agent)

    run = wait_state(admin, run_id, FINAL_STATES, timeout=60)

    assert run.state == "Failed"
    assert (run.state_message or "").startswith(message.format(hex=hex_id)), run.state_message
    assert not run_containers(docker_client, run_id)
    stop_agent(agent, running)


def wait_for_output(docker_client: docker.DockerClient, container_id: str, text: str) -> None:
    container = docker_client.containers.get(container_id)
    wait_for(lambda: text in container.logs().decode(), timeout=60, what=f"{text!r} in the container's output")


def test_a_container_killed_from_outside_fails_the_run_with_its_exit_code_and_last_lines(
    admin: Client,
    baton_image: str,
    docker_client: docker.DockerClient,
    docker_agent: MakeAgent,
    new_run: Callable[..., str],
    run_in_thread: RunInThread,
) -> None:
    register_flow(admin, "sleepy-docker", SLEEPY_FLOW, "sleepy", image=baton_image)
    run_id = new_run("sleepy-docker")
    agent = docker_agent()
    running = run_in_thread(agent)
    container_id = submitted_container_id(wait_state(admin, run_id, {"Running"}, timeout=90))
    wait_for_output(docker_client, container_id, "sleepy line 2")

    docker_client.api.kill(container_id)  # SIGKILL, as `docker kill` does

    run = wait_state(admin, run_id, FINAL_STATES, timeout=30)
    assert run.state == "Failed"
    message = run.state_message or ""
    assert message.startswith("process exited with code 137 before reporting a final state: container baton-")
    assert "last log lines:" in message
    assert "sleepy line 2" in message
    assert run.states[-1].data == {"exit_code": 137}
    wait_for(lambda: not run_containers(docker_client, run_id), timeout=10, what="the container to be removed")
    stop_agent(agent, running)


def test_a_container_over_its_memory_limit_is_reported_oom_killed(
    admin: Client,
    baton_image: str,
    docker_client: docker.DockerClient,
    docker_agent: MakeAgent,
    new_run: Callable[..., str],
    run_in_thread: RunInThread,
) -> None:
    # 32 MB is below what the engine itself needs once Baton is imported: the kernel kills it (cgroup v1 and v2
    # both report it in State.OOMKilled) before or while the flow allocates.
    register_flow(admin, "hog-docker", HOG_FLOW, "hog", image=baton_image, host_config={"mem_limit": "32m"})
    run_id = new_run("hog-docker")
    agent = docker_agent()
    running = run_in_thread(agent)

    run = wait_state(admin, run_id, FINAL_STATES, timeout=90)

    assert run.state == "Failed"
    message = run.state_message or ""
    assert "process exited with code 137" in message, message
    assert "was OOM-killed: it ran out of memory (limit 33554432 bytes); last log lines:" in message
    stop_agent(agent, running)


def test_cancel_stops_the_container_ends_cancelled_and_removes_it(
    admin: Client,
    baton_image: str,
    docker_client: docker.DockerClient,
    docker_agent: MakeAgent,
    new_run: Callable[..., str],
    run_in_thread: RunInThread,
) -> None:
    register_flow(admin, "sleepy-docker", SLEEPY_FLOW, "sleepy", image=baton_image)
    run_id = new_run("sleepy-docker")
    agent = docker_agent()
    agent.kill_grace_seconds = 5
    running = run_in_thread(agent)
    run = wait_state(admin, run_id, {"Running"}, timeout=90)
    container = docker_client.containers.get(submitted_container_id(run))
    assert container.labels["io.baton.flow-run-id"] == run_id
    assert container.labels["io.baton.flow-id"] == run.flow_id
    assert container.labels["io.baton.flow-name"] == "sleepy-docker"
    assert container.attrs["HostConfig"]["AutoRemove"] is False

    admin.cancel_flow_run(run_id)

    run = wait_state(admin, run_id, FINAL_STATES, timeout=30)
    assert run.state == "Cancelled", run.state_message
    wait_for(lambda: not run_containers(docker_client, run_id), timeout=15, what="the container to be removed")
    stop_agent(agent, running)


def test_a_restarted_agent_adopts_its_containers_and_removes_those_of_ended_runs(
    admin: Client,
    baton_image: str,
    docker_client: docker.DockerClient,
    docker_agent: MakeAgent,
    new_run: Callable[..., str],
    run_in_thread: RunInThread,
) -> None:
    # Given an agent that deployed two runs and left (--max-polls: their containers run on, as after a crash)
    register_flow(admin, "sleepy-docker", SLEEPY_FLOW, "sleepy", image=baton_image)
    kept, ended = new_run("sleepy-docker"), new_run("sleepy-docker")
    run_in_thread(docker_agent(max_polls=1, limit=2, name="restarting")).join(60)
    for run_id in (kept, ended):
        assert wait_state(admin, run_id, {"Running", *FINAL_STATES}, timeout=90).state == "Running"
    [container] = run_containers(docker_client, kept)
    container.reload()
    labels = container.labels
    assert (labels["io.baton.agent"], labels["io.baton.tenant-id"]) == ("restarting", admin.whoami().tenant_id)
    # And one of the runs ended meanwhile (an operator failed it)
    admin.set_flow_run_state(ended, "Failed", "failed by hand")

    # When an agent process of the same name starts
    second = docker_agent(name="restarting")
    running = run_in_thread(second)

    # Then it adopts the other run's container and removes the ended run's
    wait_for(lambda: kept in second.registry, timeout=30, what="the second agent to adopt the running run")
    wait_for(lambda: not run_containers(docker_client, ended), timeout=30, what="the ended run's container to go")
    # And a cancel of the adopted run stops and removes its container
    admin.cancel_flow_run(kept)
    assert wait_state(admin, kept, FINAL_STATES, timeout=60).state == "Cancelled"
    wait_for(lambda: not run_containers(docker_client, kept), timeout=30, what="the adopted run's container to go")
    stop_agent(second, running)


# --- the driver alone (a fake API; containers that run a script, not a flow) ---------------------


class ScriptDriver(DockerDriver):
    """A Docker driver whose containers run a Python script instead of the engine."""

    script = "pass"

    def command(self, claimed: ClaimedRun) -> list[str]:
        return ["python", "-c", self.script]


class ScriptAgent(Agent):
    driver: ScriptDriver


@pytest.fixture
def script_agent(
    settings: BatonSettings, api: FakeApi, baton_image: str, docker_cleanup: DockerCleanup
) -> Iterator[Callable[..., tuple[ScriptAgent, ClaimedRun]]]:
    """A script agent (not started) and a claimed run of ``baton_image`` for it, whose containers are removed."""
    agents: list[ScriptAgent] = []

    def _make(script: str, **options: Any) -> tuple[ScriptAgent, ClaimedRun]:
        options.setdefault("networks", ["host"])
        driver = ScriptDriver(DockerOptions(**options))
        driver.script = script
        agent = ScriptAgent(driver, settings=settings, client=api)
        agents.append(agent)
        run_id = api.add_run(type="docker", image=baton_image)
        docker_cleanup.containers_labelled(f"io.baton.flow-run-id={run_id}")
        return agent, api.claimed_run(api.runs[run_id])

    yield _make
    for agent in agents:
        asyncio.run(agent.driver.close())


def deploy(agent: Agent, claimed: ClaimedRun, url: str = "http://127.0.0.1:9") -> Deployment:
    return asyncio.run(agent.driver.deploy(claimed, {"BATON__API__URL": url, "BATON_FLOW_RUN_ID": claimed.flow_run.id}))


def wait_ended(agent: Agent, deployment: Deployment, timeout: float = 30) -> Ended:
    ended = wait_for(
        lambda: asyncio.run(agent.driver.inspect(deployment)), timeout=timeout, what="the container to end"
    )
    assert isinstance(ended, Ended)
    return ended


def test_kill_sends_sigterm_then_sigkill_after_the_grace_period_and_removes_the_container(
    script_agent: Callable[..., tuple[ScriptAgent, ClaimedRun]], docker_client: docker.DockerClient
) -> None:
    script = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready'); time.sleep(120)"
    agent, claimed = script_agent(script)
    deployment = deploy(agent, claimed)
    wait_for_output(docker_client, deployment.data["container_id"], "ready")

    started = time.monotonic()
    asyncio.run(agent.driver.kill(deployment, grace_seconds=1))

    assert 1 <= time.monotonic() - started < 15
    assert not run_containers(docker_client, claimed.flow_run.id)
    name = deployment.data["container_name"]
    assert asyncio.run(agent.driver.inspect(deployment)) == Ended(
        None, f"the container {name} was removed before the run reached a final state"
    )


def test_an_exit_is_read_with_its_last_lines_before_the_container_is_removed(
    script_agent: Callable[..., tuple[ScriptAgent, ClaimedRun]], docker_client: docker.DockerClient
) -> None:
    agent, claimed = script_agent("import sys\nfor n in range(30): print(f'line {n}')\nsys.exit(3)")
    deployment = deploy(agent, claimed)

    ended = wait_ended(agent, deployment)

    assert ended.exit_code == 3
    name, image = deployment.data["container_name"], deployment.data["image"]
    expected_lines = "\n".join(f"line {n}" for n in range(10, 30))  # the last 20
    assert ended.message == f"container {name} (image {image}); last log lines:\n{expected_lines}"
    assert not run_containers(docker_client, claimed.flow_run.id)


def test_other_networks_are_connected_and_a_localhost_api_url_is_rewritten_off_the_host_network(
    script_agent: Callable[..., tuple[ScriptAgent, ClaimedRun]],
    docker_client: docker.DockerClient,
    docker_cleanup: DockerCleanup,
) -> None:
    # The containers only sleep: nothing is sent anywhere.
    first, second = (docker_cleanup.network(f"baton-test-{secrets.token_hex(4)}") for _ in range(2))
    for network in (first, second):
        docker_client.networks.create(network)
    agent, claimed = script_agent("import time; time.sleep(120)", networks=[first, second])

    deployment = deploy(agent, claimed, url="http://127.0.0.1:4200")

    container = docker_client.containers.get(deployment.data["container_id"])
    assert set(container.attrs["NetworkSettings"]["Networks"]) == {first, second}
    assert container.attrs["HostConfig"]["NetworkMode"] == first
    assert container.attrs["HostConfig"]["ExtraHosts"] == ["host.docker.internal:host-gateway"]
    assert "BATON__API__URL=http://host.docker.internal:4200" in container.attrs["Config"]["Env"]
    asyncio.run(agent.driver.kill(deployment, grace_seconds=0))


def test_an_unreachable_daemon_at_start_is_a_configuration_error(docker_agent: MakeAgent, tmp_path: Path) -> None:
    agent = docker_agent(base_url=f"unix://{tmp_path}/no-docker.sock")

    with pytest.raises(
        PlatformUnavailableError, match=f"cannot reach the Docker daemon at unix://{tmp_path}/no-docker"
    ):
        agent.start()


# --- the daemon goes away and comes back (last: it is the slowest) --------------------------------


@pytest.fixture
def own_dockerd(docker_client: docker.DockerClient, baton_image: str) -> Iterator[PrivateDockerd]:
    daemon = private_dockerd()
    try:
        client = daemon.client()
        try:
            copy_image(docker_client, client, baton_image)
        finally:
            client.close()
        yield daemon
    finally:
        daemon.remove()


def health(url: str) -> tuple[int, dict[str, Any]]:
    try:
        response = local_get(f"{url}/api/health", timeout=2)
    except httpx.HTTPError as exc:
        return 0, {"reason": str(exc)}
    return response.status_code, response.json()


def test_the_agent_claims_nothing_while_its_daemon_is_gone_and_recovers_when_it_is_back(
    admin: Client,
    baton_image: str,
    own_dockerd: PrivateDockerd,
    docker_agent: MakeAgent,
    new_run: Callable[..., str],
    run_in_thread: RunInThread,
) -> None:
    # Given an agent of a (private) daemon, healthy
    register_flow(admin, "hello-docker", HELLO_SOURCE, "hello", image=baton_image)
    address = f"http://127.0.0.1:{free_port()}"
    agent = docker_agent(base_url=own_dockerd.url, agent_address=address)
    running = run_in_thread(agent)
    wait_for(lambda: health(address)[0] == 200, timeout=30, what="a healthy agent")

    # When the daemon stops
    own_dockerd.stop()

    # Then health turns 503 naming it, and a new run is not claimed
    wait_for(lambda: health(address)[0] == 503, timeout=30, what="an unhealthy agent")
    assert f"the Docker daemon at {own_dockerd.url} does not answer" in health(address)[1]["reason"]
    run_id = new_run("hello-docker")
    time.sleep(3)
    assert admin.get_flow_run(run_id).state == "Scheduled"
    assert running.alive

    # When the daemon is back, the agent claims and runs the flow, with no restart
    own_dockerd.start()
    run = wait_state(admin, run_id, FINAL_STATES, timeout=90)
    assert run.state == "Success", run.state_message
    assert health(address)[0] == 200
    stop_agent(agent, running)


def test_a_stored_container_is_stopped_only_when_it_is_labelled_with_the_run(
    docker_agent: MakeAgent,
    docker_client: docker.DockerClient,
    docker_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    # Given a container of run-1 made before the agent restarted (the agent holds no handle of it)
    run_id = f"run-{secrets.token_hex(4)}"
    container = docker_client.containers.run(
        docker_base_image, ["sleep", "60"], labels={"io.baton.flow-run-id": run_id}, detach=True, network_mode="host"
    )
    docker_cleanup.container(container.id)
    agent = docker_agent()

    # Then another run's cancel, or junk, leaves it alone
    assert asyncio.run(agent.driver.kill_stored("another-run", {"container_id": container.id}, 1.0)) is None
    assert asyncio.run(agent.driver.kill_stored(run_id, {"container_id": 42}, 1.0)) is None
    assert asyncio.run(agent.driver.kill_stored(run_id, {"container_id": "no-such-container"}, 1.0)) is None
    container.reload()
    assert container.status == "running"
    # And its own run's cancel stops and removes it
    assert (
        asyncio.run(agent.driver.kill_stored(run_id, {"container_id": container.id}, 1.0))
        == f"its container {container.name}"
    )
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container.id)

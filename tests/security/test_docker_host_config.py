"""Issue 8, item 1: a run config cannot give itself the Docker agent's host. On the real daemon, a
``privileged`` host_config and a bind of ``/`` fail their runs before any container is created, with a message
naming the option and the agent flag that allows it; with that flag (and only that one) the same run config runs.
The container's environment is the documented flow-run environment, nothing of the agent process's own.

Containers use the host network and reach the server on 127.0.0.1; the image is ``baton_image``, built from this
checkout. Everything created in Docker is removed by ``docker_cleanup``.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from baton.agent.docker import DockerAgent
from baton.agent.docker_policy import DockerPolicy
from baton.agent.env import RESERVED_NAMES
from baton.client import Client
from baton.schemas.states import FINAL_STATES
from baton.settings import load_settings
from docker_support import DockerCleanup, run_container
from support import ServerProcess, register_source_flow, wait_for

pytestmark = pytest.mark.integration

# Succeeds only in a privileged container (CAP_SYS_ADMIN), or where the host's / is bound at /host (it reads a
# file the test wrote on the host); writes its environment to the agent's /out volume.
PROBE_FLOW = """
import json, os
from baton import flow

@flow
def probe(check: str, host_file: str = "", expected: str = ""):
    with open("/out/env.json", "w") as out:
        json.dump(dict(os.environ), out)
    if check == "privileged":
        with open("/proc/self/status") as status:
            cap_eff = int(next(line.split()[1] for line in status if line.startswith("CapEff:")), 16)
        assert cap_eff & (1 << 21), f"not privileged: CapEff {cap_eff:x}"
    if check == "host-root":
        with open("/host" + host_file) as seen:
            assert seen.read() == expected, "the host's / is not at /host"
"""
PRIVILEGED = {"privileged": True}
ROOT_BIND = {"binds": ["/:/host:ro"]}
PRIVILEGED_REFUSED = (
    "the Docker agent's policy refuses this run config: host_config.privileged: is not allowed by the agent "
    "(start the agent with --allow-host-config privileged to allow it)"
)
ROOT_BIND_REFUSED = (
    "the Docker agent's policy refuses this run config: host_config.binds[0] '/:/host:ro': host path / is outside "
    "the allowed bind prefixes (start the agent with --allow-bind / to allow it)"
)


class Running:
    """A Docker agent started in a thread (``start()`` blocks), cold-stopped when the test ends."""

    def __init__(self, agent: DockerAgent) -> None:
        self.agent = agent
        self.thread = threading.Thread(target=agent.start, name="docker-agent-under-test", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.agent.stop(cold=True)
        self.thread.join(30)
        assert not self.thread.is_alive(), "the agent did not stop"


@pytest.fixture
def start_agent(
    server: ServerProcess, admin: Client, tmp_path: Path, docker_cleanup: DockerCleanup
) -> Iterator[Callable[..., DockerAgent]]:
    """Start a Docker agent (runner key, host network, ``tmp_path/out`` at /out) with a given policy.

    It asks for ``docker_cleanup`` so that the agents stop before the test's containers are cleaned up.
    """
    key = admin.create_api_key("runner", name="docker policy tests").key
    settings = load_settings(agent={"poll_wait_seconds": 1.0, "heartbeat_interval_seconds": 0.5})
    (tmp_path / "out").mkdir()
    started: list[Running] = []

    def _start(policy: DockerPolicy | None = None) -> DockerAgent:
        agent = DockerAgent(
            settings=settings,
            key=key,
            api=server.url,
            networks=["host"],
            volumes=[f"{tmp_path / 'out'}:/out"],  # the operator's own volume: trusted, not checked
            policy=policy,
        )
        agent.watch_interval_seconds = 0.2
        started.append(Running(agent))
        return agent

    yield _start
    for running in started:
        running.stop()


@pytest.fixture
def probe_run(admin: Client, docker_cleanup: DockerCleanup, baton_image: str) -> Callable[..., str]:
    """Create a run of the probe flow with a host_config; its containers are removed after the test."""

    def _create(host_config: dict[str, Any], **parameters: str) -> str:
        name = f"probe-{secrets.token_hex(4)}"
        register_source_flow(
            admin,
            name=name,
            entrypoint="probe",
            source=PROBE_FLOW,
            tasks=[],
            parameters_schema={},
            run_config={"type": "docker", "image": baton_image, "host_config": host_config},
        )
        run_id = admin.create_flow_run(flow_name=name, parameters=parameters).id
        docker_cleanup.containers_labelled(f"io.baton.flow-run-id={run_id}")
        return run_id

    return _create


def final(admin: Client, run_id: str) -> Any:
    def ended() -> Any:
        run = admin.get_flow_run(run_id)
        return run if run.state in FINAL_STATES else None

    return wait_for(ended, timeout=90, interval=0.2, what=f"run {run_id} to end")


def containers_created(client: docker.DockerClient, run_id: str, since: float) -> list[dict[str, Any]]:
    """The daemon's ``create`` events of containers of ``run_id`` since ``since``: removed ones count too."""
    events = client.events(
        since=f"{since - 1:.3f}",
        until=f"{time.time():.3f}",  # now: a create of these runs would have come before they failed
        decode=True,
        filters={"type": "container", "event": "create", "label": f"io.baton.flow-run-id={run_id}"},
    )
    return list(events)


def daemon_runs_privileged(client: docker.DockerClient, image: str) -> bool:
    """Whether this daemon can start a privileged container at all (not when it lacks capabilities itself)."""
    try:
        exit_code, _output = run_container(client, image, ["true"], privileged=True)
    except docker.errors.APIError as exc:
        if "unable to apply caps" in str(exc):
            return False
        raise
    return exit_code == 0


def test_a_privileged_or_root_bind_run_config_is_refused_before_any_container_is_created(
    admin: Client,
    docker_client: docker.DockerClient,
    start_agent: Callable[..., DockerAgent],
    probe_run: Callable[..., str],
) -> None:
    # Given an agent started without any --allow-... flag, and two runs asking for the host
    since = time.time()
    privileged = probe_run(PRIVILEGED, check="privileged")
    root_bind = probe_run(ROOT_BIND, check="host-root")
    start_agent()

    # When the agent claims them
    ended = {run_id: final(admin, run_id) for run_id in (privileged, root_bind)}

    # Then both fail, naming what was refused and the flag that allows it, and the daemon never made a container
    assert ended[privileged].state == "Failed"
    assert ended[privileged].state_message == PRIVILEGED_REFUSED
    assert ended[root_bind].state == "Failed"
    assert ended[root_bind].state_message == ROOT_BIND_REFUSED
    for run_id, run in ended.items():
        assert "Submitted" not in [state.name for state in run.states]
        assert containers_created(docker_client, run_id, since) == []


def test_allow_host_config_allows_privilege_and_nothing_else(
    admin: Client,
    docker_client: docker.DockerClient,
    baton_image: str,
    start_agent: Callable[..., DockerAgent],
    probe_run: Callable[..., str],
) -> None:
    # Given an agent that allows privileged containers and added capabilities, but no binds
    since = time.time()
    privileged = probe_run(PRIVILEGED, check="privileged")
    sys_admin = probe_run({"cap_add": ["SYS_ADMIN"]}, check="privileged")
    root_bind = probe_run(ROOT_BIND, check="host-root")
    start_agent(DockerPolicy(allow_host_config=["privileged", "cap_add"]))

    ran, added, refused = (final(admin, run_id) for run_id in (privileged, sys_admin, root_bind))

    # Then the privileged run reached the daemon as such, the one with SYS_ADMIN had it, the bind stays refused
    if daemon_runs_privileged(docker_client, baton_image):
        assert ran.state == "Success", ran.state_message
    else:  # a daemon that is itself in a container may lack a capability to hand out: it refuses to start it
        assert ran.state == "Failed"
        assert "but could not start it: " in (ran.state_message or "")
        assert "unable to apply caps" in (ran.state_message or "")
    assert containers_created(docker_client, privileged, since)
    assert added.state == "Success", added.state_message
    assert refused.state == "Failed"
    assert refused.state_message == ROOT_BIND_REFUSED


def test_allow_bind_root_lets_the_run_see_the_hosts_root_and_its_environment_is_only_the_run_env(
    admin: Client,
    start_agent: Callable[..., DockerAgent],
    probe_run: Callable[..., str],
    docker_client: docker.DockerClient,
    baton_image: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a file on the host, and a secret in the agent process's own environment
    host_file = tmp_path / "on-the-host.txt"
    host_file.write_text(secrets.token_hex(8))
    agent_secret = f"agent-process-secret-{secrets.token_hex(8)}"
    monkeypatch.setenv("BATON_SECURITY_TEST_AGENT_SECRET", agent_secret)
    monkeypatch.setenv("AGENT_PROCESS_SECRET", agent_secret)
    run_id = probe_run(ROOT_BIND, check="host-root", host_file=str(host_file), expected=host_file.read_text())

    # When an agent allowing binds under / runs it
    agent = start_agent(DockerPolicy(allow_bind=["/"]))
    run = final(admin, run_id)

    # Then the flow read the host's file through /host
    assert run.state == "Success", run.state_message
    # And its environment is the image's, Docker's and Baton's documented flow-run variables, nothing else
    env = json.loads((tmp_path / "out" / "env.json").read_text())
    image_env = {entry.split("=", 1)[0] for entry in docker_client.images.get(baton_image).attrs["Config"]["Env"]}
    assert set(env) - image_env - {"HOSTNAME", "HOME", "PYTHONUNBUFFERED"} == RESERVED_NAMES
    assert agent_secret not in json.dumps(env)
    key = agent.settings.api.key
    assert key is not None and key.get_secret_value() not in json.dumps(env)
    assert env["BATON__API__KEY"].startswith("batr_")  # the run's token, not the agent's key

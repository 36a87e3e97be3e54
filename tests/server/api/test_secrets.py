"""Secrets in run-config env: masked for ``read`` keys, real for everyone who needs them, never in logs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.routing import APIRoute
from pydantic import TypeAdapter

from baton.schemas.core import Role, RunConfig
from baton.schemas.responses import FlowRead, FlowRunRead
from baton.server.access import allows
from baton.server.app import api_routes, declared_action
from baton.server.models.tenants import Principal
from baton.server.shaping import MASK, mask_run_config
from server.harness import TenantContext
from support import HELLO_SOURCE, clean_env, wait_for

if TYPE_CHECKING:
    from docker_support import DockerCleanup

SECRET = "hunter2-do-not-leak-8c1f"
ENV = {"DB_PASSWORD": SECRET, "REGION": "eu-west-1"}
MASKED_ENV = {"DB_PASSWORD": MASK, "REGION": MASK}

# Proves the value reached the flow-run process without ever printing it.
SECRET_FLOW_SOURCE = """
import hashlib
import os
from baton import flow

@flow
def secretive() -> None:
    print("password digest", hashlib.sha256(os.environ["DB_PASSWORD"].encode()).hexdigest())
"""
DIGEST = hashlib.sha256(SECRET.encode()).hexdigest()


def register_secret_flow(tenant: TenantContext, source: str = SECRET_FLOW_SOURCE) -> FlowRead:
    payload = {
        "name": "secretive",
        "entrypoint": "secretive",
        "source": source,
        "source_filename": "/flows/secretive.py",
        "labels": [],
        "parameters_schema": {"type": "object", "properties": {}},
        "tasks": [],
        "run_config": {"type": "local", "env": ENV},
    }
    return tenant.admin.register_flow(payload)


@pytest.fixture
def secret_flow(tenant: TenantContext) -> FlowRead:
    return register_secret_flow(tenant)


@pytest.fixture
def secret_run(tenant: TenantContext, secret_flow: FlowRead) -> FlowRunRead:
    return tenant.client(tenant.key("user")).create_flow_run(flow_name=secret_flow.name)


def read_routes(flow: FlowRead, run: FlowRunRead) -> list[str]:
    return [
        f"/api/flows/{flow.id}",
        f"/api/flows/{flow.id}?include_source=true",
        "/api/flows",
        "/api/flows?all_versions=true",
        f"/api/flows?name={flow.name}",
        f"/api/flow_runs/{run.id}",
        "/api/flow_runs",
        f"/api/flow_runs?flow_name={flow.name}",
    ]


def run_configs(body: Any) -> list[dict[str, Any]]:
    """Every ``run_config`` in an answer (one object, a list, or a run with its flow)."""
    items = body if isinstance(body, list) else [body]
    configs = []
    for item in items:
        parts = [item] if "run_config" in item else [item["flow_run"], item["flow"]]  # .../with_flow
        configs += [part["run_config"] for part in parts]
    return configs


def test_read_keys_see_which_variables_are_set_but_not_their_values(
    tenant: TenantContext, secret_flow: FlowRead, secret_run: FlowRunRead
) -> None:
    http = tenant.raw(tenant.key("read"))

    for route in read_routes(secret_flow, secret_run):
        response = http.get(route)
        assert response.status_code == 200, (route, response.text)
        assert SECRET not in response.text, route
        assert "eu-west-1" not in response.text, route
        configs = run_configs(response.json())
        assert configs, route
        assert all(config["env"] == MASKED_ENV for config in configs), route


@pytest.mark.parametrize("role", ["admin", "user", "runner"])
def test_keys_that_need_the_values_get_them(
    tenant: TenantContext, secret_flow: FlowRead, secret_run: FlowRunRead, role: str
) -> None:
    http = tenant.raw(tenant.key(role))

    for route in read_routes(secret_flow, secret_run):
        configs = run_configs(http.get(route).json())
        assert [config["env"] for config in configs] == [ENV] * len(configs), route


def test_runner_claim_and_run_token_get_the_real_values(tenant: TenantContext, secret_run: FlowRunRead) -> None:
    runner = tenant.client(tenant.key("runner"))
    agent = runner.register_agent("secret-agent", "local", [])

    claimed = TenantContext.claim_one(runner, agent.id, secret_run.id)

    assert claimed.flow_run.run_config.env == ENV
    assert claimed.flow.run_config.env == ENV
    token = tenant.client(claimed.run_token)
    assert token.get_flow_run(secret_run.id).run_config.env == ENV
    assert token.get_flow(claimed.flow.id, include_source=True).run_config.env == ENV


def test_answers_to_writes_keep_the_values_for_their_writers(tenant: TenantContext, secret_flow: FlowRead) -> None:
    user = tenant.client(tenant.key("user"))
    run = user.create_flow_run(flow_name=secret_flow.name)
    assert run.run_config.env == ENV
    assert user.cancel_flow_run(run.id).run_config.env == ENV
    assert register_secret_flow(tenant).run_config.env == ENV  # the same version again


def _answers_run_configs(route: APIRoute) -> bool:
    """Whether ``route``'s response model holds a run config anywhere (FlowRead, FlowRunRead, ClaimResponse...)."""
    model = route.response_model
    if model is None:
        return False
    schema = TypeAdapter(model).json_schema()
    return "RunConfig" in json.dumps(schema)


def test_every_route_answering_run_configs_masks_them_for_read_keys(
    tenant: TenantContext, secret_flow: FlowRead, secret_run: FlowRunRead
) -> None:
    """The answers are shaped in one place (``server.shaping``): walk every route whose answer holds a run config.

    A read key may call each such route the policy lets it call, and sees masked values there; the routes it may not
    call are refused. A new route that answers run configs is swept here without being listed.
    """
    http = tenant.raw(tenant.key("read"))
    ids = {"flow_id": secret_flow.id, "flow_run_id": secret_run.id, "agent_id": "", "task_run_id": ""}
    swept = []
    for path, route in api_routes():
        if not _answers_run_configs(route):
            continue
        action = declared_action(route)
        assert action is not None, path
        for method in route.methods:
            if not allows(Principal(tenant.id, tenant.name, Role.READ), action):
                continue
            assert method == "GET", f"a read key may {method} {path}: the policy lets it write"
            response = http.get(path.format(**ids), params={"include": "parameters,states"} if "{" not in path else {})
            assert response.status_code == 200, (path, response.text)
            assert SECRET not in response.text and "eu-west-1" not in response.text, path
            configs = run_configs(response.json())
            assert configs and all(config["env"] == MASKED_ENV for config in configs), path
            swept.append(path)

    assert sorted(swept) == [
        "/api/flow_runs",
        "/api/flow_runs/{flow_run_id}",
        "/api/flow_runs/{flow_run_id}/with_flow",
        "/api/flows",
        "/api/flows/{flow_id}",
    ]


def test_masking_keeps_everything_but_env_values() -> None:
    template = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "flow",
                            "env": [
                                {"name": "TOKEN", "value": SECRET},
                                {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                            ],
                        }
                    ]
                }
            }
        }
    }
    config = RunConfig(type="kubernetes", env=ENV, labels=["a"], image="img", job_template=template)

    masked = mask_run_config(config)

    assert SECRET not in json.dumps(masked.model_dump(mode="json"))
    assert masked.env == MASKED_ENV
    container = masked.job_template["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["env"] == [
        {"name": "TOKEN", "value": MASK},
        {"name": "FROM_SECRET", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
    ]
    assert masked.model_copy(update={"env": ENV, "job_template": template}) == config
    assert config.env == ENV  # the original is untouched


# --- logs ------------------------------------------------------------------------------------------------


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def start_agent(tenant: TenantContext, tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    """``baton agent <kind> start --log-level DEBUG -f ...`` with the tenant's runner key; the engine logs at DEBUG
    too. Unlabelled: it takes the tenant's unlabelled runs."""
    started: list[AgentProcess] = []

    def start(kind: str, *args: str) -> AgentProcess:
        log = tmp_path / f"agent-{len(started)}.log"
        env = clean_env(
            tmp_path / "agent-home",
            BATON__API__URL=tenant.server.url,
            BATON__API__KEY=tenant.key("runner"),
            BATON__LOGGING__LEVEL="DEBUG",  # inherited by the flow-run process
            BATON__LOGGING__BATCH_INTERVAL_SECONDS="0.1",
        )
        command = [sys.executable, "-m", "baton.cli", "agent", kind, "start", "--name", f"secret-{kind}-agent"]
        command += ["--log-level", "DEBUG", "--show-flow-logs", *args]
        with log.open("wb") as output:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
        started.append(AgentProcess(process, log))
        return started[-1]

    yield start
    for agent in started:
        if agent.process.poll() is None:
            agent.process.terminate()
            try:
                agent.process.wait(20)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait()


def wait_until_final(tenant: TenantContext, run_id: str, agent: AgentProcess) -> FlowRunRead:
    def final() -> FlowRunRead | None:
        assert agent.process.poll() is None, agent.output()
        run = tenant.run(run_id)
        return run if run.state in ("Success", "Failed", "Cancelled") else None

    return wait_for(final, timeout=60, interval=0.2, what=f"run {run_id} to end")


def test_secret_values_are_in_neither_agent_output_nor_run_logs(
    tenant: TenantContext, secret_run: FlowRunRead, start_agent: Callable[..., AgentProcess]
) -> None:
    agent = start_agent("local", "--no-hostname-label")

    run = wait_until_final(tenant, secret_run.id, agent)
    agent.process.terminate()
    agent.process.wait(20)

    # The value reached the flow (its digest is in the logs), and the run ended well...
    messages = [line.message for line in tenant.admin.get_logs(run.id).logs]
    assert run.state == "Success", (run.states, messages, agent.output())
    assert any(DIGEST in message for message in messages), messages
    # ...yet it is nowhere in the agent's output (its DEBUG lines and the flow's), the stored logs or the states.
    agent_output = agent.output()
    assert DIGEST in agent_output and "DEBUG baton.client | POST /api/agents/" in agent_output
    assert SECRET not in agent_output
    assert not [message for message in messages if SECRET in message]
    assert SECRET not in json.dumps([state.model_dump(mode="json") for state in run.states])


def test_a_docker_daemon_refusing_the_env_does_not_echo_its_values(
    tenant: TenantContext,
    start_agent: Callable[..., AgentProcess],
    docker_client: object,
    docker_base_image: str,
    docker_cleanup: DockerCleanup,
) -> None:
    # Given a run config with a variable the daemon refuses: it quotes the refused entry whole ("=value")
    payload = {
        "name": "refused-env",
        "entrypoint": "hello",
        "source": HELLO_SOURCE,
        "labels": [],
        "parameters_schema": {"type": "object", "properties": {}},
        "tasks": [],
        "run_config": {"type": "docker", "image": docker_base_image, "env": {"": SECRET, "DB_PASSWORD": SECRET}},
    }
    flow = tenant.admin.register_flow(payload)
    run = tenant.client(tenant.key("user")).create_flow_run(flow_name=flow.name)
    docker_cleanup.containers_labelled(f"io.baton.flow-run-id={run.id}")

    # When the Docker agent tries to deploy it
    agent = start_agent("docker", "--no-pull", "--network", "host")
    ended = wait_until_final(tenant, run.id, agent)
    agent.process.terminate()
    agent.process.wait(20)

    # Then the run fails with the daemon's reason, the value masked, in the state and in the agent's output
    assert ended.state == "Failed", (ended.states, agent.output())
    assert "invalid environment variable: =********" in (ended.state_message or ""), ended.state_message
    assert SECRET not in json.dumps([state.model_dump(mode="json") for state in ended.states])
    assert "invalid environment variable" in agent.output()
    assert SECRET not in agent.output()

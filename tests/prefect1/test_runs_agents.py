"""Prefect 1's local agent against a Baton server: its options that talk to the API, --no-cloud-logs, a runner key's
agent, and a run started with Baton's CLI."""

from __future__ import annotations

import json

import httpx

from cli_runner import run_cli
from prefect1.conftest import Prefect1, log_lines
from prefect1.runs_support import local_agent, registered, wait_final
from support import ServerProcess, free_port


def test_an_agent_with_a_runner_key_runs_flows_and_a_read_key_cannot_start_one(
    prefect1: Prefect1, server: ServerProcess
) -> None:
    registered(prefect1)
    runner = server.client().create_api_key("runner", "p1-agent").key
    reader = server.client().create_api_key("read", "p1-reader").key
    marker = prefect1.home / "flaky-ran"
    created = prefect1.cli("run", "--name", "pipeline", "--project", "p", "--param", f"marker={marker}", "--quiet")
    run_id = created.stdout.strip().splitlines()[-1]
    prefect1.env_extra["PREFECT__CLOUD__API_KEY"] = reader
    refused = prefect1.cli("run", "--name", "pipeline", "--project", "p", "--param", "marker=x", "--quiet")
    del prefect1.env_extra["PREFECT__CLOUD__API_KEY"]

    with local_agent(prefect1, "--key", runner):
        final = wait_final(server, run_id, prefect1)

    assert final == "Success"
    agent = next(agent for agent in server.client().list_agents() if agent.type == "prefect1-localagent")
    assert server.client().get_flow_run(run_id).agent_id == agent.id
    assert refused.returncode != 0 and "flow_run.create" in refused.stdout + refused.stderr


def test_a_run_started_with_baton_s_cli_runs_on_prefect_1_s_agent_and_baton_shows_it(
    prefect1: Prefect1, server: ServerProcess
) -> None:
    registered(prefect1)
    marker = prefect1.home / "flaky-ran"
    env = server.env()
    listed = run_cli(["flows", "list"], env=env)
    started = run_cli(["run", "pipeline", "--param", f"marker={marker}", "--json"], env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    run_id = json.loads(started.stdout)["id"]

    with local_agent(prefect1):
        final = wait_final(server, run_id, prefect1)

    shown = run_cli(["runs", "get", run_id], env=env)
    assert "pipeline (Prefect 1)" in listed.stdout
    assert final == "Success"
    assert "flaky-1" in shown.stdout and "scale-1[2]" in shown.stdout, shown.stdout


def test_the_agent_s_options_that_talk_to_the_api(prefect1: Prefect1, server: ServerProcess) -> None:
    registered(prefect1)
    script = prefect1.home / "flows" / "env.py"
    script.write_text(ENV_FLOW.replace("SCRIPT", repr(str(script))))
    assert prefect1.cli("register", "--project", "p", "--path", str(script)).returncode == 0
    created = prefect1.cli("run", "--name", "env-echo", "--project", "p", "--quiet")
    run_id = created.stdout.strip().splitlines()[-1]
    port = free_port()
    make_config = (
        "from prefect import Client\n"
        "print(Client().graphql('mutation { create_agent_config(input: {name: \"c\", settings: {a: 1}}) { id } }')"
        ".data.create_agent_config.id)"
    )
    config = prefect1.python(make_config)
    assert config.returncode == 0, config.stdout + config.stderr
    config_id = config.stdout.strip().splitlines()[-1]
    options = ["--api", f"{server.url}/graphql", "--key", server.admin_key, "--env", "GREETING=from-the-agent"]
    options += ["--max-polls", "100", "--agent-address", f"http://127.0.0.1:{port}", "--name", "opts"]
    options += ["--agent-config-id", config_id]

    with local_agent(prefect1, *options):
        final = wait_final(server, run_id, prefect1)
        health = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5)

    assert final == "Success"
    assert server.client().get_flow_run(run_id).state_message == "All reference tasks succeeded."
    lines = log_lines(server, run_id, "GREETING=from-the-agent")
    assert any("GREETING=from-the-agent" in line for line in lines), lines
    assert health.status_code == 200
    agent = next(agent for agent in server.client().list_agents() if agent.name == "opts")
    assert agent.agent_config_id == config_id


def test_no_cloud_logs_keeps_the_flow_s_lines_out_of_baton(prefect1: Prefect1, server: ServerProcess) -> None:
    registered(prefect1)
    script = prefect1.home / "flows" / "env.py"
    script.write_text(ENV_FLOW.replace("SCRIPT", repr(str(script))))
    assert prefect1.cli("register", "--project", "p", "--path", str(script)).returncode == 0
    created = prefect1.cli("run", "--name", "env-echo", "--project", "p", "--quiet")
    run_id = created.stdout.strip().splitlines()[-1]

    with local_agent(prefect1, "--no-cloud-logs"):
        final = wait_final(server, run_id, prefect1)

    assert final == "Success"
    lines = log_lines(server, run_id, "GREETING", timeout=3)  # any would have come by the process's exit
    assert not any("GREETING" in line for line in lines), lines


ENV_FLOW = """
import os

import prefect
from prefect import Flow, task
from prefect.run_configs import LocalRun
from prefect.storage import Local


@task
def echo():
    prefect.context.get("logger").info("GREETING=%s", os.environ.get("GREETING"))


with Flow("env-echo", run_config=LocalRun(labels=["p1"]), storage=Local(path=SCRIPT, stored_as_script=True)) as flow:
    echo()
"""

"""The whole hybrid loop: CLI -> server -> local agent -> flow-run process -> states, task runs and logs."""

from __future__ import annotations

import json
from pathlib import Path

from baton.schemas.states import FINAL_STATES
from integration.conftest import Cli, wait_for_state

REPO_ROOT = Path(__file__).resolve().parents[2]

ENV_FLOW = """
import os
from baton import flow, LocalRun

NAMES = ["FROM_AGENT", "FROM_RUN_CONFIG", "SHARED", "BATON_FLOW_RUN_ID", "BATON__API__KEY",
         "BATON__AGENT__LABELS", "BATON__LOGGING__SEND_TO_API"]

@flow(run_config=LocalRun(env={"FROM_RUN_CONFIG": "run-config", "SHARED": "run-config",
                               "BATON_FLOW_RUN_ID": "hijacked"}))
def envcheck():
    for name in NAMES:
        print(f"{name}={os.environ.get(name)}")
"""

FAILING_FLOW = """
from baton import flow, task

@task
def explode():
    raise ValueError("the answer is not 42")

@flow
def failing():
    explode()
"""

MISSING_DIR_FLOW = """
from baton import flow, LocalRun

@flow(run_config=LocalRun(working_dir="/nonexistent/baton-workdir"))
def nowhere():
    print("never printed")
"""


def _log_messages(cli: Cli, run_id: str) -> list[str]:
    return [line.message for line in cli.server.client().get_logs(run_id).logs]


def test_hello_flow_runs_to_success_with_states_task_runs_and_logs(cli: Cli, start_agent) -> None:
    # Given a registered example flow and one local agent
    registered = cli("register", str(REPO_ROOT / "examples" / "hello.py"))
    assert "hello" in registered.stdout
    agent = start_agent()

    # When a run is started with --watch
    watched = cli("run", "hello", "--param", "name=integration", "--watch", timeout=90)

    # Then the command exits 0, and the run went through every state with the deployment identified
    run_id = watched.stdout.split()[0]
    run = cli.json("runs", "get", run_id)
    assert run["state"] == "Success", agent.log()
    names = [state["name"] for state in run["states"]]
    assert names == ["Scheduled", "Pending", "Submitted", "Running", "Success"]
    submitted = run["states"][2]
    assert submitted["message"].startswith("PID: ")
    assert isinstance(submitted["data"]["pid"], int)
    assert run["parameters"] == {"name": "integration"}
    assert run["flow_name"] == "hello" and run["flow_version"] == 1
    # and its task runs and logs reached the API
    task_runs = cli.server.client().list_task_runs(run_id)
    assert task_runs and all(t.state == "Success" for t in task_runs)
    assert any("integration" in message for message in _log_messages(cli, run_id))


def test_flow_exception_marks_run_failed_with_the_error(cli: Cli, start_agent, flow_file) -> None:
    cli("register", str(flow_file("failing", FAILING_FLOW)))
    start_agent()
    run = cli.json("run", "failing")
    final = wait_for_state(cli, run["id"], set(FINAL_STATES))
    assert final["state"] == "Failed"
    assert "ValueError" in final["state_message"] and "the answer is not 42" in final["state_message"]
    task_runs = cli.server.client().list_task_runs(run["id"])
    assert [t.state for t in task_runs] == ["Failed"]
    assert any("the answer is not 42" in message for message in _log_messages(cli, run["id"]))


def test_watch_exits_1_when_the_run_fails(cli: Cli, start_agent, flow_file) -> None:
    cli("register", str(flow_file("failing", FAILING_FLOW)))
    start_agent()
    watched = cli("run", "failing", "--watch", check=False, timeout=90)
    assert watched.returncode == 1, watched.stdout + watched.stderr


def test_missing_working_dir_fails_the_deployment_with_a_message_naming_it(cli: Cli, start_agent, flow_file) -> None:
    cli("register", str(flow_file("nowhere", MISSING_DIR_FLOW)))
    start_agent()
    run = cli.json("run", "nowhere")
    final = wait_for_state(cli, run["id"], set(FINAL_STATES))
    assert final["state"] == "Failed"
    assert "/nonexistent/baton-workdir" in final["state_message"]
    assert "Submitted" not in [s["name"] for s in final["states"]]


def test_run_environment_precedence_agent_env_then_run_config_then_baton_vars(cli: Cli, start_agent, flow_file) -> None:
    cli("register", str(flow_file("envcheck", ENV_FLOW)))
    start_agent("--env", "FROM_AGENT=agent", "--env", "SHARED=agent", "--no-hostname-label")
    run = cli.json("run", "envcheck")
    final = wait_for_state(cli, run["id"], set(FINAL_STATES))
    assert final["state"] == "Success"
    seen = dict(line.split("=", 1) for line in _log_messages(cli, run["id"]) if "=" in line)
    assert seen["FROM_AGENT"] == "agent"
    assert seen["FROM_RUN_CONFIG"] == "run-config"
    assert seen["SHARED"] == "run-config"  # run config env beats agent --env
    assert seen["BATON_FLOW_RUN_ID"] == run["id"]  # the BATON_ ones win over both
    assert seen["BATON__API__KEY"].startswith("batr_")  # a run token, never the agent's key
    assert seen["BATON__API__KEY"] != cli.server.admin_key
    assert json.loads(seen["BATON__AGENT__LABELS"]) == []
    assert seen["BATON__LOGGING__SEND_TO_API"].lower() == "true"


def test_no_cloud_logs_keeps_logs_out_of_the_api(cli: Cli, start_agent) -> None:
    cli("register", str(REPO_ROOT / "examples" / "hello.py"))
    start_agent("--no-cloud-logs")
    run = cli.json("run", "hello")
    final = wait_for_state(cli, run["id"], set(FINAL_STATES))
    assert final["state"] == "Success"
    assert _log_messages(cli, run["id"]) == []

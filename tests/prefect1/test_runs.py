"""Prefect 1.4.1's local agent and flow runner run Prefect 1 flows from a Baton server: a run created with
``prefect run`` (or the client, or a plain mutation) is found by ``prefect agent local start``, deployed as a
process, and its CloudFlowRunner reports flow and task states, mapped children, retries and logs, which Baton keeps
as its own (``baton runs get`` / REST)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from cli_runner import run_cli
from prefect1.conftest import VENV, Prefect1, log_lines
from support import ServerProcess, free_port

FLOW = """
import os
from datetime import timedelta

import prefect
from prefect import Flow, Parameter, case, task, unmapped
from prefect.executors import EXECUTOR
from prefect.run_configs import LocalRun
from prefect.storage import Local
from prefect.tasks.control_flow import merge


@task
def numbers(n):
    return list(range(n))


@task
def scale(x, factor):
    return x * factor


@task(max_retries=2, retry_delay=timedelta(seconds=1))
def flaky(values, marker):
    # Fails on its first attempt: the marker file says whether it ran before.
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    prefect.context.get("logger").info("flaky saw %s", values)
    return sum(values)


@task
def is_big(total):
    return total > 10


@task(trigger=prefect.triggers.all_finished)
def cleanup(total):
    prefect.context.get("logger").info("cleanup after %s", total)


@task
def big():
    return "big"


@task
def small():
    return "small"


with Flow(
    "pipeline",
    run_config=LocalRun(labels=["p1"]),
    storage=Local(path=SCRIPT, stored_as_script=True),
    executor=EXECUTOR(**EXECUTOR_KWARGS),
) as flow:
    n = Parameter("n", default=3)
    marker = Parameter("marker", required=True)
    scaled = scale.map(numbers(n), factor=unmapped(2))
    total = flaky(scaled, marker)
    cleanup(total)
    with case(is_big(total), True):
        yes = big()
    with case(is_big(total), False):
        no = small()
    merge(yes, no)
"""


def registered(prefect1: Prefect1, executor: str = "LocalExecutor") -> Path:
    """The flow above registered in project "p" by ``prefect register`` (stored as a script)."""
    assert prefect1.cli("auth", "login", "--key", prefect1.server.admin_key).returncode == 0
    assert prefect1.cli("create", "project", "p").returncode == 0
    flows = prefect1.home / "flows"
    flows.mkdir()
    script = flows / "pipeline.py"
    kwargs = {"cluster_kwargs": {"n_workers": 2, "threads_per_worker": 1}} if executor == "DaskExecutor" else {}
    script.write_text(
        FLOW.replace("SCRIPT", repr(str(script))).replace("EXECUTOR_KWARGS", repr(kwargs)).replace("EXECUTOR", executor)
    )
    done = prefect1.cli("register", "--project", "p", "--path", str(flows))
    assert done.returncode == 0, done.stdout + done.stderr
    return script


@contextmanager
def local_agent(prefect1: Prefect1, *options: str) -> Iterator[subprocess.Popen[str]]:
    log = (prefect1.home / "agent.log").open("w")
    agent = subprocess.Popen(
        [str(VENV / "bin" / "prefect"), "agent", "local", "start", "--label", "p1", *options],
        env=prefect1.env,
        cwd=prefect1.home,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield agent
    finally:
        agent.terminate()
        try:
            agent.wait(10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        log.close()


def wait_final(server: ServerProcess, run_id: str, prefect1: Prefect1, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = server.client().get_flow_run(run_id).state
        if state in ("Success", "Failed", "Cancelled"):
            return str(state)
        time.sleep(0.3)
    agent_log = (prefect1.home / "agent.log").read_text()
    raise AssertionError(f"run {run_id} still {state} after {timeout}s; agent:\n{agent_log}")


def test_local_agent_runs_a_flow_with_parameters_mapping_retries_and_case(
    prefect1: Prefect1, server: ServerProcess
) -> None:
    registered(prefect1)
    marker = prefect1.home / "flaky-ran"
    created = prefect1.cli(
        "run", "--name", "pipeline", "--project", "p", "--param", f"marker={marker}", "--param", "n=4"
    )
    assert created.returncode == 0, created.stdout + created.stderr
    run_id = next(line.split()[-1] for line in created.stdout.splitlines() if "UUID:" in line)

    with local_agent(prefect1):
        final = wait_final(server, run_id, prefect1)

    run = server.client().get_flow_run(run_id)
    assert final == "Success", run.state_message
    assert [state.name for state in run.states][:4] == ["Scheduled", "Pending", "Submitted", "Running"]
    assert run.deployment is not None and run.deployment["prefect1"].startswith("PID: ")
    assert run.parameters["n"] == 4
    tasks = {task.task_name: task for task in server.client().list_task_runs(run_id)}
    mapped = sorted(name for name in tasks if name.startswith("scale-1["))
    assert mapped == [f"scale-1[{i}]" for i in range(4)]
    assert tasks["flaky-1"].state == "Success" and tasks["flaky-1"].attempt == 2
    assert tasks["big-1"].state == "Success" and tasks["small-1"].state == "Success"  # Skipped counts as done
    assert tasks["cleanup-1"].state == "Success"  # its trigger: all upstream finished
    lines = log_lines(server, run_id, "Flow run SUCCESS")
    assert any("flaky saw [0, 2, 4, 6]" in line for line in lines), lines
    assert any("first attempt fails" in line for line in lines), lines


def test_prefect_run_watch_follows_the_run_and_its_logs_to_the_end(prefect1: Prefect1, server: ServerProcess) -> None:
    registered(prefect1)
    marker = prefect1.home / "flaky-ran"

    with local_agent(prefect1):
        watched = prefect1.cli(
            "run", "--name", "pipeline", "--project", "p", "--param", f"marker={marker}", "--watch", timeout=100
        )

    print(watched.stdout[-4000:], watched.stderr[-3000:])
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert "Entered state <Success>" in watched.stdout


def test_a_flow_on_local_dask_executor_runs_its_mapped_children_side_by_side(
    prefect1: Prefect1, server: ServerProcess
) -> None:
    registered(prefect1, executor="LocalDaskExecutor")
    marker = prefect1.home / "flaky-ran"
    created = prefect1.cli("run", "--name", "pipeline", "--project", "p", "--param", f"marker={marker}", "--quiet")
    run_id = created.stdout.strip().splitlines()[-1]

    with local_agent(prefect1):
        final = wait_final(server, run_id, prefect1)

    assert final == "Success", server.client().get_flow_run(run_id).state_message
    tasks = {task.task_name: task.state for task in server.client().list_task_runs(run_id)}
    assert [tasks[f"scale-1[{i}]"] for i in range(3)] == ["Success"] * 3
    assert tasks["flaky-1"] == "Success"


SLEEPER = """
import time

import prefect
from prefect import Flow, task
from prefect.run_configs import LocalRun
from prefect.storage import Local


@task
def nap():
    prefect.context.get("logger").info("napping")
    time.sleep(120)


@task
def after(_):
    return "never"


with Flow("sleeper", run_config=LocalRun(labels=["p1"]), storage=Local(path=SCRIPT, stored_as_script=True)) as flow:
    after(nap())
"""


def test_a_cancelled_run_stops_its_running_task_and_skips_the_rest(prefect1: Prefect1, server: ServerProcess) -> None:
    registered(prefect1)
    script = prefect1.home / "flows" / "sleeper.py"
    script.write_text(SLEEPER.replace("SCRIPT", repr(str(script))))
    assert prefect1.cli("register", "--project", "p", "--path", str(script)).returncode == 0
    created = prefect1.cli("run", "--name", "sleeper", "--project", "p", "--quiet")
    run_id = created.stdout.strip().splitlines()[-1]
    prefect1.env_extra["PREFECT__CLOUD__CHECK_CANCELLATION_INTERVAL"] = "1"

    with local_agent(prefect1):
        deadline = time.monotonic() + 60
        while not any("napping" in line.message for line in server.client().get_logs(run_id).logs):
            assert time.monotonic() < deadline, (prefect1.home / "agent.log").read_text()
            time.sleep(0.3)
        cancel = f"from prefect import Client; print(Client().cancel_flow_run({run_id!r}))"
        answer = prefect1.python(cancel)
        assert answer.returncode == 0 and answer.stdout.strip() == "Cancelling", answer.stdout + answer.stderr
        final = wait_final(server, run_id, prefect1, timeout=60)

    assert final == "Cancelled"
    tasks = {task.task_name: task.state for task in server.client().list_task_runs(run_id)}
    assert tasks == {"nap-1": "Cancelled", "after-1": "Cancelled"}
    assert [state.name for state in server.client().get_flow_run(run_id).states][-2:] == ["Cancelling", "Cancelled"]


def test_runs_created_by_the_client_and_a_plain_mutation_are_listed_by_prefect_get(
    prefect1: Prefect1, server: ServerProcess
) -> None:
    registered(prefect1)
    script = """
import json
from prefect import Client
client = Client()
group = client.graphql('{ flow(where: {name: {_eq: "pipeline"}}) { version_group_id } }').data.flow[0]
by_group = client.create_flow_run(version_group_id=group.version_group_id, parameters={"marker": "m"}, run_name="one")
again = client.create_flow_run(version_group_id=group.version_group_id, parameters={"marker": "m"}, run_name="one",
                               idempotency_key="k")
same = client.create_flow_run(version_group_id=group.version_group_id, parameters={"marker": "m"}, run_name="one",
                              idempotency_key="k")
flow_id = client.graphql('{ flow { id } }').data.flow[0].id
plain = client.graphql(
    'mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }',
    variables={"input": {"flow_id": flow_id, "parameters": {"marker": "m", "n": 1}, "flow_run_name": "plain"}},
).data.create_flow_run.id
print(json.dumps([by_group, again, same, plain]))
"""
    done = prefect1.python(script)
    assert done.returncode == 0, done.stdout + done.stderr
    by_group, again, same, plain = json.loads(done.stdout.strip().splitlines()[-1])
    assert again == same and len({by_group, again, plain}) == 3

    listed = prefect1.cli("get", "flow-runs", "--flow", "pipeline", "--project", "p")
    names = {row.split()[0] for row in listed.stdout.splitlines()[1:] if row.strip()}
    assert names == {"one", "plain"}, listed.stdout + listed.stderr
    assert server.client().get_flow_run(plain).parameters == {"n": 1, "marker": "m"}
    logs = prefect1.cli("get", "logs", "--id", plain)
    assert logs.returncode == 0, logs.stdout + logs.stderr


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


def test_a_flow_on_dask_executor_runs_on_a_temporary_dask_cluster(prefect1: Prefect1, server: ServerProcess) -> None:
    # A LocalCluster of two worker processes on 127.0.0.1, started by the flow run and closed with it
    registered(prefect1, executor="DaskExecutor")
    marker = prefect1.home / "flaky-ran"
    created = prefect1.cli("run", "--name", "pipeline", "--project", "p", "--param", f"marker={marker}", "--quiet")
    run_id = created.stdout.strip().splitlines()[-1]

    with local_agent(prefect1):
        final = wait_final(server, run_id, prefect1, timeout=120)

    assert final == "Success", server.client().get_flow_run(run_id).state_message
    lines = log_lines(server, run_id, "Flow run SUCCESS")
    assert any("dask" in line.lower() for line in lines), lines
    tasks = {task.task_name: task.state for task in server.client().list_task_runs(run_id)}
    assert [tasks[f"scale-1[{i}]"] for i in range(3)] == ["Success"] * 3


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

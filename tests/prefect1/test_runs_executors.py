"""Prefect 1 flows on Prefect 1's executors (LocalDaskExecutor, DaskExecutor on a temporary LocalCluster), and
cancellation of a running task, against a Baton server."""

from __future__ import annotations

import time

from prefect1.conftest import Prefect1, log_lines
from prefect1.runs_support import local_agent, registered, wait_final
from support import ServerProcess


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

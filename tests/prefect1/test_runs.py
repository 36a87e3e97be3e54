"""Prefect 1.4.1's local agent and flow runner run Prefect 1 flows from a Baton server: a run created with
``prefect run`` (or the client, or a plain mutation) is found by ``prefect agent local start``, deployed as a
process, and its CloudFlowRunner reports flow and task states, mapped children, retries and logs, which Baton keeps
as its own (``baton runs get`` / REST)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect1.conftest import VENV, Prefect1
from support import ServerProcess

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
    executor=EXECUTOR(),
) as flow:
    n = Parameter("n", default=3)
    marker = Parameter("marker", required=True)
    scaled = scale.map(numbers(n), factor=unmapped(2))
    total = flaky(scaled, marker)
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
    script.write_text(FLOW.replace("SCRIPT", repr(str(script))).replace("EXECUTOR", executor))
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
    lines = [line.message for line in server.client().get_logs(run_id).logs]
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

"""What the tests of Prefect 1 runs share (``test_runs*.py``): the pipeline flow, its registration, Prefect 1's
local agent, and waiting for a run's end. Split over several files so that ``--dist loadfile`` spreads them over the
test workers (each Prefect 1 run takes seconds)."""

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
    with prefect1_agent(prefect1, "local", "--label", "p1", *options) as agent:
        yield agent


@contextmanager
def prefect1_agent(prefect1: Prefect1, agent_type: str, *options: str) -> Iterator[subprocess.Popen[str]]:
    """``prefect agent AGENT_TYPE start OPTIONS`` from Prefect 1's venv, its output in ``agent.log``; stopped after."""
    log = (prefect1.home / "agent.log").open("w")
    agent = subprocess.Popen(
        [str(VENV / "bin" / "prefect"), "agent", agent_type, "start", *options],
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

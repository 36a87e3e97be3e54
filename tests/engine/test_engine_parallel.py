"""Submitted tasks in a real flow run (issue 14): on ``ThreadExecutor`` they run side by side, each mapped child a
task run of its own (``name[i]``) from Pending to Success, their log lines tagged with their task runs; an upstream
failure skips its dependants (Failed, naming it); a cancelled run stops the tasks not started."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from baton.exceptions import ClientError
from engine.conftest import Launcher
from support import wait_for

PARALLEL = """
import logging
import time

from baton import ThreadExecutor, flow, task, unmapped

log = logging.getLogger("parallel")


import threading

together = threading.Barrier(8)


@task
def nap(i, seconds):
    log.info("napping %s", i)
    together.wait(timeout=30)  # passes only when all eight run at once: parallelism shown without a clock
    time.sleep(seconds)
    return i


@task
def total(values):
    return sum(values)


@flow(executor=ThreadExecutor(8))
def {name}(seconds: float = 1.0) -> int:
    started = time.monotonic()
    naps = nap.map(list(range(8)), seconds=unmapped(seconds))
    result = total.submit(naps).result()
    log.info("took %.2f s", time.monotonic() - started)
    return result
"""

FAILING = """
from baton import ThreadExecutor, flow, task


@task
def boom():
    raise RuntimeError("boom")


@task
def after(value):
    return value


@task
def fine():
    return 1


@flow(executor=ThreadExecutor(4))
def {name}() -> None:
    failed = boom.submit()
    skipped = after.submit(failed)
    also = after.submit(skipped)
    fine.submit().result()
    assert failed.exception() is not None and also.exception() is not None  # both read: the flow fails on purpose
    raise RuntimeError("the flow saw boom fail")
"""

SLOW = """
import time

from baton import ThreadExecutor, flow, task


@task
def sleeper(i):
    time.sleep(60)


@flow(executor=ThreadExecutor(2))
def {name}() -> None:
    for future in sleeper.map(list(range(6))):
        future.result()
"""


def test_eight_mapped_tasks_of_one_second_run_side_by_side_on_threads(launcher: Launcher) -> None:
    launcher.register(launcher.write_flow("parallel", PARALLEL.format(name="parallel")))
    engine = launcher.start(launcher.claim("parallel"))

    assert engine.wait() == 0, engine.stderr

    assert engine.run().state == "Success"
    task_runs = engine.task_runs()
    assert sorted(t.task_name for t in task_runs) == [*(f"nap[{i}]" for i in range(8)), "total"]
    assert {(t.state, t.attempt) for t in task_runs} == {("Success", 1)}, [
        (t.task_name, t.state, t.message) for t in task_runs
    ]
    naps = [t for t in task_runs if t.task_name.startswith("nap[")]
    first_end = min(t.end_time for t in naps if t.end_time)
    assert all(t.start_time and t.start_time < first_end for t in naps)  # all had started before any ended
    by_id = {t.id: t.task_name for t in task_runs}
    tagged = {by_id[log.task_run_id] for log in engine.logs() if log.message.startswith("napping")}
    assert tagged == {f"nap[{i}]" for i in range(8)}


def test_an_upstream_failure_skips_its_dependants_naming_it(launcher: Launcher) -> None:
    launcher.register(launcher.write_flow("failing", FAILING.format(name="failing")))
    engine = launcher.start(launcher.claim("failing"))

    assert engine.wait() != 0

    task_runs = engine.task_runs()
    boom = next(t for t in task_runs if t.task_name == "boom")
    fine = next(t for t in task_runs if t.task_name == "fine")
    first, second = sorted((t for t in task_runs if t.task_name == "after"), key=lambda t: t.created)
    assert (boom.state, boom.message) == ("Failed", "RuntimeError: boom")
    assert fine.state == "Success"
    assert (first.state, first.message) == (
        "Failed",
        f"not run: upstream task 'boom' (task run {boom.id}) did not succeed",
    )
    assert (second.state, second.message) == (
        "Failed",
        f"not run: upstream task 'after' (task run {first.id}) did not succeed",
    )
    assert first.start_time is None and second.start_time is None
    assert engine.run().state == "Failed"


def test_cancelling_a_run_stops_the_tasks_not_started(launcher: Launcher) -> None:
    launcher.register(launcher.write_flow("slow", SLOW.format(name="slow")))
    engine = launcher.start(launcher.claim("slow"))
    wait_for(lambda: [t.state for t in engine.task_runs()].count("Running") == 2, what="two tasks running")

    started = time.monotonic()
    launcher.admin.cancel_flow_run(engine.run_id)
    engine.wait_for_state("Cancelled", timeout=30)

    assert time.monotonic() - started < 15
    states = sorted(t.state for t in engine.task_runs())
    assert states == ["Cancelled"] * 6
    assert sum(1 for t in engine.task_runs() if t.start_time is not None) == 2  # the other four never started


PROCESSES = """
import logging
import multiprocessing
import os
import time
from pathlib import Path

from baton import ProcessExecutor, flow, task

log = logging.getLogger("procs")
together = multiprocessing.get_context("fork").Barrier(4)  # shared by the forked processes


@task
def crunch(i):
    together.wait(timeout=30)  # passes only when four processes run at once
    log.info("crunching %s in %s", i, os.getpid())
    print(f"printed by {{i}}")
    return os.getpid()


@task(timeout_seconds=1)
def stuck():
    time.sleep(60)


@task
def sleeper(i, folder):
    Path(folder, str(os.getpid())).write_text("")
    time.sleep(60)


@flow(executor=ProcessExecutor(4))
def {name}(folder: str = "", cancel_me: bool = False) -> int:
    if cancel_me:
        for future in sleeper.map(list(range(4)), folder=folder):
            future.result()
    pids = {{future.result() for future in crunch.map(list(range(4)))}}
    assert os.getpid() not in pids
    try:
        stuck.submit().result()
    except TimeoutError:
        log.info("stuck was stopped")
    return len(pids)
"""


def test_process_executor_runs_attempts_in_processes_with_their_lines_and_timeouts(launcher: Launcher) -> None:
    launcher.register(launcher.write_flow("procs", PROCESSES.format(name="procs")))
    engine = launcher.start(launcher.claim("procs"))

    assert engine.wait() == 0, engine.stderr

    assert engine.run().state == "Success"
    task_runs = engine.task_runs()
    by_name = {t.task_name: t for t in task_runs}
    assert {by_name[f"crunch[{i}]"].state for i in range(4)} == {"Success"}
    assert (by_name["stuck"].state, by_name["stuck"].message) == (
        "Failed",
        "TimeoutError: task 'stuck' did not finish within 1s: its process was killed",
    )
    by_id = {t.id: t.task_name for t in task_runs}
    logs = engine.logs()
    crunching = {by_id[log.task_run_id] for log in logs if log.message.startswith("crunching")}
    printed = {(log.name, by_id[log.task_run_id]) for log in logs if log.message.startswith("printed by")}
    assert crunching == {f"crunch[{i}]" for i in range(4)}
    assert printed == {("stdout", f"crunch[{i}]") for i in range(4)}
    assert any(log.message == "stuck was stopped" for log in logs)


def test_cancelling_a_run_kills_the_processes_of_its_running_tasks(launcher: Launcher, tmp_path: Path) -> None:
    launcher.register(launcher.write_flow("procs_cancel", PROCESSES.format(name="procs_cancel")))
    folder = tmp_path / "pids"
    folder.mkdir()
    engine = launcher.start(launcher.claim("procs_cancel", {"folder": str(folder), "cancel_me": True}))
    wait_for(lambda: len(list(folder.iterdir())) == 4, what="four task processes")
    pids = [int(path.name) for path in folder.iterdir()]

    launcher.admin.cancel_flow_run(engine.run_id)
    engine.wait_for_state("Cancelled", timeout=30)

    assert {t.state for t in engine.task_runs()} == {"Cancelled"}
    wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=10, what="the task processes to be killed")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed child not yet reaped is a zombie: dead for this purpose.
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


UNCHOSEN = """
import threading

from baton import flow, task

together = threading.Barrier(4)


@task
def meet(i):
    together.wait(timeout=30)  # only if the run's executor runs all four at once
    return i


@flow
def {name}() -> int:
    return sum(future.result() for future in meet.map(list(range(4))))
"""


def test_a_run_chooses_its_executor_over_the_flows(launcher: Launcher) -> None:
    launcher.register(launcher.write_flow("unchosen", UNCHOSEN.format(name="unchosen")))
    for bad in ("threads", "thread:0", "dask:http://x", "process:99999", "thread:8\n"):
        with pytest.raises(ClientError) as refused:
            launcher.admin.create_flow_run(flow_name="unchosen", executor=bad)
        assert refused.value.status_code == 422 and "executor" in str(refused.value)

    engine = launcher.start(launcher.claim("unchosen", executor="thread:4"))

    assert engine.wait() == 0, engine.stderr
    run = engine.run()
    assert run.state == "Success" and run.run_config.executor == "thread:4"
    assert sorted(t.task_name for t in engine.task_runs()) == [f"meet[{i}]" for i in range(4)]

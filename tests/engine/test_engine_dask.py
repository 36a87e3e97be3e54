"""Submitted tasks on dask.distributed (issue 14): a temporary LocalCluster of worker processes for the run, and a
"remote" cluster (a scheduler and workers started as processes of their own on 127.0.0.1) the flow connects to by
address. Parallelism is shown without a clock: each task waits until all of them have started. A task past its
timeout on the cluster fails with the timeout's message and the flow goes on."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.conftest import Launcher
from support import free_port, wait_for

pytest.importorskip("distributed", reason="dask.distributed is not installed (pip install 'baton[dask]')")

TOGETHER = """
import logging
import os
import time
from pathlib import Path
from typing import Any

from baton import DaskExecutor, flow, task, unmapped

log = logging.getLogger("on-dask")


@task
def together(i, folder, count):
    Path(folder, str(i)).write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while len(list(Path(folder).iterdir())) < count:  # all started: they run side by side
        assert time.monotonic() < deadline, "not all tasks ran at once"
        time.sleep(0.05)
    log.info("task %s on worker process %s", i, os.getpid())
    return i


@task(retries=1)
def flaky(marker):
    if not Path(marker).exists():
        Path(marker).write_text("")
        raise RuntimeError("first attempt fails")
    return "second attempt"


@task
def boom():
    raise RuntimeError("boom")


@task
def after(value):
    return value


@task
def total(values):
    return sum(values)


@flow(executor=EXECUTOR)
def {name}(folder: str, count: int = 8) -> int:
    numbers = together.map(list(range(count)), folder=unmapped(folder), count=unmapped(count))
    summed = total.submit(numbers)  # the numbers stay on the workers on their way to total
    assert flaky.submit(folder + "-marker").result() == "second attempt"
    skipped = after.submit(boom.submit())
    assert skipped.exception() is not None
    return summed.result()
"""

SLEEPY = """
import time
from pathlib import Path
from typing import Any

from baton import DaskExecutor, flow, task


@task
def sleeper(i, folder):
    Path(folder, str(i)).write_text("")
    time.sleep(120)


@flow(executor=EXECUTOR)
def {name}(folder: str) -> None:
    for future in sleeper.map(list(range(2)), folder=folder):
        future.result()
"""


@pytest.fixture(scope="module")
def dask_cluster() -> Iterator[str]:
    """A scheduler and two single-threaded worker processes on 127.0.0.1, each a process of its own."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    scheduler = subprocess.Popen(
        [
            *(sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port)),
            *("--dashboard-address", ":0", "--no-show"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workers = subprocess.Popen(
        [
            *(sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "2", "--nthreads", "2"),
            *("--host", "127.0.0.1", "--dashboard-address", ":0", "--no-dashboard"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        from distributed import Client

        def ready() -> bool:
            try:
                with Client(address, timeout=2) as client:
                    return len(client.nthreads()) == 2
            except OSError:
                return False

        wait_for(ready, timeout=60, what="the dask scheduler and its two workers")
        yield address
    finally:
        for process in (workers, scheduler):
            process.terminate()
        for process in (workers, scheduler):
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _flow(launcher: Launcher, name: str, template: str, executor: str) -> None:
    source = template.replace("EXECUTOR", executor).replace("{name}", name)
    launcher.register(launcher.write_flow(name, source))


def _check_run(launcher: Launcher, name: str, folder: Path, count: int) -> None:
    engine = launcher.start(launcher.claim(name, {"folder": str(folder), "count": count}))
    assert engine.wait(timeout=120) == 0, engine.stderr
    assert engine.run().state == "Success"
    task_runs = engine.task_runs()
    by_name = {t.task_name: t for t in task_runs}
    assert {by_name[f"together[{i}]"].state for i in range(count)} == {"Success"}
    assert (by_name["flaky"].state, by_name["flaky"].attempt) == ("Success", 2)
    assert by_name["boom"].state == "Failed" and by_name["after"].state == "Failed"
    assert "upstream task 'boom'" in (by_name["after"].message or "")
    assert by_name["total"].state == "Success"
    by_id = {t.id: t.task_name for t in task_runs}
    lines = [log for log in engine.logs() if log.message.startswith("task ") and "worker process" in log.message]
    assert {by_id[log.task_run_id] for log in lines} == {f"together[{i}]" for i in range(count)}
    worker_pids = {int(log.message.rsplit(" ", 1)[1]) for log in lines}
    assert engine.process.pid not in worker_pids and len(worker_pids) >= 2


def test_a_temporary_local_cluster_runs_the_tasks_side_by_side_on_its_worker_processes(
    launcher: Launcher, tmp_path: Path
) -> None:
    executor = 'DaskExecutor(cluster_kwargs={"n_workers": 4, "threads_per_worker": 2})'
    _flow(launcher, "on_local_dask", TOGETHER, executor)
    folder = tmp_path / "started"
    folder.mkdir()

    _check_run(launcher, "on_local_dask", folder, 8)


def test_a_remote_cluster_runs_the_tasks_by_address_and_its_workers_logs_arrive(
    launcher: Launcher, tmp_path: Path, dask_cluster: str
) -> None:
    _flow(launcher, "on_remote_dask", TOGETHER, f"DaskExecutor({dask_cluster!r})")
    folder = tmp_path / "started"
    folder.mkdir()

    _check_run(launcher, "on_remote_dask", folder, 4)


OVERSLEPT = """
import time

from baton import DaskExecutor, flow, task


@task(timeout_seconds=1)
def overslept(seconds):
    time.sleep(seconds)  # a worker thread cannot be stopped: it sleeps on, its result dropped
    return "woke"


@task
def next_one(value):
    return value + 1


@flow(executor=EXECUTOR)
def {name}(seconds: float = 3.0) -> int:
    try:
        overslept.submit(seconds).result()
    except TimeoutError:
        pass  # read: the flow goes on without it
    return next_one.submit(41).result()
"""


def test_a_task_past_its_timeout_on_the_cluster_fails_and_the_flow_goes_on(
    launcher: Launcher, dask_cluster: str
) -> None:
    # Before the cancellation test, whose tasks keep two of the cluster's four threads busy: this one needs two.
    _flow(launcher, "overslept_dask", OVERSLEPT, f"DaskExecutor({dask_cluster!r})")
    engine = launcher.start(launcher.claim("overslept_dask"))

    assert engine.wait(timeout=120) == 0, engine.stderr

    assert engine.run().state == "Success"
    by_name = {t.task_name: t for t in engine.task_runs()}
    overslept = by_name["overslept"]
    assert (overslept.state, overslept.attempt, overslept.message) == (
        "Failed",
        1,
        "TimeoutError: task 'overslept' did not finish within 1s: its dask task was cancelled",
    )
    assert by_name["next_one"].state == "Success"


def test_cancelling_a_run_cancels_its_tasks_on_the_cluster(
    launcher: Launcher, tmp_path: Path, dask_cluster: str
) -> None:
    _flow(launcher, "sleepy_dask", SLEEPY, f"DaskExecutor({dask_cluster!r})")
    folder = tmp_path / "started"
    folder.mkdir()
    engine = launcher.start(launcher.claim("sleepy_dask", {"folder": str(folder)}))
    wait_for(lambda: len(list(folder.iterdir())) == 2, timeout=60, what="both tasks running on the cluster")

    started = time.monotonic()
    launcher.admin.cancel_flow_run(engine.run_id)
    engine.wait_for_state("Cancelled", timeout=60)

    assert time.monotonic() - started < 30
    assert {t.state for t in engine.task_runs()} == {"Cancelled"}
    assert engine.wait(timeout=60) == 0, engine.stderr


# --- the temporary cluster's safety, and arguments on dask (without a server) ------------------------------------

REFUSED = """
import sys
from distributed import Client
from distributed.security import Security

address = sys.argv[1]
for target, security in ((address.replace("tls://", "tcp://"), None), (address, Security.temporary())):
    try:
        Client(target, security=security, timeout=3).close()
    except Exception as exc:
        print("refused", type(exc).__name__)
    else:
        print("connected", target)
"""


def test_the_temporary_cluster_refuses_whoever_lacks_its_certificates_and_its_workers_never_see_the_run_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from baton import DaskExecutor, flow, task
    from baton.sdk.futures import current_submissions

    monkeypatch.setenv("BATON__API__KEY", "the-run-token")
    monkeypatch.setenv("BATON_OTHER", "also-baton")

    @task
    def environment() -> list[str]:
        return sorted(name for name in os.environ if name.startswith("BATON"))

    @flow(executor=DaskExecutor(cluster_kwargs={"n_workers": 1, "threads_per_worker": 1}))
    def probe() -> tuple[list[str], str]:
        seen = environment.submit().result(timeout=60)
        address = current_submissions().executor._cluster.scheduler_address
        other = subprocess.run([sys.executable, "-c", REFUSED, address], capture_output=True, text=True, timeout=60)
        return seen, address + "\n" + other.stdout

    seen, told = probe()

    assert seen == []
    address, *lines = told.splitlines()
    assert address.startswith("tls://127.0.0.1:")
    assert len(lines) == 2 and all(line.startswith("refused") for line in lines), told
    assert os.environ["BATON__API__KEY"] == "the-run-token"  # the flow's own environment is left alone


def test_futures_inside_a_named_tuple_and_a_set_reach_a_task_on_dask_as_their_results() -> None:
    from collections import namedtuple

    from baton import DaskExecutor, flow, task

    Pair = namedtuple("Pair", "left right")

    @task
    def number(value: int) -> int:
        return value

    @task
    def describe(pair: Any, values: set[int], frozen: frozenset[int]) -> tuple[str, int, int, int]:
        return type(pair).__name__, pair.left + pair.right, sum(values), sum(frozen)

    @flow(executor=DaskExecutor(cluster_kwargs={"n_workers": 1, "threads_per_worker": 2}))
    def combine() -> tuple[str, int, int, int]:
        one, two = number.submit(1), number.submit(2)
        return describe.submit(Pair(one, 10), {two, 20}, frozenset({one, 30})).result(timeout=60)

    assert combine() == ("Pair", 11, 22, 31)


def test_bytes_written_to_stdout_buffer_on_a_dask_worker_are_the_attempts_lines() -> None:
    from baton.sdk.dask_executor import _on_worker
    from sdk.test_sdk_executor_hostile import _writes_bytes

    kind, value, lines = _on_worker(_writes_bytes, (), {})

    assert (kind, value, lines["stdout"]) == ("ok", "wrote", "bytes é\né\n")

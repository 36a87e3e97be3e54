"""Submitted tasks without a server (issue 14): ``submit``, ``map``, ``unmapped``, futures as dependencies,
upstream failures, ``wait`` and ``as_completed``, on the sequential and thread executors. Parallelism is shown with
barriers (all N tasks must be running at once to pass), never with a clock."""

from __future__ import annotations

import threading

import pytest

from baton import SequentialExecutor, ThreadExecutor, UpstreamFailed, as_completed, flow, task, unmapped, wait
from baton.sdk.futures import TaskFailed


@task
def double(x: int) -> int:
    return 2 * x


@task
def add(x: int, y: int) -> int:
    return x + y


@task
def boom() -> int:
    raise RuntimeError("boom")


def test_submit_without_an_executor_runs_at_once_in_the_flow_thread() -> None:
    where: list[str] = []

    @task
    def here() -> str:
        where.append(threading.current_thread().name)
        return "done"

    @flow
    def sequential() -> str:
        future = here.submit()
        assert future.done()  # before anything waits for it
        return future.result()

    assert sequential() == "done"
    assert where == [threading.current_thread().name]
    assert here.submit().result() == "done"  # outside a flow too


def test_mapped_tasks_on_threads_run_side_by_side_with_unmapped_arguments() -> None:
    together = threading.Barrier(8)

    @task
    def meet(i: int, offset: int) -> int:
        together.wait(timeout=30)  # only if all eight run at once
        return i + offset

    @flow(executor=ThreadExecutor(8))
    def parallel() -> list[int]:
        return [future.result() for future in meet.map(list(range(8)), offset=unmapped(100))]

    assert parallel() == list(range(100, 108))


def test_futures_are_dependencies_and_map_takes_a_future_and_the_shortest_list() -> None:
    @flow(executor=ThreadExecutor(4))
    def chained() -> tuple[int, list[int], list[int]]:
        doubled = double.map([1, 2, 3])
        total = add.submit(doubled[0], doubled[2])  # waits for both, gets their results
        listed = add.map([1, 2, 3], [10, 20])  # two calls: the shorter list
        numbers = double.submit(5)

        @task
        def upto(n: int) -> list[int]:
            return list(range(n))

        over_future = double.map(upto.submit(numbers))  # mapped over the list a future holds
        return total.result(), [f.result() for f in listed], [f.result() for f in over_future]

    total, listed, over_future = chained()
    assert total == 2 + 6
    assert listed == [11, 22]
    assert over_future == [2 * i for i in range(10)]


def test_an_upstream_failure_skips_its_dependants_and_names_it() -> None:
    seen: dict[str, str] = {}

    @flow(executor=ThreadExecutor(2))
    def failing() -> None:
        failed = boom.submit()
        skipped = add.submit(failed, 1)
        further = double.submit(skipped)
        for name, future in (("skipped", skipped), ("further", further)):
            with pytest.raises(UpstreamFailed) as raised:
                future.result()
            seen[name] = str(raised.value)
        with pytest.raises(RuntimeError, match="boom"):
            failed.result()

    failing()
    assert seen == {
        "skipped": "not run: upstream task 'boom' did not succeed",
        "further": "not run: upstream task 'add' did not succeed",
    }


def test_a_failure_the_flow_never_read_fails_the_flow() -> None:
    @flow(executor=ThreadExecutor(2))
    def careless() -> str:
        boom.submit()
        add.submit(1, 2)
        return "returned"

    with pytest.raises(TaskFailed, match=r"1 submitted task\(s\) failed and the flow did not read them: 'boom'"):
        careless()


def test_wait_and_as_completed_give_futures_as_they_finish() -> None:
    release = threading.Event()

    @task
    def slow() -> str:
        release.wait(timeout=30)
        return "slow"

    @task
    def quick() -> str:
        return "quick"

    @flow(executor=ThreadExecutor(2))
    def racing() -> list[str]:
        slow_future, quick_future = slow.submit(), quick.submit()
        first = next(as_completed([slow_future, quick_future]))
        order = [first.result()]
        partial = wait([slow_future, quick_future], timeout=0.05)
        assert slow_future in partial.not_done and quick_future in partial.done
        release.set()
        order += [future.result() for future in as_completed([slow_future])]
        return order

    assert racing() == ["quick", "slow"]


def test_a_submitted_task_is_retried_like_a_called_one() -> None:
    attempts: list[int] = []

    @task(retries=2)
    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 2:
            raise RuntimeError("first attempt fails")
        return len(attempts)

    @flow(executor=ThreadExecutor(2))
    def retried() -> int:
        return flaky.submit().result()

    assert retried() == 2


def test_bad_executors_and_maps_are_refused() -> None:
    with pytest.raises(ValueError, match="max_workers must be 1 or more"):
        ThreadExecutor(0)

    def nothing() -> None:
        return None

    with pytest.raises(TypeError, match="executor must be"):
        flow(executor="threads")(nothing)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs at least one list"):
        double.map(3)
    assert repr(SequentialExecutor()) == "SequentialExecutor()"


def test_executor_specs_name_each_executor() -> None:
    from baton import DaskExecutor, ProcessExecutor
    from baton.sdk.executors import from_spec

    assert isinstance(from_spec("sequential"), SequentialExecutor)
    assert repr(from_spec("thread:8")) == "ThreadExecutor(max_workers=8)"
    assert repr(from_spec("process")) == "ProcessExecutor(max_workers=None)"
    assert isinstance(from_spec("dask"), DaskExecutor) and isinstance(from_spec("process:2"), ProcessExecutor)
    assert from_spec("dask:3").cluster_kwargs == {"n_workers": 3}  # type: ignore[attr-defined]
    assert from_spec("dask:tcp://127.0.0.1:8786").address == "tcp://127.0.0.1:8786"  # type: ignore[attr-defined]
    for bad in ("", "threads", "thread:0", "thread:-1", "dask:http://x", "process:1e3", "thread:8\n", "x" * 300):
        with pytest.raises(ValueError, match="is not sequential"):
            from_spec(bad)

"""Hostile starts and outcomes around dask and the executor spec, without a server (issue 14's review):
executors that cannot start, dask addresses that cannot work, prints of attempts sharing a dask worker, outcomes
that cannot leave their worker, and specs the API refuses."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import pytest

from baton import ThreadExecutor
from baton.exceptions import ExecutorError
from baton.sdk.futures import _submissions, current_submissions, submitting_to
from baton.sdk.processes import TaskTransferError
from sdk.conftest import fresh_needs_arg
from support import free_port


class _BrokenExecutor(ThreadExecutor):
    def __init__(self) -> None:
        super().__init__(1)
        self.shut_down: list[bool] = []

    def start(self) -> None:
        super().start()  # half-way: a pool is up when the rest fails
        raise ExecutorError("no scheduler")

    def shutdown(self, cancel: bool) -> None:
        self.shut_down.append(cancel)
        super().shutdown(cancel)


def test_an_executor_that_fails_to_start_is_shut_down_and_leaves_no_submissions_behind() -> None:
    executor = _BrokenExecutor()

    with pytest.raises(ExecutorError), submitting_to(executor):
        pass

    assert executor.shut_down == [True]
    assert _submissions.get() is None
    assert current_submissions().executor is not executor


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("tcp://127.0.0.1:{closed}", "cannot reach the dask scheduler at tcp://127.0.0.1:{closed}: Connection refused"),
        ("tcp://127.0.0.1:99999", "the dask scheduler address 'tcp://127.0.0.1:99999' needs a host and a port"),
        ("tcp://[", "the dask scheduler address 'tcp://[' is not HOST:PORT"),
        ("tcp://...:8786", "the dask scheduler address 'tcp://...:8786' has no valid host name"),
        (
            "tls://127.0.0.1:{closed}",
            "the dask scheduler tls://127.0.0.1:{closed} is tls:// but the flow-run process has no dask TLS settings",
        ),
    ],
    ids=["closed-port", "port-out-of-range", "bracket", "dots", "tls-unconfigured"],
)
def test_a_dask_address_that_cannot_work_fails_the_start_at_once_saying_why(address: str, message: str) -> None:
    pytest.importorskip("distributed")
    from baton import DaskExecutor

    closed = str(free_port())  # nothing listens there
    executor = DaskExecutor(address.format(closed=closed))

    with pytest.raises(ExecutorError, match="^" + _escaped(message.format(closed=closed))):
        executor.start()
    executor.shutdown(cancel=True)


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


def _raise(error: BaseException) -> None:
    raise error


def test_attempts_on_one_dask_worker_print_each_into_its_own_lines_and_the_workers_streams_come_back() -> None:
    pytest.importorskip("distributed")
    from baton.sdk.dask_executor import _on_worker

    streams = (sys.stdout, sys.stderr)
    first_started, second_done = threading.Event(), threading.Event()
    outcomes: dict[str, Any] = {}

    def first() -> str:
        print("first starts")
        first_started.set()
        second_done.wait(30)  # ends after the second, which started after it
        print("first ends")
        return "first"

    def second() -> str:
        first_started.wait(30)
        print("second", file=sys.stderr)
        return "second"

    def run(name: str, fn: Any) -> None:
        outcomes[name] = _on_worker(fn, (), {})
        if name == "second":
            second_done.set()

    threads = [threading.Thread(target=run, args=item) for item in (("first", first), ("second", second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert outcomes["first"][:2] == ("ok", "first")
    assert (outcomes["first"][2]["stdout"], outcomes["first"][2]["stderr"]) == ("first starts\nfirst ends\n", "")
    assert (outcomes["second"][2]["stdout"], outcomes["second"][2]["stderr"]) == ("", "second\n")
    assert (sys.stdout, sys.stderr) == streams


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        (lambda: (i for i in range(3)), "the task's result (a generator) cannot be sent back from the dask worker"),
        (threading.Lock, "the task's result (a lock) cannot be sent back from the dask worker"),
        (
            lambda: _raise(fresh_needs_arg()(3, "the disk is full")),
            "the task raised NeedsArg: the disk is full, which cannot be sent back from the dask worker: "
            "TypeError: NeedsArg.__init__() missing 1 required positional argument",
        ),
    ],
    ids=["generator", "lock", "needs-arg-error"],
)
def test_a_dask_outcome_that_cannot_leave_its_worker_is_the_attempts_error(fn: Any, message: str) -> None:
    pytest.importorskip("distributed")
    from baton.sdk.dask_executor import _on_worker

    logging.getLogger("distributed.protocol").disabled = True  # it logs each failed serialisation with a traceback
    try:
        kind, error, _lines = _on_worker(fn, (), {})
    finally:
        logging.getLogger("distributed.protocol").disabled = False

    assert kind == "error" and isinstance(error, TaskTransferError)
    assert str(error).startswith(message)


@pytest.mark.parametrize(
    "spec",
    ["process:0", "thread:99999", "thread:\u0668", "dask:tcp://", "dask:tcp://[", "dask:tcp://127.0.0.1", "\x00", 8],
)
def test_from_spec_refuses_what_the_api_refuses_naming_it(spec: Any) -> None:
    from baton.sdk.executors import from_spec

    with pytest.raises(ValueError, match=r"^executor .* is not sequential, thread\[:N\]"):
        from_spec(spec)

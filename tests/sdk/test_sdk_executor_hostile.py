"""Hostile tasks on each executor, without a server (issue 14's review): results and errors that cannot travel
back, errors whose text cannot be shown, task processes that die, fork, daemonize, print without end or return
200 MB, BaseExceptions on threads, and executors that cannot start. Each must end its task run Failed (or work)
with a message that says what happened, and leave no process behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton import ProcessExecutor, ThreadExecutor, flow, task
from baton.exceptions import ExecutorError
from baton.sdk.futures import TaskFailed, _submissions, current_submissions, submitting_to
from baton.sdk.processes import TaskProcessDied, TaskTransferError
from sdk.conftest import RecordingReporter
from support import free_port


class Unprintable(Exception):
    def __str__(self) -> str:
        raise ValueError("no text")


class BadReduce:
    def __reduce__(self) -> Any:
        raise RuntimeError("no pickling for you")


class BadRepr:
    def __repr__(self) -> str:
        raise ValueError("no repr")

    __str__ = __repr__


def _last(reporter: RecordingReporter, name: str) -> tuple[str, str | None]:
    task_run_id = next(run_id for run_id, task_name in reporter.names.items() if task_name == name)
    state, message = next((s, m) for run_id, s, m, _ in reversed(reporter.states) if run_id == task_run_id)
    return state, message


def _on_processes(fn: Any) -> BaseException | None:
    """Submit ``fn`` (a task) on a ProcessExecutor; its error (read, so the flow does not fail for it)."""

    @flow(executor=ProcessExecutor(2))
    def hostile() -> BaseException | None:
        return fn.submit().exception(timeout=60)

    return hostile()


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda: lambda: 1, "function"),
        (lambda: (i for i in range(3)), "generator"),
        (threading.Lock, "lock"),
        (BadReduce, "BadReduce"),
    ],
    ids=["lambda", "generator", "lock", "reduce-raises"],
)
def test_a_process_result_that_cannot_be_pickled_fails_the_task_saying_what_it_was(
    reporter: RecordingReporter, make: Any, kind: str
) -> None:
    @task
    def returns() -> Any:
        return make()

    error = _on_processes(returns)

    assert isinstance(error, TaskTransferError)
    state, message = _last(reporter, "returns")
    assert state == "Failed"
    assert (message or "").startswith(
        f"TaskTransferError: the task's result (a {kind}) cannot be sent back from its process: "
    )


def test_a_process_error_that_cannot_be_unpickled_keeps_its_text(reporter: RecordingReporter) -> None:
    needs_arg = _fresh_needs_arg()

    @task
    def raises() -> None:
        raise needs_arg(3, "the disk is full")

    error = _on_processes(raises)

    assert isinstance(error, TaskTransferError)
    assert _last(reporter, "raises") == (
        "Failed",
        "TaskTransferError: the task raised NeedsArg: the disk is full, which cannot be sent back from its process: "
        "TypeError: NeedsArg.__init__() missing 1 required positional argument: 'text'",
    )


@pytest.mark.parametrize("executor", [ThreadExecutor(2), ProcessExecutor(2)], ids=["threads", "processes"])
def test_an_error_whose_text_raises_still_fails_its_task_run_and_the_flow_with_a_message(
    reporter: RecordingReporter, executor: Any
) -> None:
    @task
    def raises() -> None:
        raise Unprintable()

    @flow(executor=executor)
    def unread() -> None:
        raises.submit()

    with pytest.raises(TaskFailed) as failed:
        unread()

    shown = "Unprintable: <its message cannot be shown: str() raised ValueError>"
    assert _last(reporter, "raises") == ("Failed", shown)
    assert str(failed.value) == f"1 submitted task(s) failed and the flow did not read them: 'raises' ({shown})"


def test_a_process_result_whose_repr_raises_comes_back(reporter: RecordingReporter) -> None:
    @task
    def returns() -> BadRepr:
        return BadRepr()

    @flow(executor=ProcessExecutor(1))
    def reads() -> BadRepr:
        return returns.submit().result()

    assert isinstance(reads(), BadRepr)
    assert _last(reporter, "returns") == ("Success", None)


def test_a_process_result_of_200_mb_comes_back() -> None:
    @task
    def huge() -> bytes:
        return b"x" * (200 * 2**20)

    @flow(executor=ProcessExecutor(1))
    def reads() -> int:
        return len(huge.submit().result(timeout=60))

    assert reads() == 200 * 2**20


@pytest.mark.parametrize(
    ("end", "how"),
    [
        (lambda: os._exit(3), "ended (exit code 3)"),
        (lambda: os.kill(os.getpid(), signal.SIGKILL), "was killed by signal SIGKILL"),
    ],
    ids=["os._exit", "sigkill"],
)
def test_a_task_process_that_dies_fails_the_task_saying_how(reporter: RecordingReporter, end: Any, how: str) -> None:
    @task
    def dies() -> None:
        end()

    error = _on_processes(dies)

    assert isinstance(error, TaskProcessDied)
    assert _last(reporter, "dies") == (
        "Failed",
        f"TaskProcessDied: the process of task 'dies' {how} without an outcome",
    )


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Path]:
    """A folder where tasks write the pids of the processes they start; those still alive are killed after."""
    folder = tmp_path / "pids"
    folder.mkdir()
    yield folder
    for path in folder.iterdir():
        if _alive(int(path.read_text())):
            os.kill(int(path.read_text()), signal.SIGKILL)


def _alive(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    try:
        return "zombie" not in status.read_text() and "(dead)" not in status.read_text()
    except OSError:
        return False


def _await_file(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never written"
        time.sleep(0.01)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="descendants are found through /proc")
def test_what_a_task_process_starts_ends_with_it_a_daemon_too(pids: Path) -> None:
    @task
    def leaves_processes(folder: str) -> str:
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        Path(folder, "popen").write_text(str(sleeper.pid))
        if os.fork() == 0:  # a daemon: forks twice, in a session of its own
            os.setsid()
            if os.fork() == 0:
                Path(folder, "daemon").write_text(str(os.getpid()))
                time.sleep(300)
            os._exit(0)
        _await_file(Path(folder, "daemon"))
        return "left two"

    @flow(executor=ProcessExecutor(1))
    def leaves(folder: str) -> str:
        return leaves_processes.submit(folder).result(timeout=60)

    assert leaves(str(pids)) == "left two"
    assert sorted(path.name for path in pids.iterdir()) == ["daemon", "popen"]
    assert not any(_alive(int(path.read_text())) for path in pids.iterdir())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="descendants are found through /proc")
def test_a_task_process_that_dies_while_its_fork_holds_the_pipe_fails_at_once_and_the_fork_ends(
    reporter: RecordingReporter, pids: Path
) -> None:
    @task
    def dies_leaving_a_fork(folder: str) -> None:
        if os.fork() == 0:  # holds the pipe's end open for five minutes
            Path(folder, "fork").write_text(str(os.getpid()))
            time.sleep(300)
            os._exit(0)
        _await_file(Path(folder, "fork"))
        os._exit(3)

    @flow(executor=ProcessExecutor(1))
    def dies(folder: str) -> BaseException | None:
        return dies_leaving_a_fork.submit(folder).exception(timeout=60)

    assert isinstance(dies(str(pids)), TaskProcessDied)
    assert _last(reporter, "dies_leaving_a_fork")[1] == (
        "TaskProcessDied: the process of task 'dies_leaving_a_fork' ended (exit code 3) without an outcome"
    )
    assert not _alive(int((pids / "fork").read_text()))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="descendants are found through /proc")
def test_a_timeout_kills_the_task_process_and_what_it_started(reporter: RecordingReporter, pids: Path) -> None:
    @task(timeout_seconds=1)
    def stuck(folder: str) -> None:
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        Path(folder, "popen").write_text(str(sleeper.pid))
        Path(folder, "task").write_text(str(os.getpid()))
        time.sleep(300)

    @flow(executor=ProcessExecutor(1))
    def times_out(folder: str) -> BaseException | None:
        return stuck.submit(folder).exception(timeout=60)

    assert isinstance(times_out(str(pids)), TimeoutError)
    assert _last(reporter, "stuck") == (
        "Failed",
        "TimeoutError: task 'stuck' did not finish within 1s: its process was killed",
    )
    assert not any(_alive(int(path.read_text())) for path in pids.iterdir())


def test_a_task_process_printing_and_logging_without_end_keeps_a_bounded_part_and_says_so(
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    @task
    def chatty() -> str:
        for number in range(200_000):
            print("y" * 99)  # 20 MB in all
            if number < 20_000:
                logging.getLogger("chatty").warning("line %d", number)
        return "said"

    @flow(executor=ProcessExecutor(1))
    def says() -> str:
        return chatty.submit().result(timeout=60)

    with caplog.at_level(logging.WARNING):
        assert says() == "said"

    printed = capsys.readouterr().out
    assert len(printed) < 1_100_000
    assert printed.endswith("[baton: 19000000 more characters were dropped: an attempt keeps 1000000]\n")
    messages = [record.getMessage() for record in caplog.records if record.name in {"chatty", "baton.task"}]
    assert len(messages) == 10_001
    assert messages[-1] == "10000 more log records were dropped: an attempt keeps 10000"


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit], ids=["KeyboardInterrupt", "SystemExit"])
def test_a_base_exception_on_a_thread_fails_its_task_and_the_flow_without_hanging(
    reporter: RecordingReporter, error: type[BaseException]
) -> None:
    @task
    def interrupted() -> None:
        raise error()

    @task
    def fine() -> int:
        return 1

    @flow(executor=ThreadExecutor(2))
    def unread() -> int:
        interrupted.submit()
        return fine.submit().result(timeout=60)

    @flow(executor=ThreadExecutor(2))
    def read() -> None:
        interrupted.submit().result(timeout=60)

    with pytest.raises(TaskFailed, match=rf"'interrupted' \({error.__name__}\)"):
        unread()
    with pytest.raises(error):
        read()
    assert _last(reporter, "interrupted") == ("Failed", error.__name__)
    assert _last(reporter, "fine") == ("Success", None)


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


def _fresh_needs_arg() -> type[Exception]:
    """An exception class that pickles but cannot be rebuilt from its pickle (``__init__`` wants two arguments,
    ``args`` holds one). Made anew at each call, then found by pickle as this module's ``NeedsArg``: importing
    ``distributed`` registers a pickling (tblib's) for every exception class defined before, which rebuilds it."""

    class NeedsArg(Exception):
        def __init__(self, code: int, text: str) -> None:
            super().__init__(text)
            self.code = code

    NeedsArg.__qualname__ = "NeedsArg"
    NeedsArg.__init__.__qualname__ = "NeedsArg.__init__"
    globals()["NeedsArg"] = NeedsArg
    return NeedsArg


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
            lambda: _raise(_fresh_needs_arg()(3, "the disk is full")),
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

"""Hostile tasks on each executor, without a server (issue 14's review): results and errors that cannot travel
back, errors whose text cannot be shown, task processes that die, fork, daemonize, print without end or return
200 MB, BaseExceptions on threads, and executors that cannot start. Each must end its task run Failed (or work)
with a message that says what happened, and leave no process behind."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baton import ProcessExecutor, ThreadExecutor, flow, task
from baton.sdk.futures import TaskFailed
from baton.sdk.processes import TaskProcessDied, TaskTransferError
from sdk.conftest import RecordingReporter, fresh_needs_arg


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
    needs_arg = fresh_needs_arg()

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


Pair = namedtuple("Pair", "left right")


@pytest.mark.parametrize("executor", [ThreadExecutor(2), ProcessExecutor(2)], ids=["thread", "process"])
def test_futures_inside_a_named_tuple_and_a_set_reach_the_task_as_their_results(executor: Any) -> None:
    @task
    def number(value: int) -> int:
        return value

    @task
    def combine(pair: Pair, values: set[int], frozen: frozenset[int]) -> tuple[str, int, int, int]:
        return type(pair).__name__, pair.left + pair.right, sum(values), sum(frozen)

    @flow(executor=executor)
    def combined() -> tuple[str, int, int, int]:
        one, two = number.submit(1), number.submit(2)
        return combine.submit(Pair(one, 10), {two, 20}, frozenset({one, 30})).result(timeout=60)

    assert combined() == ("Pair", 11, 22, 31)


def test_a_process_task_calling_tasks_runs_them_inline_in_its_process_unrecorded(reporter: RecordingReporter) -> None:
    @task
    def inner(value: int) -> int:
        return value + 1

    @task
    def outer(value: int) -> tuple[int, int]:
        return inner(value), inner.submit(value).result(timeout=30)

    @flow(executor=ProcessExecutor(1))
    def nested() -> tuple[int, int]:
        return outer.submit(1).result(timeout=30)

    assert nested() == (2, 2)
    assert list(reporter.names.values()) == ["outer"]


def test_a_process_task_may_use_a_multiprocessing_pool() -> None:
    @task
    def pooled() -> list[int]:
        with multiprocessing.get_context("fork").Pool(2) as pool:
            return pool.map(abs, [-1, -2, -3])

    @flow(executor=ProcessExecutor(1))
    def uses_a_pool() -> list[int]:
        return pooled.submit().result(timeout=60)

    assert uses_a_pool() == [1, 2, 3]


def test_failed_process_attempts_leave_no_descriptor_open_while_their_futures_live() -> None:
    @task
    def fails(value: int) -> None:
        raise ValueError(value)

    @flow(executor=ProcessExecutor(4))
    def many() -> int:
        before = len(os.listdir("/proc/self/fd"))
        futures = [fails.submit(value) for value in range(200)]
        assert all(isinstance(future.exception(timeout=60), ValueError) for future in futures)
        return len(os.listdir("/proc/self/fd")) - before

    assert many() < 20  # two per failed attempt before (its process's sentinel pipe)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="descendants are found through /proc")
def test_sigterm_and_sigint_to_the_task_processes_leave_the_decision_to_the_flow(tmp_path: Path) -> None:
    # Given a process task that waits for a file
    @task
    def waits(folder: str) -> str:
        Path(folder, "supervisor").write_text(str(os.getppid()))
        Path(folder, "task").write_text(str(os.getpid()))
        _await_file(Path(folder, "go"))
        return "carried on"

    # When its supervisor and its process get SIGTERM and SIGINT (the agent signals the run's process group)
    @flow(executor=ProcessExecutor(1))
    def signalled(folder: str) -> str:
        future = waits.submit(folder)
        _await_file(Path(folder, "task"))
        for name in ("supervisor", "task"):
            for number in (signal.SIGTERM, signal.SIGINT):
                os.kill(int(Path(folder, name).read_text()), number)
        Path(folder, "go").write_text("")
        return future.result(timeout=60)

    # Then the attempt goes on: only the flow's process ends it
    assert signalled(str(tmp_path)) == "carried on"


DIES_HARD = """
import os, subprocess, sys, time
from pathlib import Path
from baton import ProcessExecutor, flow, task

folder = sys.argv[1]

@task
def stays():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    Path(folder, "popen").write_text(str(sleeper.pid))
    Path(folder, "supervisor").write_text(str(os.getppid()))
    Path(folder, "task").write_text(str(os.getpid()))
    time.sleep(300)

@flow(executor=ProcessExecutor(1))
def hangs():
    stays.submit().result()

hangs()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="descendants are found through /proc")
def test_when_the_flow_process_is_killed_its_task_processes_end_too(pids: Path) -> None:
    flow_process = subprocess.Popen([sys.executable, "-c", DIES_HARD, str(pids)])
    try:
        _await_file(pids / "task")
    finally:
        flow_process.kill()
        flow_process.wait(30)

    deadline = time.monotonic() + 30
    while any(_alive(int(path.read_text())) for path in pids.iterdir()):
        assert time.monotonic() < deadline, "the task's processes outlived the flow's"
        time.sleep(0.05)


def _writes_bytes() -> str:  # tests/engine/test_engine_dask.py runs it on a dask worker too
    sys.stdout.buffer.write("bytes é\n".encode())
    sys.stdout.buffer.write(b"\xc3")  # a character split across two writes
    sys.stdout.buffer.write(b"\xa9\n")
    sys.stdout.buffer.flush()
    return "wrote"


def test_bytes_written_to_stdout_buffer_in_a_process_task_are_replayed(capsys: pytest.CaptureFixture[str]) -> None:
    @flow(executor=ProcessExecutor(1))
    def writes() -> str:
        return task(_writes_bytes).submit().result(timeout=60)

    assert writes() == "wrote"
    assert "bytes é\né\n" in capsys.readouterr().out

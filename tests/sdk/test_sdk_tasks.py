from __future__ import annotations

import threading
import time

import pytest

from baton.sdk.context import FlowRunCancelled, current_task_run_id
from baton.sdk.tasks import Task, task
from sdk.conftest import RecordingReporter


def test_bare_decorator_makes_a_task_named_after_the_function() -> None:
    @task
    def add(a: int, b: int) -> int:
        return a + b

    assert isinstance(add, Task)
    assert add.name == "add"
    assert add.__name__ == "add"  # type: ignore[attr-defined]  # set by functools.update_wrapper
    assert add(2, 3) == 5


def test_decorator_with_arguments_keeps_them() -> None:
    @task(retries=2, retry_delay_seconds=0.5, timeout_seconds=3, name="custom")
    def noop() -> None:
        return None

    assert (noop.name, noop.retries, noop.retry_delay_seconds, noop.timeout_seconds) == ("custom", 2, 0.5, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"retries": -1}, "retries"), ({"retry_delay_seconds": -1}, "retry_delay"), ({"timeout_seconds": 0}, "timeout")],
)
def test_invalid_options_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        task(**kwargs)(lambda: None)  # type: ignore[call-overload]


def test_successful_task_records_pending_running_success(reporter: RecordingReporter) -> None:
    @task
    def double(x: int) -> int:
        return x * 2

    assert double(21) == 42
    assert reporter.names == {"tr-1": "double"}
    assert reporter.states == [("tr-1", "Running", None, 1), ("tr-1", "Success", None, 1)]


def test_failing_task_is_retried_after_the_delay_then_succeeds(reporter: RecordingReporter) -> None:
    calls: list[float] = []

    @task(retries=2, retry_delay_seconds=0.2)
    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return "ok"

    assert flaky() == "ok"
    assert len(calls) == 3
    assert calls[1] - calls[0] >= 0.2
    assert calls[2] - calls[1] >= 0.2
    assert reporter.history("tr-1") == ["Running", "Retrying", "Running", "Retrying", "Running", "Success"]
    retrying = [(message, attempt) for _, state, message, attempt in reporter.states if state == "Retrying"]
    assert retrying == [("ConnectionError: attempt 1 failed", 1), ("ConnectionError: attempt 2 failed", 2)]


def test_task_that_keeps_failing_raises_its_last_error_and_is_failed(reporter: RecordingReporter) -> None:
    attempts = []

    @task(retries=1)
    def broken() -> None:
        attempts.append(1)
        raise ValueError(f"bad {len(attempts)}")

    with pytest.raises(ValueError, match="bad 2"):
        broken()
    assert len(attempts) == 2
    assert reporter.states[-1] == ("tr-1", "Failed", "ValueError: bad 2", 2)


def test_keyboard_interrupt_is_not_retried_and_marks_the_task_failed(reporter: RecordingReporter) -> None:
    attempts = []

    @task(retries=3)
    def interrupted() -> None:
        attempts.append(1)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert len(attempts) == 1
    assert reporter.states[-1] == ("tr-1", "Failed", "KeyboardInterrupt", 1)


def test_cancellation_marks_the_task_cancelled_without_retry(reporter: RecordingReporter) -> None:
    @task(retries=3)
    def cancelled() -> None:
        raise FlowRunCancelled("the run is Cancelling")

    with pytest.raises(FlowRunCancelled):
        cancelled()
    assert reporter.history("tr-1") == ["Running", "Cancelled"]


@pytest.mark.parametrize(
    ("stop", "final"),
    [
        (FlowRunCancelled("the run is Cancelling"), ("Cancelled", "flow run cancelled")),
        (KeyboardInterrupt(), ("Failed", "KeyboardInterrupt")),
    ],
)
def test_a_stop_during_the_retry_delay_ends_the_task_run_not_leaves_it_retrying(
    reporter: RecordingReporter, monkeypatch: pytest.MonkeyPatch, stop: BaseException, final: tuple[str, str]
) -> None:
    # The engine raises FlowRunCancelled in the flow's thread wherever it is: here, in the sleep before a retry.
    def interrupted_sleep(seconds: float) -> None:
        raise stop

    monkeypatch.setattr("baton.sdk.tasks.time.sleep", interrupted_sleep)
    attempts = []

    @task(retries=2, retry_delay_seconds=30)
    def flaky() -> None:
        attempts.append(1)
        raise ConnectionError("down")

    with pytest.raises(type(stop)):
        flaky()
    assert len(attempts) == 1
    assert reporter.history("tr-1") == ["Running", "Retrying", final[0]]
    assert reporter.states[-1] == ("tr-1", *final, 1)


def test_task_over_its_timeout_fails_with_a_clear_timeout_error(reporter: RecordingReporter) -> None:
    release = threading.Event()

    @task(timeout_seconds=0.2)
    def slow() -> None:
        release.wait(10)

    started = time.monotonic()
    with pytest.raises(TimeoutError, match=r"task 'slow' did not finish within 0.2s.*cannot be killed"):
        slow()
    assert time.monotonic() - started < 2
    assert reporter.states[-1][1] == "Failed"
    assert "TimeoutError" in (reporter.states[-1][2] or "")
    release.set()  # let the abandoned thread end


def test_timed_out_attempt_is_retried(reporter: RecordingReporter) -> None:
    attempts: list[int] = []

    @task(retries=1, timeout_seconds=0.3)
    def slow_then_fast() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            time.sleep(1)
        return "fast"

    assert slow_then_fast() == "fast"
    assert reporter.history("tr-1") == ["Running", "Retrying", "Running", "Success"]


def test_task_with_timeout_returns_its_result_and_raises_its_errors() -> None:
    @task(timeout_seconds=5)
    def quick(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x + 1

    assert quick(1) == 2
    with pytest.raises(ValueError, match="negative"):
        quick(-1)


def test_task_code_sees_its_own_task_run_id_even_in_the_timeout_thread(reporter: RecordingReporter) -> None:
    @task(timeout_seconds=5)
    def in_thread() -> str | None:
        return current_task_run_id()

    @task
    def in_caller() -> str | None:
        return current_task_run_id()

    assert in_thread() == "tr-1"
    assert in_caller() == "tr-2"
    assert current_task_run_id() is None


def test_task_called_from_a_task_is_its_own_task_run(reporter: RecordingReporter) -> None:
    @task
    def inner() -> int:
        return 1

    @task
    def outer() -> int:
        return inner() + 1

    assert outer() == 2
    assert reporter.names == {"tr-1": "outer", "tr-2": "inner"}

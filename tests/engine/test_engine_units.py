"""The engine's parts one by one: retries, the loader, the heartbeat, the runner with an in-memory API."""

from __future__ import annotations

import gzip
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest

from baton.client import Client
from baton.client.transport import ConnectFailed, TimedOut
from baton.engine import limits
from baton.engine import runner as runner_module
from baton.engine.__main__ import main
from baton.engine.cancel import TERMINATED
from baton.engine.heartbeat import Heartbeat
from baton.engine.loader import load_flow
from baton.engine.retry import backoff_delay, call_with_retry
from baton.engine.runner import FlowRunner
from baton.exceptions import (
    AuthenticationError,
    ClientError,
    ConflictError,
    FlowLoadError,
    NotFoundError,
    ServerUnavailableError,
)
from baton.schemas import actions
from baton.schemas.core import Storage, StorageType
from baton.schemas.responses import FlowRunHeartbeatResponse, FlowRunRead, StateChanged
from baton.settings import load_settings
from engine.fakes import FakeApi, flow_read
from support import wait_for

HELLO = """
import logging
from baton import flow, task

@task(retries=1)
def greet(name: str) -> str:
    logging.getLogger("hello").info("greeting %s", name)
    return f"hello {name}"

@flow
def hello(name: str = "world") -> str:
    print(greet(name))
    return name

@flow(name="other-flow")
def other() -> None:
    raise RuntimeError("from the stored source")
"""


# --- retry --------------------------------------------------------------------------------------


def test_backoff_grows_exponentially_up_to_the_cap_with_jitter() -> None:
    for attempt, full in [(1, 0.5), (2, 1.0), (3, 2.0), (10, 10.0)]:
        delays = [backoff_delay(attempt) for _ in range(50)]
        assert all(full * 0.5 <= delay <= full for delay in delays)


def _answers(*outcomes: Exception | str) -> Callable[[], str]:
    """A call that raises or returns each of ``outcomes`` in turn."""
    pending = list(outcomes)

    def call() -> str:
        outcome = pending.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return call


def test_call_with_retry_retries_while_unavailable_then_returns() -> None:
    call = _answers(ServerUnavailableError("down"), ServerUnavailableError("down"), "ok")
    slept: list[float] = []

    assert call_with_retry(call, what="test", sleep=slept.append) == "ok"
    assert len(slept) == 2


def test_call_with_retry_raises_when_the_time_is_up() -> None:
    def call() -> None:
        raise ServerUnavailableError("down for good")

    with pytest.raises(ServerUnavailableError, match="down for good"):
        call_with_retry(call, what="test", timeout_seconds=0.3)


def _unreachable() -> ServerUnavailableError:
    error = ServerUnavailableError("cannot connect to http://127.0.0.1:1: connection refused")
    error.__cause__ = ConnectFailed("connection refused")  # what the client raises it from
    return error


def test_call_with_retry_gives_up_sooner_on_an_api_that_never_answered() -> None:
    # An address nothing answers at (a container given 127.0.0.1) is told within the short budget
    def unreachable() -> None:
        raise _unreachable()

    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match="connection refused"):
        call_with_retry(unreachable, what="test", timeout_seconds=60, unreachable_seconds=0.2, sleep=time.sleep)
    assert time.monotonic() - started < 30  # not the 60 s budget


def test_call_with_retry_keeps_the_long_budget_once_the_api_answered() -> None:
    # A 503 is an answer: the address is right, so the short budget no longer applies
    call = _answers(_unreachable(), ServerUnavailableError("HTTP 503"), _unreachable(), "ok")
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(0.15)  # together past the short budget of 0.2 s

    assert call_with_retry(call, what="test", timeout_seconds=60, unreachable_seconds=0.2, sleep=sleep) == "ok"
    assert len(slept) == 3


def test_call_with_retry_counts_a_slow_answer_as_an_answer() -> None:
    # A read timeout reached the server: not the short budget of an address nothing listens on
    slow = ServerUnavailableError("timed out reading the answer")
    slow.__cause__ = TimedOut("timed out")
    call = _answers(slow, "ok")

    assert call_with_retry(call, what="test", timeout_seconds=60, unreachable_seconds=0, sleep=lambda _: None) == "ok"


def test_call_with_retry_raises_a_refusal_at_once() -> None:
    calls = []

    def call() -> None:
        calls.append(1)
        raise ClientError(400, "bad request")

    with pytest.raises(ClientError):
        call_with_retry(call, what="test", sleep=lambda _: None)
    assert calls == [1]


# --- loader -------------------------------------------------------------------------------------


def test_api_storage_runs_the_stored_source_and_finds_the_entrypoint() -> None:
    flow = load_flow(flow_read(HELLO, "hello"))
    assert (flow.name, flow.entrypoint) == ("hello", "hello")
    assert flow.fn.__module__ == "baton_flow_hello"
    assert load_flow(flow_read(HELLO, "other")).name == "other-flow"


def test_tracebacks_of_stored_source_show_its_lines_even_when_the_file_is_not_here() -> None:
    flow = load_flow(flow_read(HELLO, "other"))
    with pytest.raises(RuntimeError) as caught:
        flow.run({})
    text = "".join(traceback.format_exception(caught.value))
    assert 'File "/registered/on/another/host/other.py", line 17, in other' in text
    assert 'raise RuntimeError("from the stored source")' in text


def test_missing_entrypoint_lists_the_flows_that_are_there() -> None:
    with pytest.raises(FlowLoadError, match=r"no @flow function named 'absent' \(flows found: 'hello', 'other'\)"):
        load_flow(flow_read(HELLO, "absent"))


def test_stored_source_with_a_syntax_error_is_a_flow_load_error_with_its_line() -> None:
    with pytest.raises(FlowLoadError, match=r"/registered/on/another/host/broken\.py, line 2: SyntaxError"):
        load_flow(flow_read("x = 1\ndef broken(:\n", "broken"))


BAD_HINT = """
from __future__ import annotations
from baton import flow

@flow
def typo(count: itn = 1) -> None:
    print(count)
"""


def test_a_flow_with_a_hint_that_cannot_be_resolved_does_not_load() -> None:
    with pytest.raises(FlowLoadError, match="the type hint 'itn' of parameter 'count' cannot be resolved"):
        load_flow(flow_read(BAD_HINT, "typo"))


def test_runner_fails_a_flow_with_a_bad_hint_before_calling_it(baton_home: Path) -> None:
    api = FakeApi(flow_read(BAD_HINT, "typo"), parameters={"count": "not a number"})

    assert run_in_process(api) == 1
    assert [name for name, _ in api.states] == ["Submitted", "Running", "Failed"]
    assert api.task_runs == {}
    assert (api.states[-1][1] or "").startswith("FlowLoadError: flow 'typo': the type hint 'itn' of parameter 'count'")


def test_local_storage_imports_the_file_at_its_path(tmp_path: Path) -> None:
    path = tmp_path / "local_hello.py"
    path.write_text(HELLO)
    flow = load_flow(flow_read("", "hello", Storage(type=StorageType.LOCAL, path=str(path))))
    assert flow.fn.__code__.co_filename == str(path)


def test_local_storage_with_a_missing_file_is_a_flow_load_error(tmp_path: Path) -> None:
    storage = Storage(type=StorageType.LOCAL, path=str(tmp_path / "gone.py"))
    with pytest.raises(FlowLoadError, match=r"gone\.py: no such file"):
        load_flow(flow_read("", "hello", storage))


@pytest.mark.parametrize(
    ("kind", "why"),
    [(StorageType.DOCKER, "has docker storage but no path"), (StorageType.GIT, "git storage but no repository")],
)
def test_a_storage_lacking_what_it_needs_is_a_flow_load_error(kind: StorageType, why: str) -> None:
    with pytest.raises(FlowLoadError, match=why):
        load_flow(flow_read("", "hello", Storage(type=kind)))


def test_a_bundle_the_engine_cannot_download_is_a_flow_load_error() -> None:
    storage = Storage(type=StorageType.API, bundle="0" * 64, path="flow.py")
    with pytest.raises(FlowLoadError, match="has a bundle this engine cannot read"):
        load_flow(flow_read("", "hello", storage))
    with pytest.raises(FlowLoadError, match="does not match its digest"):
        load_flow(flow_read("", "hello", storage), fetch_bundle=lambda digest: gzip.compress(b"", mtime=0))


# --- heartbeat ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "failure", "stops"),
    [
        ("Running", None, None),
        ("Cancelling", None, "the run is Cancelling"),
        ("Failed", None, "the run is Failed"),
        ("Running", ServerUnavailableError("down"), None),
        ("Running", ClientError(422, "odd"), None),
        ("Running", AuthenticationError(401, "revoked"), "no longer accepts this run's token"),
        ("Running", NotFoundError(404, "gone"), "no longer accepts this run's token"),
    ],
)
def test_heartbeat_says_when_the_run_must_stop(state: str, failure: Exception | None, stops: str | None) -> None:
    api = FakeApi(flow_read("", "x"), state=state)
    if failure is not None:
        api.fail["flow_run_heartbeat"].append(failure)
    reason = Heartbeat(cast(Client, api), "run-1", 1.0, lambda _: None).beat()
    if stops is None:
        assert reason is None
    else:
        assert reason is not None and stops in reason


def test_heartbeat_thread_calls_on_stop_once_when_the_run_is_cancelling() -> None:
    api = FakeApi(flow_read("", "x"), state="Running")
    reasons: list[str] = []
    with Heartbeat(cast(Client, api), "run-1", 0.05, reasons.append):
        wait_for(lambda: api.calls.count("flow_run_heartbeat") >= 2, timeout=5, what="two heartbeats")
        api.state = "Cancelling"
        wait_for(lambda: reasons, timeout=5, what="the stop")
    assert reasons == ["the run is Cancelling"]


# --- runner with the in-memory API --------------------------------------------------------------


def run_in_process(
    api: FakeApi,
    heartbeat: float = 0.1,
    start_timeout: float = 2,
    state_retry_seconds: float = 120,
    stop_check_timeout: float = 1,
    batch_interval: float = 0.05,
) -> int:
    settings = load_settings(
        logging={"batch_interval_seconds": batch_interval}, agent={"heartbeat_interval_seconds": heartbeat}
    )
    return FlowRunner(
        cast(Client, api),
        "run-1",
        settings,
        start_timeout=start_timeout,
        state_retry_seconds=state_retry_seconds,
        stop_check_timeout=stop_check_timeout,
    ).run()


def test_runner_runs_the_flow_and_reports_states_task_runs_and_logs(baton_home: Path) -> None:
    api = FakeApi(flow_read(HELLO, "hello"), parameters={"name": "Ada"})

    assert run_in_process(api, batch_interval=30) == 0

    assert [name for name, _ in api.states] == ["Submitted", "Running", "Success"]
    assert [(t["name"], t["states"]) for t in api.task_runs.values()] == [("greet", ["Running", "Success"])]
    shipped = [(entry["name"], entry["message"]) for entry in api.logs]
    assert ("hello", "greeting Ada") in shipped
    assert ("stdout", "hello Ada") in shipped
    # A short run's lines all go with its final state (the run token is revoked once the run is final): no
    # request of their own, and the last line, the engine's own, is among them.
    assert "write_logs" not in api.calls
    assert api.lines_with_states == [len(api.logs)]
    assert api.logs[-1]["message"] == "Flow run finished: Success"


def test_runner_sends_its_last_lines_apart_when_the_final_state_is_refused(baton_home: Path) -> None:
    # Given a run being cancelled while its flow ends (Cancelling: its token still works)
    api = FakeApi(flow_read(HELLO, "hello"), parameters={"name": "Ada"})
    api.refuse_states["Success"] = ConflictError(409, "Cancelling -> Success is not allowed", "Cancelling")

    # When the flow ends: its Success, and the lines sent with it, are refused
    exit_code = run_in_process(api, batch_interval=30)

    # Then the lines still reach the API, in a request of their own
    assert exit_code == 1  # not Success, and not final yet: the agent ends the cancellation
    assert api.lines_with_states == []
    assert "write_logs" in api.calls
    assert ("stdout", "hello Ada") in [(entry["name"], entry["message"]) for entry in api.logs]


@pytest.mark.parametrize(
    ("status", "detail"),
    [
        (422, "logs: extra inputs are not permitted"),  # a server older than lines sent with a state
        (413, "request body too large"),  # lines that pass the server's body limit together
    ],
)
def test_runner_sends_its_last_lines_first_when_a_state_with_them_is_refused(
    baton_home: Path, status: int, detail: str
) -> None:
    # Given a server that refuses a state with lines, but not the lines alone nor the state alone
    api = FakeApi(flow_read(HELLO, "hello"), parameters={"name": "Ada"})
    refused = ClientError(status, detail)
    original = api.change_flow_run_state

    def older(flow_run_id: str, name: str, message: str | None = None, **kwargs: Any) -> StateChanged:
        if kwargs.get("logs"):
            raise refused
        return original(flow_run_id, name, message, **kwargs)

    api.change_flow_run_state = older  # type: ignore[method-assign]

    assert run_in_process(api, batch_interval=30) == 0

    # Then the run still ends as its flow did, and no line is lost
    assert api.state == "Success"
    last_state = len(api.calls) - 1 - api.calls[::-1].index("set_flow_run_state")
    assert api.calls.index("write_logs") < last_state  # the lines, then the state
    assert ("stdout", "hello Ada") in [(entry["name"], entry["message"]) for entry in api.logs]


def test_runner_goes_on_when_a_lost_answer_makes_running_conflict(baton_home: Path) -> None:
    api = FakeApi(flow_read(HELLO, "hello"))
    # Running is stored, but the answer is lost: the retry gets 409 because the run is Running already.
    api.apply_then_fail["set_flow_run_state"].append(ServerUnavailableError("connection reset"))

    assert run_in_process(api) == 0
    assert [name for name, _ in api.states] == ["Submitted", "Running", "Success"]


def test_runner_fails_the_run_when_the_flow_raises(baton_home: Path) -> None:
    api = FakeApi(flow_read(HELLO, "other"))

    assert run_in_process(api) == 1
    assert api.states[-1] == ("Failed", "RuntimeError: from the stored source")
    assert any("Traceback" in entry["message"] for entry in api.logs)


def test_runner_exits_1_when_the_final_state_cannot_be_reported(baton_home: Path) -> None:
    api = FakeApi(flow_read(HELLO, "hello"))
    api.refuse_states["Success"] = ServerUnavailableError("down")

    assert run_in_process(api, state_retry_seconds=0.5) == 1
    assert api.state == "Running"
    assert api.calls.count("set_flow_run_state") >= 3  # Running, then Success tried again and again


def test_runner_does_not_run_a_run_that_is_already_final(baton_home: Path) -> None:
    api = FakeApi(flow_read(HELLO, "hello"), state="Failed")

    assert run_in_process(api) == 1
    assert api.task_runs == {}
    assert api.states == [("Failed", None)]  # its start was refused (409), and nothing else was tried


def test_runner_stops_waiting_for_submitted_after_the_start_timeout(baton_home: Path) -> None:
    api = FakeApi(flow_read(HELLO, "hello"), state="Pending")

    assert run_in_process(api) == 1
    assert api.state == "Pending"
    assert api.task_runs == {}


class SubmittedAfterRefusedRunning(FakeApi):
    """A run still Pending whose agent posts Submitted just after the API refused the engine's Running.

    The refusal names the run's state (Pending), and Submitted lands right after it; from an older server
    (``names_state=False``) it names none, and Submitted lands while the engine reads the run to learn it.
    """

    def __init__(self, flow: Any, *, report: str = "Pending", names_state: bool = True) -> None:
        super().__init__(flow, state="Pending")
        self._report = report  # what the read after the refusal answers: Pending, or Submitted already
        self._names_state = names_state
        self.pending_reads = 0  # reads of the run while it was Pending

    def _submitted(self) -> None:
        self.state = "Submitted"
        self.states.append(("Submitted", "PID: 1"))

    def set_flow_run_state(
        self, flow_run_id: str, name: str, message: str | None = None, data: dict[str, Any] | None = None
    ) -> FlowRunRead:
        try:
            return super().set_flow_run_state(flow_run_id, name, message, data)
        except ConflictError as exc:
            if not (self.state == "Pending" and name == "Running"):
                raise
            if not self._names_state:
                raise ConflictError(409, exc.detail) from None
            self._submitted()
            raise ConflictError(409, exc.detail, "Pending") from None

    def get_flow_run(self, flow_run_id: str) -> FlowRunRead:
        run = super().get_flow_run(flow_run_id)
        self.pending_reads += self.state == "Pending"
        # The engine's first read (of its run) sees Pending; its next one, after a refused Running, is the moment
        # the agent's Submitted lands (that read answers Pending, or Submitted if the agent was quicker).
        if self.state == "Pending" and self.calls.count("get_flow_run") > 1:
            self._submitted()
            return run.model_copy(update={"state": self._report})
        return run


def test_runner_keeps_waiting_for_submitted_through_an_api_outage_longer_than_the_start_timeout(
    baton_home: Path,
) -> None:
    # Given a run still Pending and an API that answers 503 for longer than the engine's wait for Submitted
    # (two retries with backoff take at least 0.75 s): the agent cannot post Submitted meanwhile either
    api = SubmittedAfterRefusedRunning(flow_read(HELLO, "hello"))
    api.fail["set_flow_run_state"] += [ServerUnavailableError("HTTP 503"), ServerUnavailableError("HTTP 503")]

    # When the engine starts with a 0.5 s wait for Submitted
    exit_code = run_in_process(api, start_timeout=0.5)

    # Then the outage did not use up that wait: the agent's Submitted came, and the run ran
    assert exit_code == 0
    assert [name for name, _ in api.states] == ["Pending", "Submitted", "Running", "Success"]


@pytest.mark.parametrize("report", ["Pending", "Submitted"])
def test_runner_of_an_older_server_reads_the_state_after_a_refused_running(baton_home: Path, report: str) -> None:
    # An older server's 409 does not name the state: the engine reads the run, while the agent's Submitted lands
    api = SubmittedAfterRefusedRunning(flow_read(HELLO, "hello"), report=report, names_state=False)

    assert run_in_process(api) == 0
    assert [name for name, _ in api.states] == ["Pending", "Submitted", "Running", "Success"]
    assert api.pending_reads == 2  # its first read, and the one after the refusal


def test_runner_asks_running_again_when_the_refusal_names_pending_without_reading_the_run(baton_home: Path) -> None:
    api = SubmittedAfterRefusedRunning(flow_read(HELLO, "hello"))

    assert run_in_process(api) == 0
    assert [name for name, _ in api.states] == ["Pending", "Submitted", "Running", "Success"]
    # One read, after the refused start (its flow is needed), and none after the refused Running: it said Pending.
    calls = api.calls[: api.calls.index("set_flow_run_state", api.calls.index("get_flow_run")) + 1]
    assert calls == ["start_flow_run", "set_flow_run_state", "get_flow_run", "get_flow", "set_flow_run_state"]


# --- stops: cancellation and SIGTERM ------------------------------------------------------------

NAPPING = """
import time
from baton import flow, task

@task(retries=1, retry_delay_seconds=60)
def nap(fail_first: bool) -> None:
    if fail_first and not getattr(nap, "failed", False):
        nap.failed = True
        raise ConnectionError("first attempt fails")
    time.sleep(60)

@flow
def napping(fail_first: bool = False) -> None:
    nap(fail_first)
"""


@pytest.fixture
def sigterm_guard() -> Iterator[None]:
    """A SIGTERM that reaches the test process outside the engine's handler is ignored, not fatal to pytest."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    yield
    signal.signal(signal.SIGTERM, previous)


def task_state_is(api: FakeApi, state: str) -> Callable[[], bool]:
    return lambda: any(task_run["states"][-1] == state for task_run in list(api.task_runs.values()))


def when(condition: Callable[[], object], action: Callable[[], None]) -> threading.Thread:
    """Do ``action`` from another thread as soon as ``condition`` holds (the engine runs in the main thread)."""

    def wait_then_act() -> None:
        wait_for(condition, timeout=20, what="the moment to act")
        action()

    thread = threading.Thread(target=wait_then_act, daemon=True)
    thread.start()
    return thread


def sigterm_main_thread() -> None:
    main_thread = threading.main_thread().ident
    assert main_thread is not None
    signal.pthread_kill(main_thread, signal.SIGTERM)


def cancel_then_sigterm(api: FakeApi) -> Callable[[], None]:
    def act() -> None:
        api.state = "Cancelling"
        sigterm_main_thread()

    return act


def test_sigterm_while_the_run_is_not_being_cancelled_ends_it_failed(baton_home: Path, sigterm_guard: None) -> None:
    # Given a flow in a long task, and a heartbeat too slow to matter
    api = FakeApi(flow_read(NAPPING, "napping"))
    when(task_state_is(api, "Running"), sigterm_main_thread)

    # When the process gets SIGTERM while the run is Running (an agent's cold stop, an operator)
    exit_code = run_in_process(api, heartbeat=60)

    # Then that is no cancellation: the run ends Failed, saying why
    assert exit_code == 1
    assert api.states[-1] == ("Failed", TERMINATED)
    assert [t["states"] for t in api.task_runs.values()] == [["Running", "Cancelled"]]


def test_sigterm_while_the_run_is_cancelling_ends_it_cancelled(baton_home: Path, sigterm_guard: None) -> None:
    api = FakeApi(flow_read(NAPPING, "napping"))
    when(task_state_is(api, "Running"), cancel_then_sigterm(api))

    assert run_in_process(api, heartbeat=60) == 0
    assert api.states[-1] == ("Cancelled", f"the run is Cancelling: {TERMINATED}")
    assert api.calls.count("flow_run_heartbeat") == 1  # the one quick check after the signal


def test_sigterm_when_the_state_cannot_be_read_ends_the_run_failed(baton_home: Path, sigterm_guard: None) -> None:
    api = FakeApi(flow_read(NAPPING, "napping"))

    def cancel_but_hide_it_then_sigterm() -> None:
        api.fail["flow_run_heartbeat"].append(ServerUnavailableError("HTTP 503"))
        cancel_then_sigterm(api)()

    when(task_state_is(api, "Running"), cancel_but_hide_it_then_sigterm)

    assert run_in_process(api, heartbeat=60) == 1
    assert api.states[-1] == ("Failed", TERMINATED)


class HangingHeartbeat(FakeApi):
    def __init__(self, flow: Any) -> None:
        super().__init__(flow)
        self.hang = False
        self.release = threading.Event()

    def flow_run_heartbeat(self, flow_run_id: str) -> FlowRunHeartbeatResponse:
        if self.hang:
            self.release.wait(30)
        return super().flow_run_heartbeat(flow_run_id)


def test_sigterm_when_the_api_does_not_answer_in_time_ends_the_run_failed(
    baton_home: Path, sigterm_guard: None
) -> None:
    api = HangingHeartbeat(flow_read(NAPPING, "napping"))

    def hang_then_sigterm() -> None:
        api.hang = True
        cancel_then_sigterm(api)()

    when(task_state_is(api, "Running"), hang_then_sigterm)
    try:
        assert run_in_process(api, heartbeat=60, stop_check_timeout=0.2) == 1
    finally:
        api.release.set()
    assert api.states[-1] == ("Failed", TERMINATED)


def test_sigterm_while_waiting_for_submitted_stops_the_wait_and_fails_the_run(
    baton_home: Path, sigterm_guard: None
) -> None:
    api = FakeApi(flow_read(NAPPING, "napping"), state="Pending")
    when(lambda: api.calls.count("set_flow_run_state") >= 2, sigterm_main_thread)

    assert run_in_process(api, heartbeat=60, start_timeout=60) == 1
    assert [name for name, _ in api.states] == ["Pending", "Failed"]
    assert api.states[-1] == ("Failed", TERMINATED)
    assert api.task_runs == {}


def test_cancelling_seen_by_the_heartbeat_ends_the_run_cancelled(baton_home: Path) -> None:
    api = FakeApi(flow_read(NAPPING, "napping"))

    def cancel() -> None:
        api.state = "Cancelling"

    when(task_state_is(api, "Running"), cancel)

    assert run_in_process(api) == 0
    assert api.states[-1] == ("Cancelled", "the run is Cancelling")
    assert [t["states"] for t in api.task_runs.values()] == [["Running", "Cancelled"]]


def test_cancel_during_a_tasks_retry_delay_ends_its_task_run_cancelled(baton_home: Path) -> None:
    # Given a task that failed once and now waits 60 s before its retry
    api = FakeApi(flow_read(NAPPING, "napping"), parameters={"fail_first": True})

    def cancel() -> None:
        api.state = "Cancelling"

    when(task_state_is(api, "Retrying"), cancel)

    # When the run is cancelled during that wait
    assert run_in_process(api) == 0

    # Then the task run ends Cancelled, not Retrying for good
    assert api.states[-1] == ("Cancelled", "the run is Cancelling")
    assert [t["states"] for t in api.task_runs.values()] == [["Running", "Retrying", "Cancelled"]]


# --- python -m baton.engine ---------------------------------------------------------------------


def test_main_without_a_flow_run_id_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("BATON_FLOW_RUN_ID", raising=False)
    assert main([]) == 2
    assert "set BATON_FLOW_RUN_ID" in capsys.readouterr().err


def test_main_with_malformed_settings_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], baton_home: Path
) -> None:
    monkeypatch.setenv("BATON__API__URL", "not-a-url")
    assert main(["--flow-run-id", "run-1"]) == 2
    assert "must start with http://" in capsys.readouterr().err


def test_engine_help_works_and_the_engine_imports_no_heavy_modules() -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "baton.engine", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "--no-cloud-logs" in help_text
    heavy = {"rich", "click", "fastapi", "sqlalchemy", "httpx", "httpcore", "anyio", "baton.schemas.actions"}
    probe = (
        "import sys, baton.engine.__main__, baton.client.http, baton.engine.runner; "
        f"print(sorted({{n if n.startswith('baton') else n.split('.')[0] for n in sys.modules}} & {heavy!r}))"
    )
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_the_engines_limits_are_the_servers() -> None:
    # The engine keeps its own copy (baton.engine.limits) so as not to import every request model at start-up.
    name_limit = next(m.max_length for m in actions.LogEntry.model_fields["name"].metadata if hasattr(m, "max_length"))
    assert (
        actions.MAX_MESSAGE_LENGTH,
        actions.MAX_LOGS_PER_BATCH,
        name_limit,
        actions.MAX_TASK_RUN_STATES,
        actions.MAX_TASK_RUNS_PER_CREATE,
        actions.MAX_BATCH_MESSAGE_LENGTH,
    ) == (
        limits.MAX_MESSAGE_LENGTH,
        limits.MAX_LOGS_PER_BATCH,
        limits.MAX_LOG_NAME_LENGTH,
        limits.MAX_TASK_RUN_STATES,
        limits.MAX_TASK_RUNS_PER_CREATE,
        limits.MAX_BATCH_MESSAGE_LENGTH,
    )


# --- cancel signal ------------------------------------------------------------------------------


def test_stop_requested_before_the_flow_starts_cancels_it_on_entry() -> None:
    from baton.engine.cancel import CancelSignal
    from baton.sdk.context import FlowRunCancelled

    cancel = CancelSignal()
    cancel.install()
    try:
        cancel.request("the run is Cancelling")  # not armed yet: only noted
        with pytest.raises(FlowRunCancelled, match="the run is Cancelling"), cancel:
            pytest.fail("the flow must not start")
    finally:
        cancel.uninstall()


def test_stop_requested_while_armed_interrupts_a_sleep_in_the_main_thread() -> None:
    import threading
    import time

    from baton.engine.cancel import CancelSignal
    from baton.sdk.context import FlowRunCancelled

    cancel = CancelSignal()
    cancel.install()
    try:
        started = time.monotonic()
        with pytest.raises(FlowRunCancelled, match="from another thread"), cancel:
            threading.Timer(0.2, cancel.request, args=("from another thread",)).start()
            time.sleep(20)
        assert time.monotonic() - started < 30  # not the 60 s budget
    finally:
        cancel.uninstall()


class SigtermDuring(FakeApi):
    """Sends SIGTERM to the main thread in the middle of one of its calls, as an agent's kill may land."""

    def __init__(self, flow: Any, call: str, parameters: dict[str, Any] | None = None) -> None:
        super().__init__(flow, parameters=parameters)
        self.call = call
        self.sent = False

    def _enter(self, call: str) -> None:
        super()._enter(call)
        if call == self.call and not self.sent:
            self.sent = True
            sigterm_main_thread()  # handled between two bytecodes of this very call


@pytest.mark.parametrize(
    ("call", "task_states"),
    [
        ("create_task_run", ["Running", "Cancelled"]),
        # A task's first state call is after its first attempt (its creation is its Running): one that fails
        ("set_task_run_states", ["Running", "Retrying", "Cancelled"]),
    ],
)
def test_sigterm_during_a_task_run_report_finishes_the_call_then_ends_the_task_run_cancelled(
    baton_home: Path, sigterm_guard: None, call: str, task_states: list[str]
) -> None:
    # Given a SIGTERM that arrives while a task's report to the API is under way
    api = SigtermDuring(flow_read(NAPPING, "napping"), call, {"fail_first": call == "set_task_run_states"})

    # Then the report is not cut in half, the flow stops, and no task run is left open
    assert run_in_process(api, heartbeat=60) == 1
    assert api.states[-1] == ("Failed", TERMINATED)
    assert [t["states"] for t in api.task_runs.values()] == [task_states]


def test_a_task_run_whose_creation_answer_was_lost_is_adopted_not_created_twice(baton_home: Path) -> None:
    api = FakeApi(flow_read(HELLO, "hello"))
    api.apply_then_fail["create_task_run"].append(ServerUnavailableError("connection reset"))

    assert run_in_process(api) == 0
    assert [(t["name"], t["states"]) for t in api.task_runs.values()] == [("greet", ["Running", "Success"])]


def test_a_stop_inside_a_deferred_block_is_raised_when_the_block_ends(sigterm_guard: None) -> None:
    from baton.engine.cancel import CancelSignal
    from baton.sdk.context import FlowRunCancelled

    cancel = CancelSignal()
    cancel.install()
    finished = []
    try:
        with pytest.raises(FlowRunCancelled, match="SIGTERM"), cancel:
            with cancel.deferred():
                sigterm_main_thread()
                for _ in range(1000):  # bytecodes enough for the handler to have run
                    pass
                finished.append("the call")
            pytest.fail("the stop must be raised as the deferred block ends")
    finally:
        cancel.uninstall()
    assert finished == ["the call"]


def test_a_lost_creation_does_not_adopt_a_task_run_an_earlier_attempt_left_running(baton_home: Path) -> None:
    # Given a task run of the same name left Running by an earlier attempt of the run (its process was killed)
    api = FakeApi(flow_read(HELLO, "hello"))
    stale = api.create_task_run("run-1", "greet", "Running")
    api.task_runs[stale.id]["created"] -= timedelta(minutes=10)
    api.calls.clear()
    # When this attempt's creation of that task fails in a way that may have reached the server, but did not
    api.fail["create_task_run"].append(ServerUnavailableError("connection reset"))

    assert run_in_process(api) == 0
    # Then the retry does not take the earlier attempt's task run for its own: it creates one, which ends Success
    assert api.task_runs[stale.id]["states"] == ["Running"]
    assert sorted(t["states"][-1] for t in api.task_runs.values()) == ["Running", "Success"]
    assert len(api.task_runs) == 2


def test_a_run_cancelled_while_its_flow_loads_slowly_ends_before_its_flow_is_called(
    baton_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a run started (Running) whose flow takes a while to load, and a user who cancels it meanwhile
    api = FakeApi(flow_read(HELLO, "hello"), parameters={"name": "Ada"})
    real_load = runner_module.load_flow

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        api.state = "Cancelling"
        api.states.append(("Cancelling", "cancelled by a user"))
        time.sleep(runner_module.RECHECK_AFTER_LOAD_SECONDS + 0.1)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(runner_module, "load_flow", slow_load)

    # When the engine runs it (heartbeats far apart: only the check after the load can see the cancel in time)
    exit_code = run_in_process(api, heartbeat=30)

    # Then the flow is never called, and the run ends Cancelled
    assert exit_code == 0
    assert [name for name, _ in api.states] == ["Submitted", "Running", "Cancelling", "Cancelled"]
    assert api.states[-1][1] == "cancelled before it started"
    assert api.task_runs == {}


def test_a_quick_load_asks_nothing_more_before_the_flow_runs(baton_home: Path) -> None:
    api = FakeApi(flow_read(HELLO, "hello"), parameters={"name": "Ada"})

    assert run_in_process(api, heartbeat=30) == 0

    assert "flow_run_heartbeat" not in api.calls

"""Task-run states shipped in batches by the flow-run process (engine/state_batches.py, issue 14): the task never
waits for the API, a state's time is when it happened, order is kept, and a flush sends everything."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from baton.engine.reporter import ApiTaskRunReporter
from baton.engine.state_batches import StateBatches
from baton.exceptions import ClientError
from baton.schemas.responses import TaskRunRead, TaskRunStatesSet
from baton.schemas.states import TaskRunState


class SlowApi:
    """Records each batch; the first request waits until released, so later states queue behind it."""

    def __init__(self, hold_first: bool = False, refuse: bool = False) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.release = threading.Event()
        if not hold_first:
            self.release.set()
        self.refuse = refuse
        self.created = 0
        self.entered = threading.Event()

    def set_task_run_states(self, flow_run_id: str, states: list[dict[str, Any]]) -> TaskRunStatesSet:
        self.entered.set()
        self.release.wait(10)
        if self.refuse:
            raise ClientError(422, "refused")
        self.batches.append(list(states))
        return TaskRunStatesSet(applied=len(states))

    def create_task_run(self, flow_run_id: str, task_name: str, state: str = "Pending", message: Any = None) -> Any:
        self.created += 1
        now = datetime.now(UTC)
        return TaskRunRead(
            id=f"t{self.created}", flow_run_id=flow_run_id, task_name=task_name, state=str(state), message=None,
            attempt=1, start_time=None, end_time=None, created=now,
        )  # fmt: skip


def test_states_queued_while_a_request_is_under_way_share_the_next_one_in_order() -> None:
    api = SlowApi(hold_first=True)
    batches = StateBatches(api, "run-1")  # type: ignore[arg-type]  # the fake has what it calls

    batches.add({"task_run_id": "a", "state": "Running"})
    assert api.entered.wait(10)  # the first request is under way
    for name in ("Retrying", "Running", "Success"):
        batches.add({"task_run_id": "a", "state": name})
    api.release.set()

    assert batches.flush(timeout=10)
    assert [[s["state"] for s in batch] for batch in api.batches] == [["Running"], ["Retrying", "Running", "Success"]]


def test_a_refused_batch_is_logged_and_the_next_still_goes(caplog: pytest.LogCaptureFixture) -> None:
    api = SlowApi(refuse=True)
    batches = StateBatches(api, "run-1", retry_seconds=0.1)  # type: ignore[arg-type]

    batches.add({"task_run_id": "a", "state": "Running"})
    assert batches.flush(timeout=10)
    api.refuse = False
    batches.add({"task_run_id": "a", "state": "Success"})

    assert batches.flush(timeout=10)
    assert "Could not record 1 task-run states" in caplog.text
    assert [[s["state"] for s in batch] for batch in api.batches] == [["Success"]]


def test_the_reporter_returns_before_the_api_answers_and_records_when_the_state_happened() -> None:
    api = SlowApi(hold_first=True)
    moments = iter([datetime(2026, 12, 6, 10, 0, second, tzinfo=UTC) for second in range(60)])
    reporter = ApiTaskRunReporter(api, "run-1", clock=lambda: next(moments))  # type: ignore[arg-type]
    task_run_id = reporter.task_run_created("greet")

    reporter.task_run_state(task_run_id, TaskRunState.SUCCESS)  # returns though the API holds its answer
    reporter.task_run_state(task_run_id, TaskRunState.SUCCESS, "again")
    api.release.set()
    reporter.flush()

    sent = [state for batch in api.batches for state in batch]
    assert [(s["state"], s["message"]) for s in sent] == [("Success", None), ("Success", "again")]
    assert sent[0]["at"] == "2026-12-06T10:00:01+00:00"


def test_end_open_ends_what_is_open_and_sends_everything_before_returning() -> None:
    api = SlowApi()
    reporter = ApiTaskRunReporter(api, "run-1")  # type: ignore[arg-type]
    done, left = reporter.task_run_created("done"), reporter.task_run_created("left")
    reporter.task_run_state(done, TaskRunState.SUCCESS)

    reporter.end_open(TaskRunState.CANCELLED, "flow run cancelled")
    reporter.task_run_state(left, TaskRunState.SUCCESS)  # a thread finishing after the stop: not sent

    sent = [(s["task_run_id"], s["state"]) for batch in api.batches for s in batch]
    assert sent == [(done, "Success"), (left, "Cancelled")]


# --- a map's children created together ------------------------------------------------------------------------


def test_a_maps_children_are_created_in_one_request_and_a_lost_answer_is_adopted_not_repeated() -> None:
    from baton import flow, task
    from baton.exceptions import ServerUnavailableError
    from engine.fakes import FakeApi, flow_read

    api = FakeApi(flow_read("", "unused"))
    api.apply_then_fail["create_task_runs"].append(ServerUnavailableError("connection reset"))
    reporter = ApiTaskRunReporter(api, "run-1")  # type: ignore[arg-type]

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def doubled() -> list[int]:
        return [future.result() for future in double.map([1, 2, 3])]

    assert doubled.run({}, reporter) == [2, 4, 6]
    reporter.flush()

    assert api.calls.count("create_task_runs") == 1  # the answer was lost: found again, not created twice
    assert "create_task_run" not in api.calls
    assert [(t["name"], t["states"]) for t in api.task_runs.values()] == [
        (f"double[{i}]", ["Pending", "Running", "Success"]) for i in range(3)
    ]


def test_a_message_the_api_would_refuse_is_made_storable_and_cut_not_left_to_sink_its_batch() -> None:
    from baton.engine.limits import MAX_MESSAGE_LENGTH

    api = SlowApi()
    reporter = ApiTaskRunReporter(api, "run-1")  # type: ignore[arg-type]
    task_run_id = reporter.task_run_created("greet")

    alone: list[str] = []
    api.set_task_run_state = lambda task_run_id, state, message=None, attempt=None: alone.append(message)  # type: ignore[method-assign]

    reporter.task_run_state(task_run_id, TaskRunState.FAILED, "nul\x00 and \udcff " + "x" * 200_000)
    reporter.task_run_state(task_run_id, TaskRunState.FAILED, "short\x00")
    reporter.flush()

    [long] = alone
    assert len(long) == MAX_MESSAGE_LENGTH
    assert long.startswith("nul\ufffd and \\udcff ")
    assert [[s["message"] for s in batch] for batch in api.batches] == [["short\ufffd"]]


def test_a_message_too_long_for_a_batch_goes_alone_in_its_place() -> None:
    from baton.engine.limits import MAX_BATCH_MESSAGE_LENGTH

    api = SlowApi(hold_first=True)
    sent: list[tuple[str, str]] = []
    api.set_task_run_state = lambda task_run_id, state, message=None, attempt=None: sent.append(("alone", task_run_id))  # type: ignore[method-assign]
    batches = StateBatches(api, "run-1")  # type: ignore[arg-type]
    batches.add({"task_run_id": "a", "state": "Running"})
    assert api.entered.wait(10)
    batches.add({"task_run_id": "b", "state": "Running"})
    batches.add({"task_run_id": "c", "state": "Failed", "message": "m" * (MAX_BATCH_MESSAGE_LENGTH + 1)})
    batches.add({"task_run_id": "d", "state": "Running"})
    api.release.set()

    assert batches.flush(timeout=10)
    assert [[s["task_run_id"] for s in batch] for batch in api.batches] == [["a"], ["b"], ["d"]]
    assert sent == [("alone", "c")]


class OldServer(SlowApi):
    """A server from before the batch routes: 404 for them, the one-at-a-time routes work."""

    def __init__(self) -> None:
        super().__init__()
        self.one_by_one: list[tuple[str, str]] = []

    def set_task_run_states(self, flow_run_id: str, states: list[dict[str, Any]]) -> TaskRunStatesSet:
        from baton.exceptions import NotFoundError

        raise NotFoundError(404, "Not Found")

    def create_task_runs(self, flow_run_id: str, task_runs: list[dict[str, Any]]) -> Any:
        from baton.exceptions import NotFoundError

        raise NotFoundError(404, "Not Found")

    def set_task_run_state(self, task_run_id: str, state: str, message: Any = None, attempt: Any = None) -> Any:
        self.one_by_one.append((task_run_id, state))


def test_against_a_server_without_the_batch_routes_each_state_and_task_run_goes_on_its_own() -> None:
    api = OldServer()
    reporter = ApiTaskRunReporter(api, "run-1")  # type: ignore[arg-type]

    ids = reporter.task_runs_created(["m[0]", "m[1]"])
    for task_run_id in ids:
        reporter.task_run_state(task_run_id, TaskRunState.SUCCESS)
    reporter.flush()

    assert ids == ["t1", "t2"]
    assert api.one_by_one == [("t1", "Success"), ("t2", "Success")]

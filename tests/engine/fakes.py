"""An in-memory stand-in for ``baton.client.Client``: just the calls the engine makes, with the real state
machine, and failures that tests can queue per call."""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from baton.exceptions import ConflictError, IllegalTransitionError
from baton.schemas.core import RunConfig, Storage, StorageType
from baton.schemas.responses import (
    FlowRead,
    FlowRunHeartbeatResponse,
    FlowRunRead,
    FlowRunWithFlow,
    LogsWritten,
    StateChanged,
    StateRead,
    TaskRunRead,
    TaskRunStatesSet,
)
from baton.schemas.states import check_transition

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def flow_read(source: str, entrypoint: str, storage: Storage | None = None) -> FlowRead:
    return FlowRead(
        id="flow-1",
        name=entrypoint,
        version=1,
        entrypoint=entrypoint,
        storage=storage or Storage(type=StorageType.API),
        run_config=RunConfig(),
        labels=[],
        parameters_schema={},
        tasks=[],
        schedule=None,
        description=None,
        source_filename=f"/registered/on/another/host/{entrypoint}.py",
        created=NOW,
        source=source,
    )


class FakeApi:
    """Holds one flow run; every call is recorded in ``calls``; ``fail[call]`` holds exceptions to raise first."""

    def __init__(self, flow: FlowRead, state: str = "Submitted", parameters: dict[str, Any] | None = None) -> None:
        self.flow = flow
        self.state = state
        self.states: list[tuple[str, str | None]] = [(state, None)]
        self.parameters = parameters or {}
        self.task_runs: dict[str, dict[str, Any]] = {}
        self.logs: list[dict[str, Any]] = []
        self.batch_sizes: list[int] = []
        self.lines_with_states: list[int] = []  # lines stored with a state change, per change
        self.calls: list[str] = []
        self.fail: dict[str, list[BaseException]] = defaultdict(list)
        # Applied although the call then fails: the answer is lost on the way back.
        self.apply_then_fail: dict[str, list[BaseException]] = defaultdict(list)
        # Setting one of these states always raises the exception given.
        self.refuse_states: dict[str, BaseException] = {}
        self._lock = threading.Lock()

    def _enter(self, call: str) -> None:
        with self._lock:
            self.calls.append(call)
            if self.fail[call]:
                raise self.fail[call].pop(0)

    def get_flow_run(self, flow_run_id: str) -> FlowRunRead:
        self._enter("get_flow_run")
        return FlowRunRead(
            id=flow_run_id,
            name="fake-run",
            flow_id=self.flow.id,
            flow_name=self.flow.name,
            flow_version=self.flow.version,
            state=self.state,
            state_message=self.states[-1][1],
            labels=[],
            parameters=self.parameters,
            agent_id="agent-1",
            scheduled_start_time=NOW,
            created=NOW,
            start_time=None,
            end_time=None,
            deployment=None,
            run_config=RunConfig(),
            states=[StateRead(name=name, message=message, timestamp=NOW) for name, message in self.states],
        )

    def get_flow(self, flow_id: str, include_source: bool = False) -> FlowRead:
        self._enter("get_flow")
        return self.flow

    def get_flow_run_with_flow(self, flow_run_id: str) -> FlowRunWithFlow:
        # The two reads it stands for, so that their scripted failures and subclasses' answers apply as before.
        run = self.get_flow_run(flow_run_id)
        return FlowRunWithFlow(flow_run=run, flow=self.get_flow(run.flow_id, include_source=True))

    def start_flow_run(self, flow_run_id: str, wait_seconds: float = 0.0) -> FlowRunWithFlow:
        """The server's ``/start``: Running, then the run with its flow (the wait for Submitted is not modelled).
        Scripted failures and refusals of ``set_flow_run_state`` and of the reads apply, as their calls."""
        self._enter("start_flow_run")
        self.change_flow_run_state(flow_run_id, "Running")
        return self.get_flow_run_with_flow(flow_run_id)

    def set_flow_run_state(
        self, flow_run_id: str, name: str, message: str | None = None, data: dict[str, Any] | None = None
    ) -> FlowRunRead:
        self._enter("set_flow_run_state")
        if name in self.refuse_states:
            raise self.refuse_states[name]
        try:
            check_transition(self.state, name)
        except IllegalTransitionError as exc:
            raise ConflictError(409, str(exc), self.state) from None
        self.state = str(name)
        self.states.append((str(name), message))
        if self.apply_then_fail["set_flow_run_state"]:
            raise self.apply_then_fail["set_flow_run_state"].pop(0)
        return self.get_flow_run(flow_run_id)

    def change_flow_run_state(
        self,
        flow_run_id: str,
        name: str,
        message: str | None = None,
        *,
        logs: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> StateChanged:
        """The engine's state changes, scripted as ``set_flow_run_state`` (the server's wait is not modelled). The
        lines sent with a change are stored when it is (``logs``; ``lines_with_states`` counts them), as the server
        stores both in one transaction."""
        states_before = len(self.states)
        try:
            run = self.set_flow_run_state(flow_run_id, name, message)
        finally:
            if logs and len(self.states) > states_before:
                with self._lock:
                    self.logs.extend(logs)
                    self.lines_with_states.append(len(logs))
        return StateChanged(id=run.id, state=run.state, state_message=run.state_message)

    def flow_run_heartbeat(self, flow_run_id: str) -> FlowRunHeartbeatResponse:
        self._enter("flow_run_heartbeat")
        return FlowRunHeartbeatResponse(state=self.state)

    def create_task_run(
        self, flow_run_id: str, task_name: str, state: str = "Pending", message: str | None = None
    ) -> TaskRunRead:
        self._enter("create_task_run")
        task_run_id = uuid.uuid4().hex
        created = datetime.now(UTC)  # the server's clock: a reporter adopts only task runs created since it started
        self.task_runs[task_run_id] = {"name": task_name, "states": [str(state)], "attempt": 1, "created": created}
        if self.apply_then_fail["create_task_run"]:
            raise self.apply_then_fail["create_task_run"].pop(0)
        return self._task_run(flow_run_id, task_run_id)

    def create_task_runs(self, flow_run_id: str, task_runs: list[dict[str, Any]]) -> list[TaskRunRead]:
        self._enter("create_task_runs")
        created = []
        for item in task_runs:
            task_run_id = uuid.uuid4().hex
            record = {
                "name": item["task_name"],
                "states": [str(item["state"])],
                "attempt": 1,
                "created": datetime.now(UTC),
            }
            self.task_runs[task_run_id] = record
            created.append(self._task_run(flow_run_id, task_run_id))
        if self.apply_then_fail["create_task_runs"]:
            raise self.apply_then_fail["create_task_runs"].pop(0)
        return created

    def set_task_run_state(
        self, task_run_id: str, state: str, message: str | None = None, attempt: int | None = None
    ) -> TaskRunRead:
        self._enter("set_task_run_state")
        self.task_runs[task_run_id]["states"].append(str(state))
        self.task_runs[task_run_id]["attempt"] = attempt or 1
        return self._task_run("run-1", task_run_id)

    def set_task_run_states(self, flow_run_id: str, states: list[dict[str, Any]]) -> TaskRunStatesSet:
        self._enter("set_task_run_states")
        for item in states:
            record = self.task_runs[item["task_run_id"]]
            record["states"].append(str(item["state"]))
            record["attempt"] = item.get("attempt") or 1
        return TaskRunStatesSet(applied=len(states))

    def list_task_runs(self, flow_run_id: str) -> list[TaskRunRead]:
        self._enter("list_task_runs")
        return [self._task_run(flow_run_id, task_run_id) for task_run_id in self.task_runs]

    def _task_run(self, flow_run_id: str, task_run_id: str) -> TaskRunRead:
        record = self.task_runs[task_run_id]
        return TaskRunRead(
            id=task_run_id,
            flow_run_id=flow_run_id,
            task_name=record["name"],
            state=record["states"][-1],
            message=None,
            attempt=record["attempt"],
            start_time=None,
            end_time=None,
            created=record["created"],
        )

    def write_logs(self, flow_run_id: str, logs: list[dict[str, Any]]) -> LogsWritten:
        self._enter("write_logs")
        with self._lock:
            self.logs.extend(logs)
            self.batch_sizes.append(len(logs))
        return LogsWritten(written=len(logs))

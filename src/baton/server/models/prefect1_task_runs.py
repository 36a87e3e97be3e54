"""Task runs of Prefect 1 runs (issue 13): Baton task runs, with Prefect 1's task, map index, state and version beside.

A run gets one task run per task of its flow version when it is created (map index -1, Pending), as Prefect Server
1's database trigger made them; a mapped task's children come later, one per index, from the flow runner's
``get_or_create_task_run_info``. Their Baton task name is the task's slug, a child's with its index
(``add-1[3]``), so ``baton runs get`` lists them apart.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.schemas.states import StateName, TaskRunState
from baton.server.database.orm import FlowRun, Prefect1TaskRun, TaskRun, new_id, table_of, utcnow
from baton.server.models import prefect1_states as states
from baton.server.models.errors import Conflict, InvalidRequest, ObjectNotFound
from baton.server.models.ids import checked_id
from baton.server.models.prefect1_flows import checked_text

_T = TaskRunState
_FINAL = frozenset({_T.SUCCESS, _T.FAILED, _T.CANCELLED})
_TASK_RUNS = table_of(TaskRun)
_SIDES = table_of(Prefect1TaskRun)
MAX_MAP_INDEX = 10_000_000


def _name(slug: str, map_index: int) -> str:
    return (slug if map_index < 0 else f"{slug}[{map_index}]")[:500]


def _rows(
    tenant_id: str, flow_run_id: str, task_id: str, slug: str, map_index: int, now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    task_run_id = new_id()
    created = states.make("Pending", "Task run created")
    base = {
        "id": task_run_id,
        "tenant_id": tenant_id,
        "flow_run_id": flow_run_id,
        "task_name": _name(slug, map_index),
        "state": _T.PENDING.value,
        "message": "Task run created",
        "attempt": 1,
        "start_time": None,
        "end_time": None,
        "created": now,
    }
    side = {
        "task_run_id": task_run_id,
        "tenant_id": tenant_id,
        "flow_run_id": flow_run_id,
        "task_id": task_id,
        "task_slug": slug[:500],
        "map_index": map_index,
        "version": 0,
        "state": "Pending",
        "serialized_state": created,
        "state_start_time": None,
        "heartbeat": None,
    }
    return base, side


def create_for_run(
    session: Session, tenant_id: str, flow_run_id: str, tasks: list[dict[str, Any]], max_task_runs: int, now: datetime
) -> None:
    """A Pending task run per task of the flow version (its tasks carry the ids registration gave them)."""
    if len(tasks) > max_task_runs:
        raise Conflict(
            f"the flow has {len(tasks)} tasks, more than the server's limit of task runs per run "
            "(BATON__SERVER__MAX_TASK_RUNS_PER_RUN)"
        )
    pairs = [_rows(tenant_id, flow_run_id, str(task["id"]), str(task["slug"]), -1, now) for task in tasks]
    if pairs:
        connection = session.connection()
        connection.execute(_TASK_RUNS.insert(), [base for base, _side in pairs])
        connection.execute(_SIDES.insert(), [side for _base, side in pairs])


def get(session: Session, tenant_id: str, task_run_id: str) -> tuple[TaskRun, Prefect1TaskRun]:
    task_run_id = checked_id("task run", task_run_id)
    found = session.execute(
        select(TaskRun, Prefect1TaskRun)
        .join(Prefect1TaskRun, Prefect1TaskRun.task_run_id == TaskRun.id)
        .where(TaskRun.tenant_id == tenant_id, TaskRun.id == task_run_id)
        .execution_options(populate_existing=True)
    ).first()
    if found is None:
        raise ObjectNotFound(f"task run {task_run_id} not found")
    return found[0], found[1]


def _find(session: Session, flow_run_id: str, task_id: str, map_index: int) -> Prefect1TaskRun | None:
    return session.scalar(
        select(Prefect1TaskRun).where(
            Prefect1TaskRun.flow_run_id == flow_run_id,
            Prefect1TaskRun.task_id == task_id,
            Prefect1TaskRun.map_index == map_index,
        )
    )


def get_or_create(
    session: Session, tenant_id: str, flow_run_id: str, task_id: str, map_index: int, max_task_runs: int
) -> Prefect1TaskRun:
    """The run's task run of ``task_id`` at ``map_index``, made when a mapped task's child first asks for it.

    Raises:
        ObjectNotFound: no such run, or the task is not one of the run's flow (its parent task run is missing).
        IntegrityError: a concurrent call made it first (retry in a new transaction).
    """
    flow_run_id = checked_id("flow run", flow_run_id)
    task_id = checked_id("task", task_id)
    if not -1 <= map_index <= MAX_MAP_INDEX:
        raise InvalidRequest(f"map_index must be between -1 and {MAX_MAP_INDEX}")
    run_tenant = session.scalar(select(FlowRun.tenant_id).where(FlowRun.id == flow_run_id))
    if run_tenant != tenant_id:
        raise ObjectNotFound(f"flow run {flow_run_id} not found")
    found = _find(session, flow_run_id, task_id, map_index)
    if found is not None:
        return found
    parent = _find(session, flow_run_id, task_id, -1)
    if parent is None:
        raise ObjectNotFound(f"task {task_id} is not a task of flow run {flow_run_id}'s flow")
    count = session.scalar(select(func.count()).select_from(TaskRun).where(TaskRun.flow_run_id == flow_run_id)) or 0
    if count >= max_task_runs:
        raise Conflict(
            f"flow run {flow_run_id} has {count} task runs, the server's limit per run "
            "(BATON__SERVER__MAX_TASK_RUNS_PER_RUN)"
        )
    base, side = _rows(tenant_id, flow_run_id, task_id, parent.task_slug, map_index, utcnow())
    try:
        with session.begin_nested():
            connection = session.connection()
            connection.execute(_TASK_RUNS.insert(), base)
            connection.execute(_SIDES.insert(), side)
    except IntegrityError:
        found = _find(session, flow_run_id, task_id, map_index)
        if found is None:
            raise
        return found
    created = _find(session, flow_run_id, task_id, map_index)
    assert created is not None
    return created


class TaskVersionLocked(Conflict):
    """A task runner's state change named a version the task run has passed (VERSION_LOCKING_ERROR)."""


def set_state(session: Session, tenant_id: str, task_run_id: str, state: Any, version: int | None) -> int:
    """Set a Prefect 1 state on a task run; returns its new version.

    Raises:
        TaskVersionLocked: ``version`` is not the task run's.
        Conflict: a Running state while the flow run is not Running (Prefect Server 1's rule: how a cancelled run's
            tasks not yet started are stopped).
    """
    checked = states.checked(state, states.TASK_RUN_STATES)
    task_run, side = get(session, tenant_id, task_run_id)
    if version is not None and states.is_running(checked) and version != side.version:  # as for flow runs
        raise TaskVersionLocked(
            f"State update failed: task run {task_run.id} is at version {side.version}, not {version}"
        )
    kind = states.type_of(checked)
    target = states.TASK_RUN_STATES[kind]
    if kind == "Running":
        run_state = session.scalar(select(FlowRun.state).where(FlowRun.id == task_run.flow_run_id))
        if run_state != StateName.RUNNING:
            raise Conflict(
                f"State update failed for task run ID {task_run.id}: provided a running state but associated flow "
                f"run {task_run.flow_run_id} is not in a running state."
            )
    # Cached inputs stay with the task run until a state brings its own (Prefect Server 1 carried them forward).
    if not checked.get("cached_inputs") and side.serialized_state.get("cached_inputs"):
        checked = {**checked, "cached_inputs": side.serialized_state["cached_inputs"]}
    now = utcnow()
    values: dict[str, Any] = {}
    if target is not None:
        values = {"state": target.value, "message": states.message_of(checked)}
        if target == _T.RUNNING:
            values["start_time"] = task_run.start_time or now
            if task_run.state == _T.RETRYING:
                values["attempt"] = task_run.attempt + 1
        if target in _FINAL:
            values["end_time"] = now
        session.execute(update(TaskRun).where(TaskRun.id == task_run.id).values(values))
    new_version = side.version + 1
    session.execute(
        update(Prefect1TaskRun)
        .where(Prefect1TaskRun.task_run_id == task_run.id)
        .values(
            version=new_version,
            state=kind,
            serialized_state=checked,
            state_start_time=states.start_time(checked),
            heartbeat=now if kind == "Running" else side.heartbeat,
        )
    )
    return new_version


def cancel_unfinished(session: Session, flow_run_id: str, state: dict[str, Any]) -> None:
    """A run Cancelled cancels its task runs not finished (Prefect Server 1 did the same)."""
    unfinished = [state.value for state in (_T.PENDING, _T.RUNNING, _T.RETRYING)]
    ids = list(
        session.scalars(select(TaskRun.id).where(TaskRun.flow_run_id == flow_run_id, TaskRun.state.in_(unfinished)))
    )
    if not ids:
        return
    now = utcnow()
    session.execute(
        update(TaskRun)
        .where(TaskRun.id.in_(ids))
        .values(state=_T.CANCELLED.value, message=states.message_of(state), end_time=now)
    )
    session.execute(
        update(Prefect1TaskRun)
        .where(Prefect1TaskRun.task_run_id.in_(ids))
        .values(
            version=Prefect1TaskRun.version + 1,
            state=states.type_of(state),
            serialized_state=state,
            state_start_time=None,
        )
    )


def heartbeat(session: Session, tenant_id: str, task_run_id: str) -> None:
    """A task run's sign of life vouches for its flow run too."""
    task_run, _side = get(session, tenant_id, task_run_id)
    now = utcnow()
    session.execute(update(Prefect1TaskRun).where(Prefect1TaskRun.task_run_id == task_run.id).values(heartbeat=now))
    session.execute(update(FlowRun).where(FlowRun.id == task_run.flow_run_id).values(heartbeat_at=now))


def rename(session: Session, tenant_id: str, task_run_id: str, name: str) -> None:
    if not checked_text("name", name, 500):
        raise InvalidRequest("a task run's name must not be empty")
    task_run, _side = get(session, tenant_id, task_run_id)
    task_run.task_name = name

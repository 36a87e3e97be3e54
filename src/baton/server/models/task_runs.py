"""Task runs recorded by flow-run processes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, literal, select, update
from sqlalchemy.orm import Session

from baton.schemas.actions import TaskRunCreate, TaskRunStateItem
from baton.schemas.responses import TaskRunRead, TaskRunStatesSet
from baton.schemas.states import TaskRunState
from baton.server.database.orm import FlowRun, TaskRun, UTCDateTime, new_id, table_of, utcnow
from baton.server.models.errors import Conflict, ObjectNotFound
from baton.server.models.ids import checked_id

_TASK_FINAL = {TaskRunState.SUCCESS, TaskRunState.FAILED, TaskRunState.CANCELLED}


# Every task of every run goes through these: prebuilt Core statements on the session's connection (no ORM objects
# nor unit-of-work flushes: ~1 ms less per task-run request than ORM rows).
_TABLE = table_of(TaskRun)
_RUNS = table_of(FlowRun)
_COUNT_OF_RUN = select(func.count()).select_from(_TABLE).where(_TABLE.c.flow_run_id == bindparam("flow_run_id"))
_INSERT = _TABLE.insert()
_READ_COLUMNS = [getattr(_TABLE.c, name) for name in TaskRunRead.model_fields]


def create_task_run(
    session: Session,
    tenant_id: str,
    flow_run_id: str,
    task_name: str,
    state: TaskRunState,
    message: str | None,
    max_task_runs: int = 10_000,
) -> TaskRunRead:
    """Record a task run of ``flow_run_id`` (the caller checked that the run is the tenant's).

    Raises:
        Conflict: the run has ``max_task_runs`` task runs already (409): a flow looping over tasks is bounded too.
    """
    [read] = create_task_runs(
        session,
        tenant_id,
        flow_run_id,
        [TaskRunCreate(task_name=task_name, state=state, message=message)],
        max_task_runs,
    )
    return read


def create_task_runs(
    session: Session, tenant_id: str, flow_run_id: str, items: Sequence[TaskRunCreate], max_task_runs: int = 10_000
) -> list[TaskRunRead]:
    """Record task runs of ``flow_run_id`` in one statement (a map's children), all or none, in ``items``' order.

    Raises:
        Conflict: they would take the run past ``max_task_runs`` task runs (409).
    """
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        # Concurrent creations count one at a time (as log batches do): two batches of 1,000 must not both pass the
        # limit. SQLite has one writer at a time.
        connection.execute(select(_RUNS.c.id).where(_RUNS.c.id == flow_run_id).with_for_update())
    count = connection.execute(_COUNT_OF_RUN, {"flow_run_id": flow_run_id}).scalar() or 0
    if count + len(items) > max_task_runs:
        raise Conflict(
            f"flow run {flow_run_id} has {count} task runs and {len(items)} more would pass the server's limit of "
            f"{max_task_runs} per run (BATON__SERVER__MAX_TASK_RUNS_PER_RUN)"
        )
    now = utcnow()
    reads = [
        TaskRunRead(
            id=new_id(),
            flow_run_id=flow_run_id,
            task_name=item.task_name,
            state=item.state.value,
            message=item.message,
            attempt=1,
            start_time=now if item.state == TaskRunState.RUNNING else None,
            end_time=None,
            # A microsecond apart: lists are ordered by creation, and a map's children must read in their order.
            created=now + timedelta(microseconds=index),
        )
        for index, item in enumerate(items)
    ]
    connection.execute(_INSERT, [{**read.model_dump(), "tenant_id": tenant_id} for read in reads])
    return reads


def set_task_run_state(
    session: Session,
    tenant_id: str,
    task_run_id: str,
    state: TaskRunState,
    message: str | None,
    attempt: int | None,
) -> TaskRunRead:
    """Move a task run of the tenant to ``state``, in one statement; its answer is the row as written."""
    task_run_id = checked_id("task run", task_run_id)
    statement = (
        update(_TABLE)
        .where(_TABLE.c.tenant_id == tenant_id, _TABLE.c.id == task_run_id)
        .values(_state_values(state, message, attempt, utcnow()))
        .returning(*_READ_COLUMNS)
    )
    row = session.connection().execute(statement).mappings().first()
    if row is None:
        raise ObjectNotFound(f"task run {task_run_id} not found")
    return TaskRunRead.model_validate(dict(row))


def set_task_run_states(
    session: Session, tenant_id: str, flow_run_id: str, states: Sequence[TaskRunStateItem]
) -> TaskRunStatesSet:
    """Apply a batch of states to task runs of ``flow_run_id``, in order, in the caller's one transaction (one
    commit for the batch: what makes a batch cheaper than its requests one by one). A state names when it was
    entered (``at``, the flow process's clock), kept no later than the server's now: a batch sent late must not
    put a task's start at the moment it was shipped. Task runs not of this run are skipped and named."""
    connection = session.connection()
    now = utcnow()
    applied, missing = 0, []
    for item in states:
        try:
            task_run_id = checked_id("task run", item.task_run_id)
        except ObjectNotFound:
            missing.append(item.task_run_id)
            continue
        when = now if item.at is None else min(item.at, now)
        statement = (
            update(_TABLE)
            .where(_TABLE.c.tenant_id == tenant_id, _TABLE.c.flow_run_id == flow_run_id, _TABLE.c.id == task_run_id)
            .values(_state_values(item.state, item.message, item.attempt, when))
        )
        if connection.execute(statement).rowcount:
            applied += 1
        else:
            missing.append(task_run_id)
    return TaskRunStatesSet(applied=applied, missing=missing)


def _state_values(state: TaskRunState, message: str | None, attempt: int | None, when: datetime) -> dict[str, Any]:
    values: dict[str, Any] = {"state": state.value, "message": message}
    if attempt is not None:
        values["attempt"] = attempt
    if state == TaskRunState.RUNNING:
        values["start_time"] = func.coalesce(_TABLE.c.start_time, literal(when, UTCDateTime()))
    if state in _TASK_FINAL:
        values["end_time"] = when
    return values


def count_task_runs(session: Session, tenant_id: str, flow_run_id: str) -> int:
    """How many task runs ``flow_run_id`` of the tenant has: one count on the flow-run index, so that a page that
    loaded one page of them (``pages.task_runs_page``) can say "the first N of M"."""
    mine = (_TABLE.c.tenant_id == tenant_id, _TABLE.c.flow_run_id == flow_run_id)
    return int(session.connection().execute(select(func.count()).select_from(_TABLE).where(*mine)).scalar() or 0)


def to_read(task_run: TaskRun) -> TaskRunRead:
    return TaskRunRead(
        id=task_run.id,
        flow_run_id=task_run.flow_run_id,
        task_name=task_run.task_name,
        state=task_run.state,
        message=task_run.message,
        attempt=task_run.attempt,
        start_time=task_run.start_time,
        end_time=task_run.end_time,
        created=task_run.created,
    )

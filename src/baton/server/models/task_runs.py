"""Task runs recorded by flow-run processes."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from baton.schemas.responses import TaskRunRead
from baton.schemas.states import TaskRunState
from baton.server.database.orm import TaskRun, utcnow
from baton.server.models.errors import Conflict, ObjectNotFound
from baton.server.models.ids import checked_id

_TASK_FINAL = {TaskRunState.SUCCESS, TaskRunState.FAILED, TaskRunState.CANCELLED}


def create_task_run(
    session: Session,
    tenant_id: str,
    flow_run_id: str,
    task_name: str,
    state: TaskRunState,
    message: str | None,
    max_task_runs: int = 10_000,
) -> TaskRun:
    """Record a task run of ``flow_run_id``.

    Raises:
        Conflict: the run has ``max_task_runs`` task runs already (409): a flow looping over tasks is bounded too.
    """
    count = session.scalar(select(func.count()).select_from(TaskRun).where(TaskRun.flow_run_id == flow_run_id)) or 0
    if count >= max_task_runs:
        raise Conflict(
            f"flow run {flow_run_id} has {count} task runs, the server's limit per run "
            "(BATON__SERVER__MAX_TASK_RUNS_PER_RUN)"
        )
    now = utcnow()
    task_run = TaskRun(
        tenant_id=tenant_id,
        flow_run_id=flow_run_id,
        task_name=task_name,
        state=state.value,
        message=message,
        attempt=1,
        start_time=now if state == TaskRunState.RUNNING else None,
        created=now,
    )
    session.add(task_run)
    session.flush()
    return task_run


def get_task_run(session: Session, tenant_id: str, task_run_id: str) -> TaskRun:
    task_run_id = checked_id("task run", task_run_id)
    task_run = session.scalar(select(TaskRun).where(TaskRun.tenant_id == tenant_id, TaskRun.id == task_run_id))
    if task_run is None:
        raise ObjectNotFound(f"task run {task_run_id} not found")
    return task_run


def set_task_run_state(
    session: Session, task_run: TaskRun, state: TaskRunState, message: str | None, attempt: int | None
) -> TaskRun:
    now = utcnow()
    task_run.state = state.value
    task_run.message = message
    if attempt is not None:
        task_run.attempt = attempt
    if state == TaskRunState.RUNNING and task_run.start_time is None:
        task_run.start_time = now
    if state in _TASK_FINAL:
        task_run.end_time = now
    session.flush()
    return task_run


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

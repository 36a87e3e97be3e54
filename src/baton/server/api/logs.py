"""Logs and task runs of a flow run."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request

from baton.schemas.actions import MAX_INT, LogsCreate, TaskRunCreate, TaskRunStateSet
from baton.schemas.responses import LogRead, LogsPage, LogsWritten, TaskRunRead
from baton.server.api.deps import Db, Reader, RunWriter, check_run_scope, transaction
from baton.server.database.orm import Log
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.models import flow_runs, logs, task_runs
from baton.server.models.tenants import check_runner_owns
from baton.settings import ServerSettings

router = APIRouter(tags=["logs and task runs"], route_class=JsonRoute)


def _log_read(log: Log) -> LogRead:
    return LogRead(
        id=log.id,
        flow_run_id=log.flow_run_id,
        task_run_id=log.task_run_id,
        timestamp=log.timestamp,
        level=log.level,
        name=log.name,
        message=log.message,
    )


@router.get("/flow_runs/{flow_run_id}/logs", response_model=LogsPage)
def read_logs(
    flow_run_id: str,
    principal: Reader,
    db: Db,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> LogsPage:
    check_run_scope(principal, flow_run_id)
    with transaction(db) as session:
        flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id)
        rows = logs.read_logs(session, principal.tenant_id, flow_run_id, offset, limit)
        return LogsPage(logs=[_log_read(r) for r in rows], next_offset=rows[-1].id if rows else offset)


@router.post(
    "/flow_runs/{flow_run_id}/logs", response_model=LogsWritten, status_code=201, responses=error_responses(409)
)
def write_logs(flow_run_id: str, payload: LogsCreate, principal: RunWriter, db: Db, request: Request) -> LogsWritten:
    """Store log lines (a retried batch is stored once); past the run's quota they are counted as dropped, and a
    run that ended more than the server's log grace ago answers 409."""
    check_run_scope(principal, flow_run_id)
    server: ServerSettings = request.app.state.settings.server
    quota = logs.LogQuota(server.max_log_lines_per_run, server.max_log_bytes_per_run, server.log_grace_seconds)
    with transaction(db) as session:
        run = flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id)
        check_runner_owns(session, principal, run)
        result = logs.write_logs(session, run, payload.logs, quota)
        return LogsWritten(written=result.written, dropped=result.dropped)


@router.post("/flow_runs/{flow_run_id}/task_runs", response_model=TaskRunRead, status_code=201)
def create_task_run(flow_run_id: str, payload: TaskRunCreate, principal: RunWriter, db: Db) -> TaskRunRead:
    check_run_scope(principal, flow_run_id)
    with transaction(db) as session:
        check_runner_owns(session, principal, flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id))
        task_run = task_runs.create_task_run(
            session, principal.tenant_id, flow_run_id, payload.task_name, payload.state, payload.message
        )
        return task_runs.to_read(task_run)


@router.get("/flow_runs/{flow_run_id}/task_runs", response_model=list[TaskRunRead])
def list_task_runs(flow_run_id: str, principal: Reader, db: Db) -> list[TaskRunRead]:
    check_run_scope(principal, flow_run_id)
    with transaction(db) as session:
        flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id)
        return [task_runs.to_read(t) for t in task_runs.list_task_runs(session, principal.tenant_id, flow_run_id)]


@router.post("/task_runs/{task_run_id}/state", response_model=TaskRunRead)
def set_task_run_state(task_run_id: str, payload: TaskRunStateSet, principal: RunWriter, db: Db) -> TaskRunRead:
    with transaction(db) as session:
        task_run = task_runs.get_task_run(session, principal.tenant_id, task_run_id)
        if principal.is_run_token and task_run.flow_run_id != principal.flow_run_id:
            raise HTTPException(404, f"task run {task_run_id} not found")
        check_runner_owns(
            session, principal, flow_runs.get_flow_run(session, principal.tenant_id, task_run.flow_run_id)
        )
        task_run = task_runs.set_task_run_state(session, task_run, payload.state, payload.message, payload.attempt)
        return task_runs.to_read(task_run)

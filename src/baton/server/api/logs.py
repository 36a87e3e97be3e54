"""Logs and task runs of a flow run."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from baton.schemas.actions import MAX_INT, LogsCreate, TaskRunCreate, TaskRunsCreate, TaskRunStateSet
from baton.schemas.actions import TaskRunStatesSet as TaskRunStatesSetBody
from baton.schemas.responses import NEXT_CURSOR_HEADER, LogsPage, LogsWritten, TaskRunRead, TaskRunStatesSet
from baton.server import shaping
from baton.server.access import Action, allow
from baton.server.api.deps import CursorQuery, Db, ReadDb, transaction
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.models import flow_runs, logs, pages, task_runs
from baton.server.models.tenants import Principal
from baton.settings import ServerSettings

router = APIRouter(tags=["logs and task runs"], route_class=JsonRoute)


@router.get("/flow_runs/{flow_run_id}/logs", response_model=LogsPage)
def read_logs(
    flow_run_id: str,
    principal: Annotated[Principal, allow(Action.LOGS_READ)],
    db: ReadDb,
    request: Request,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> LogsPage:
    """Lines after ``offset``, oldest first: at most ``limit``, fewer past the server's byte budget."""
    budget = request.app.state.settings.server.max_list_bytes
    with transaction(db) as session:
        flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id)
        limit = pages.lines_within(session, principal.tenant_id, flow_run_id, offset, limit, budget)
        return shaping.logs_page(logs.read_logs(session, principal.tenant_id, flow_run_id, offset, limit), offset)


@router.post(
    "/flow_runs/{flow_run_id}/logs", response_model=LogsWritten, status_code=201, responses=error_responses(409)
)
def write_logs(
    flow_run_id: str,
    payload: LogsCreate,
    principal: Annotated[Principal, allow(Action.LOGS_WRITE)],
    db: Db,
    request: Request,
) -> LogsWritten:
    """Store log lines (a retried batch is stored once); past the run's quota they are counted as dropped, and a
    run that ended more than the server's log grace ago answers 409."""
    server: ServerSettings = request.app.state.settings.server
    quota = logs.LogQuota.of(server)
    with transaction(db) as session:
        run = flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id)
        result = logs.write_logs(session, run, payload.logs, quota)
        return LogsWritten(written=result.written, dropped=result.dropped)


@router.post(
    "/flow_runs/{flow_run_id}/task_runs", response_model=TaskRunRead, status_code=201, responses=error_responses(409)
)
def create_task_run(
    flow_run_id: str,
    payload: TaskRunCreate,
    principal: Annotated[Principal, allow(Action.TASK_RUN_CREATE)],
    db: Db,
    request: Request,
) -> TaskRunRead:
    limit = request.app.state.settings.server.max_task_runs_per_run
    with transaction(db) as session:
        flow_runs.require_flow_run(session, principal.tenant_id, flow_run_id)
        return task_runs.create_task_run(
            session, principal.tenant_id, flow_run_id, payload.task_name, payload.state, payload.message, limit
        )


@router.post(
    "/flow_runs/{flow_run_id}/task_runs/batch",
    response_model=list[TaskRunRead],
    status_code=201,
    responses=error_responses(409),
)
def create_task_runs(
    flow_run_id: str,
    payload: TaskRunsCreate,
    principal: Annotated[Principal, allow(Action.TASK_RUN_CREATE)],
    db: Db,
    request: Request,
) -> list[TaskRunRead]:
    """Several task runs in one request and one statement, all or none (a map's children; engine/reporter.py)."""
    limit = request.app.state.settings.server.max_task_runs_per_run
    with transaction(db) as session:
        flow_runs.require_flow_run(session, principal.tenant_id, flow_run_id)
        return task_runs.create_task_runs(session, principal.tenant_id, flow_run_id, payload.task_runs, limit)


@router.get("/flow_runs/{flow_run_id}/task_runs", response_model=list[TaskRunRead])
def list_task_runs(
    flow_run_id: str,
    principal: Annotated[Principal, allow(Action.TASK_RUN_LIST)],
    db: ReadDb,
    request: Request,
    response: Response,
    cursor: CursorQuery = None,
) -> list[TaskRunRead]:
    """The run's task runs, oldest first; a page stops at the server's byte budget (X-Next-Cursor for the rest)."""
    budget = request.app.state.settings.server.max_list_bytes
    with transaction(db) as session:
        flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id)
        page = pages.task_runs_page(session, principal.tenant_id, flow_run_id, cursor, budget)
    if page.next_cursor is not None:
        response.headers[NEXT_CURSOR_HEADER] = page.next_cursor
    return shaping.task_runs(page.rows)


@router.post("/task_runs/{task_run_id}/state", response_model=TaskRunRead)
def set_task_run_state(
    task_run_id: str,
    payload: TaskRunStateSet,
    principal: Annotated[Principal, allow(Action.TASK_RUN_SET_STATE)],
    db: Db,
) -> TaskRunRead:
    with transaction(db) as session:
        return task_runs.set_task_run_state(
            session, principal.tenant_id, task_run_id, payload.state, payload.message, payload.attempt
        )


@router.post("/flow_runs/{flow_run_id}/task_runs/states", response_model=TaskRunStatesSet)
def set_task_run_states(
    flow_run_id: str,
    payload: TaskRunStatesSetBody,
    principal: Annotated[Principal, allow(Action.TASK_RUN_SET_STATES)],
    db: Db,
) -> TaskRunStatesSet:
    """Several task-run states of one run in one request and one commit, in order (engine/state_batches.py)."""
    with transaction(db) as session:
        flow_runs.require_flow_run(session, principal.tenant_id, flow_run_id)
        return task_runs.set_task_run_states(session, principal.tenant_id, flow_run_id, payload.states)

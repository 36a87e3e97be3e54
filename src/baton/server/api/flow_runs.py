"""Flow runs: create, read, change state, cancel, explain, and the flow-run process's heartbeat."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response

from baton.schemas.actions import MAX_INT, FlowRunCreate, StateSet
from baton.schemas.responses import FlowRunHeartbeatResponse, FlowRunRead, RunExplanation
from baton.schemas.states import CLAIMABLE_STATES, StateName
from baton.server.api.deps import Author, Db, NotifierDep, Reader, RunWriter, check_run_scope, transaction
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.models import agents, flow_runs, state_changes
from baton.server.models.redaction import redact_flow_run
from baton.server.models.tenants import check_runner_owns

router = APIRouter(prefix="/flow_runs", tags=["flow runs"], route_class=JsonRoute)


IDEMPOTENCY_KEY = Header(
    alias="Idempotency-Key",
    min_length=1,
    max_length=200,
    pattern=r"^[\x21-\x7e]+$",
    description="The client's name for this one logical create (e.g. a UUID), sent again on a retry: a create "
    "with a key this tenant used before returns that run (200) instead of making a second one; a key reused "
    "for a different request is refused (409).",
)


@router.post(
    "",
    response_model=FlowRunRead,
    status_code=201,
    responses={
        200: {"model": FlowRunRead, "description": "A retry: the run made earlier with this Idempotency-Key."},
        **error_responses(404, 409),
    },
)
def create_flow_run(
    payload: FlowRunCreate,
    principal: Author,
    db: Db,
    notifier: NotifierDep,
    response: Response,
    idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None,
) -> FlowRunRead:
    with transaction(db) as session:
        run, created = flow_runs.create_flow_run_once(session, principal.tenant_id, payload, idempotency_key)
        result = flow_runs.to_read(session, [run])[0]
    if created:
        notifier.notify_threadsafe(principal.tenant_id)  # after the commit: the woken agent must see the run
    else:
        response.status_code = 200
    return redact_flow_run(principal, result)


@router.get("", response_model=list[FlowRunRead])
def list_flow_runs(
    principal: Reader,
    db: Db,
    state: Annotated[StateName | None, Query()] = None,
    flow_name: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> list[FlowRunRead]:
    if principal.is_run_token:
        raise HTTPException(403, "a run token may only read its own flow run")
    with transaction(db) as session:
        runs = flow_runs.list_flow_runs(
            session,
            principal.tenant_id,
            state=state.value if state else None,
            flow_name=flow_name,
            limit=limit,
            offset=offset,
        )
        return [redact_flow_run(principal, r) for r in flow_runs.to_read(session, runs)]


@router.get("/{flow_run_id}", response_model=FlowRunRead)
def get_flow_run(flow_run_id: str, principal: Reader, db: Db) -> FlowRunRead:
    check_run_scope(principal, flow_run_id)
    with transaction(db) as session:
        run = flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id)
        return redact_flow_run(principal, flow_runs.to_read(session, [run])[0])


@router.post("/{flow_run_id}/state", response_model=FlowRunRead, responses=error_responses(409))
def set_state(flow_run_id: str, payload: StateSet, principal: RunWriter, db: Db, notifier: NotifierDep) -> FlowRunRead:
    """Move the run to a new state; 409 with the reason when the state machine does not allow it."""
    check_run_scope(principal, flow_run_id)
    with transaction(db) as session:
        run = state_changes.set_state(session, principal, flow_run_id, payload.name, payload.message, payload.data)
        result = flow_runs.to_read(session, [run])[0]
    if payload.name in CLAIMABLE_STATES:
        notifier.notify_threadsafe(principal.tenant_id)
    return redact_flow_run(principal, result)


@router.post("/{flow_run_id}/cancel", response_model=FlowRunRead, responses=error_responses(409))
def cancel_flow_run(flow_run_id: str, principal: Author, db: Db) -> FlowRunRead:
    """Cancel: at once when not deployed yet; otherwise Cancelling until the agent stops the deployment."""
    with transaction(db) as session:
        run = state_changes.cancel(session, principal.tenant_id, flow_run_id)
        return redact_flow_run(principal, flow_runs.to_read(session, [run])[0])


@router.get("/{flow_run_id}/explain", response_model=RunExplanation)
def explain_flow_run(flow_run_id: str, principal: Reader, db: Db, request: Request) -> RunExplanation:
    check_run_scope(principal, flow_run_id)
    # An agent is "live" if it long-polled or heartbeat within a few poll periods.
    stale_after = max(60.0, 3 * request.app.state.settings.server.max_claim_wait_seconds)
    with transaction(db) as session:
        return agents.explain_run(session, principal.tenant_id, flow_run_id, stale_after)


@router.post("/{flow_run_id}/heartbeat", response_model=FlowRunHeartbeatResponse)
def flow_run_heartbeat(flow_run_id: str, principal: RunWriter, db: Db) -> FlowRunHeartbeatResponse:
    """The flow-run process is alive; the answer's state tells it when it is being cancelled."""
    check_run_scope(principal, flow_run_id)
    with transaction(db) as session:
        run = flow_runs.get_flow_run(session, principal.tenant_id, flow_run_id)
        check_runner_owns(session, principal, run)
        flow_runs.record_heartbeat(session, run)
        return FlowRunHeartbeatResponse(state=run.state)

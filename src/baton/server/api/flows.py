"""Flow registration and reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response

from baton.schemas.actions import FlowCreate
from baton.schemas.responses import FlowRead
from baton.server.api.deps import Author, Db, Reader, transaction
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.models import flows
from baton.server.models.flow_runs import get_flow_run
from baton.server.models.redaction import redact_flow

router = APIRouter(prefix="/flows", tags=["flows"], route_class=JsonRoute)


@router.post(
    "",
    response_model=FlowRead,
    status_code=201,
    responses={
        200: {"model": FlowRead, "description": "The same content was registered before: that version."},
        **error_responses(409),
    },
)
def register_flow(payload: FlowCreate, principal: Author, db: Db, response: Response) -> FlowRead:
    """Register a flow: a new version when its content changed, else the existing version (200)."""
    with transaction(db) as session:
        flow, created = flows.register_flow(session, principal.tenant_id, payload)
        if not created:
            response.status_code = 200
        return redact_flow(principal, flows.to_read(flow))


@router.get("", response_model=list[FlowRead])
def list_flows(
    principal: Reader,
    db: Db,
    name: Annotated[str | None, Query(max_length=200)] = None,
    all_versions: bool = False,
) -> list[FlowRead]:
    if principal.is_run_token:
        raise HTTPException(403, "a run token may only read its own flow")
    with transaction(db) as session:
        found = flows.list_flows(session, principal.tenant_id, name, all_versions)
        return [redact_flow(principal, flows.to_read(f)) for f in found]


@router.get("/{flow_id}", response_model=FlowRead)
def get_flow(flow_id: str, principal: Reader, db: Db, include_source: bool = False) -> FlowRead:
    with transaction(db) as session:
        if principal.is_run_token:
            assert principal.flow_run_id is not None
            run = get_flow_run(session, principal.tenant_id, principal.flow_run_id)
            if run.flow_id != flow_id:
                raise HTTPException(404, f"flow {flow_id} not found")
        flow = flows.get_flow(session, principal.tenant_id, flow_id)
        return redact_flow(principal, flows.to_read(flow, include_source))

"""Flow registration and reads."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from baton.schemas.actions import FlowCreate
from baton.schemas.responses import NEXT_CURSOR_HEADER, FlowRead
from baton.server import shaping
from baton.server.access import Action, allow
from baton.server.api.deps import CursorQuery, Db, ReadDb, transaction
from baton.server.database.orm import utcnow
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.models import flows, schedules
from baton.server.models.tenants import Principal

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
def register_flow(
    payload: FlowCreate,
    principal: Annotated[Principal, allow(Action.FLOW_REGISTER)],
    db: Db,
    request: Request,
    response: Response,
) -> FlowRead:
    """Register a flow: a new version when its content changed, else the existing version (200).

    A new version takes over its name's not-yet-started scheduled runs and creates its schedule's runs at once.
    A flow whose ``storage.bundle`` names a bundle the tenant has not uploaded (``PUT /api/bundles/{digest}``) is
    refused (422).
    """
    schedules.check_clock_parameters(payload.parameters_schema, payload.schedule)
    with transaction(db) as session:
        flow, created = flows.register_flow(session, principal.tenant_id, payload)
        if created:
            policy = schedules.schedule_policy(request.app.state.settings.server)
            schedules.reconcile(session, flow, utcnow(), policy)
        else:
            response.status_code = 200
        return shaping.flow(principal, flow)


@router.get("", response_model=list[FlowRead])
def list_flows(
    principal: Annotated[Principal, allow(Action.FLOW_LIST)],
    db: ReadDb,
    request: Request,
    response: Response,
    name: Annotated[str | None, Query(max_length=200)] = None,
    all_versions: bool = False,
    cursor: CursorQuery = None,
) -> list[FlowRead]:
    """By name, newest version first; an answer stops at the server's byte budget, and then ``X-Next-Cursor``
    says where the next page starts."""
    budget = request.app.state.settings.server.max_list_bytes
    with transaction(db) as session:
        page = flows.list_flows(session, principal.tenant_id, name, all_versions, cursor, budget)
        items = shaping.flows(principal, page.flows)
    if page.next_cursor is not None:
        response.headers[NEXT_CURSOR_HEADER] = page.next_cursor
    return items


@router.get("/{flow_id}", response_model=FlowRead)
def get_flow(
    flow_id: str, principal: Annotated[Principal, allow(Action.FLOW_READ)], db: ReadDb, include_source: bool = False
) -> FlowRead:
    with transaction(db) as session:
        return shaping.flow(principal, flows.get_flow(session, principal.tenant_id, flow_id), include_source)

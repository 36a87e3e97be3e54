"""The dashboard, the agents page and (for admins) API keys."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import ValidationError

from baton.schemas.actions import ApiKeyCreate
from baton.schemas.core import Role
from baton.server import shaping
from baton.server.access import Action
from baton.server.database.connection import transaction
from baton.server.database.orm import utcnow
from baton.server.models import agents, dashboard, flow_runs, run_counts, tenants
from baton.server.models.errors import InvalidRequest
from baton.server.ui import charts
from baton.server.ui.routing import UiRoute
from baton.server.ui.web import (
    CheckedForm,
    ViewerDep,
    factory_of,
    reader_of,
    redirect,
    render,
    require,
    validation_message,
)

router = APIRouter(route_class=UiRoute)
LATE_SHOWN = 10


@router.get("/", include_in_schema=False)
def dashboard_page(request: Request, viewer: ViewerDep) -> Response:
    require(viewer, Action.FLOW_RUN_LIST)
    tenant_id = viewer.principal.tenant_id
    server = request.app.state.settings.server
    now = utcnow()
    # The chart's 24 bars are whole hours, the last one the current hour: every figure counts from the first.
    first_hour = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=23)
    with transaction(reader_of(request)) as session:
        counts = run_counts.by_hour(session, tenant_id, first_hour)
        failing = dashboard.failing_flows(session, tenant_id, first_hour)
        late_filter = flow_runs.RunFilter(late_before=now - timedelta(seconds=server.late_after_seconds))
        late_rows = flow_runs.list_flow_runs(session, tenant_id, late_filter, limit=LATE_SHOWN).runs
        late = shaping.flow_runs(session, viewer.principal, late_rows, flow_runs.HEAVY_FIELDS)
        fleet = []
        if viewer.can(Action.AGENT_LIST):
            fleet = shaping.fleet(session, agents.list_agents(session, tenant_id), server.agent_stale_seconds)
    buckets = [
        charts.HourBucket(start, counts.get(start, {}))
        for start in (first_hour + timedelta(hours=n) for n in range(24))
    ]
    totals: dict[str, int] = {}
    for bucket in buckets:
        for state, count in bucket.counts.items():
            totals[state] = totals.get(state, 0) + count
    return render(
        request,
        "dashboard.html",
        viewer,
        chart=charts.runs_by_state(buckets, now=now),
        totals=totals,
        failing=failing,
        late=late,
        agents=fleet,
    )


@router.get("/agents", include_in_schema=False)
def agents_page(request: Request, viewer: ViewerDep) -> Response:
    require(viewer, Action.AGENT_LIST)
    stale_after = request.app.state.settings.server.agent_stale_seconds
    with transaction(reader_of(request)) as session:
        rows = agents.list_agents(session, viewer.principal.tenant_id)
        fleet = shaping.fleet(session, rows, stale_after)
    fleet.sort(key=lambda agent: (not agent.live, agent.name))
    return render(request, "agents.html", viewer, agents=fleet, stale_after=stale_after)


@router.get("/keys", include_in_schema=False)
def keys_page(request: Request, viewer: ViewerDep) -> Response:
    require(viewer, Action.KEY_LIST)
    with transaction(reader_of(request)) as session:
        keys = [shaping.api_key(row) for row in tenants.list_api_keys(session, viewer.principal.tenant_id)]
    return render(request, "keys.html", viewer, keys=keys, created=None, roles=[role.value for role in Role])


@router.post("/keys", include_in_schema=False)
def create_key(request: Request, viewer: ViewerDep, form: CheckedForm) -> Response:
    require(viewer, Action.KEY_CREATE)
    try:  # the REST request's own model: what REST refuses (a NUL, a long name, an unknown role), this refuses
        wanted = ApiKeyCreate(role=form.get("role", ""), name=form.get("name", "").strip() or None)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc)) from None
    with transaction(factory_of(request)) as session:
        _row, secret = tenants.create_api_key(session, viewer.principal.tenant_id, wanted.role, wanted.name)
    with transaction(factory_of(request)) as session:
        keys = [shaping.api_key(row) for row in tenants.list_api_keys(session, viewer.principal.tenant_id)]
    # The key is shown once, on this answer only (no-store): it is never stored in the clear.
    return render(request, "keys.html", viewer, 201, keys=keys, created=secret, roles=[r.value for r in Role])


@router.post("/keys/{key_id}/revoke", include_in_schema=False)
def revoke_key(request: Request, key_id: str, viewer: ViewerDep, form: CheckedForm) -> Response:
    require(viewer, Action.KEY_REVOKE)
    with transaction(factory_of(request)) as session:
        tenants.revoke_api_key(session, viewer.principal.tenant_id, key_id, viewer.principal.key_id)
    return redirect("/keys", request)

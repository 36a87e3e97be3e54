"""Schedules: read them, pause and resume them, backfill past times (docs/design.md, Schedules)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from baton.schemas.responses import BackfillResult, ScheduleRead
from baton.schemas.schedules import BackfillRequest
from baton.server.access import Action, allow
from baton.server.api.deps import Db, transaction
from baton.server.database.orm import utcnow
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.models import schedule_views
from baton.server.models.errors import ObjectNotFound
from baton.server.models.schedules import schedule_policy
from baton.server.models.tenants import Principal

router = APIRouter(prefix="/schedules", tags=["schedules"], route_class=JsonRoute)

FlowName = Annotated[str, Path(min_length=1, max_length=200, description="the flow's name")]


def _name(flow_name: str) -> str:
    if "\x00" in flow_name:  # no flow name has one (NAME_FIELD), and PostgreSQL refuses to compare with it
        raise ObjectNotFound(f"flow {flow_name!r} not found")
    return flow_name


@router.get("", response_model=list[ScheduleRead])
def list_schedules(principal: Annotated[Principal, allow(Action.SCHEDULE_READ)], db: Db) -> list[ScheduleRead]:
    """The schedules of the tenant's flows (newest versions that have one, paused ones too), by flow name."""
    with transaction(db) as session:
        return schedule_views.list_schedules(session, principal.tenant_id, utcnow())


@router.get("/{flow_name}", response_model=ScheduleRead, responses=error_responses(404))
def get_schedule(
    flow_name: FlowName, principal: Annotated[Principal, allow(Action.SCHEDULE_READ)], db: Db
) -> ScheduleRead:
    """The schedule of the flow's newest version: each clock, whether it is paused, the next run times."""
    with transaction(db) as session:
        return schedule_views.get_schedule(session, principal.tenant_id, _name(flow_name), utcnow())


@router.post("/{flow_name}/pause", response_model=ScheduleRead, responses=error_responses(404))
def pause_schedule(
    flow_name: FlowName, principal: Annotated[Principal, allow(Action.SCHEDULE_PAUSE)], db: Db
) -> ScheduleRead:
    """Pause: no more runs are created, and the not-yet-started scheduled runs are deleted. Idempotent."""
    with transaction(db) as session:
        return schedule_views.pause(session, principal.tenant_id, _name(flow_name), utcnow())


@router.post("/{flow_name}/resume", response_model=ScheduleRead, responses=error_responses(404))
def resume_schedule(
    flow_name: FlowName, principal: Annotated[Principal, allow(Action.SCHEDULE_PAUSE)], db: Db, request: Request
) -> ScheduleRead:
    """Resume from now: the runs of the coming horizon are created at once; paused time is not caught up."""
    policy = schedule_policy(request.app.state.settings.server)
    with transaction(db) as session:
        return schedule_views.resume(session, principal.tenant_id, _name(flow_name), utcnow(), policy)


@router.post("/{flow_name}/backfill", response_model=BackfillResult, responses=error_responses(404, 409))
def backfill(
    flow_name: FlowName,
    payload: BackfillRequest,
    principal: Annotated[Principal, allow(Action.SCHEDULE_BACKFILL)],
    db: Db,
    request: Request,
) -> BackfillResult:
    """Create the runs of the schedule's times in [start, end] (past only), each at most once ever: a second
    backfill of the same range creates nothing and says how many existed. 422 past the server's bound."""
    bound = request.app.state.settings.server.scheduler_max_backfill_runs
    with transaction(db) as session:
        return schedule_views.backfill(session, principal.tenant_id, _name(flow_name), payload, utcnow(), bound)

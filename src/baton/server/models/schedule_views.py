"""Schedules as the API shows and changes them: reads, pause and resume, backfill (``api/schedules.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from baton.schedules import next_times
from baton.schemas.responses import BackfillResult, ClockRead, ScheduleRead
from baton.schemas.schedules import FIRES_WITHIN, BackfillRequest, Clock, Schedule
from baton.server.database.orm import Flow
from baton.server.models import schedules
from baton.server.models.errors import Conflict, InvalidRequest
from baton.server.models.flows import find_flow
from baton.server.models.schedules import SchedulePolicy

# How many next times a schedule read shows per clock.
NEXT_TIMES = 5
# Runs per INSERT of a backfill.
BATCH = 500


def _clocks(schedule: Schedule, now: datetime) -> list[ClockRead]:
    return [
        ClockRead(
            id=clock_id,
            type=clock.type,
            summary=clock.describe(),
            clock=clock.model_dump(mode="json"),
            next_times=list(next_times(clock, now, now + FIRES_WITHIN, limit=NEXT_TIMES)),
        )
        for clock_id, clock in schedule.by_id().items()
    ]


def schedule_read(flow: Flow, paused: bool, now: datetime) -> ScheduleRead:
    schedule = schedules.stored_schedule(flow)
    problem = None
    if schedule is None and flow.schedule is not None:
        problem = "the stored schedule does not parse (registered before schedules were checked): register again"
    clocks = _clocks(schedule, now) if schedule is not None else []
    upcoming = [clock.next_times[0] for clock in clocks if clock.next_times]
    return ScheduleRead(
        flow_name=flow.name,
        flow_id=flow.id,
        flow_version=flow.version,
        active=not paused,
        clocks=clocks,
        next_run_time=None if paused or not upcoming else min(upcoming),
        problem=problem,
    )


def get_schedule(session: Session, tenant_id: str, flow_name: str, now: datetime) -> ScheduleRead:
    flow = find_flow(session, tenant_id, flow_name, None)
    return schedule_read(flow, schedules.is_paused(session, tenant_id, flow_name), now)


def list_schedules(session: Session, tenant_id: str, now: datetime) -> list[ScheduleRead]:
    """Every flow of the tenant whose newest version has a schedule (paused ones too), by name."""
    paused = {name for _tenant, name in schedules.paused_names(session, tenant_id)}
    flows = schedules.scheduled_flows(session, tenant_id=tenant_id, include_paused=True)
    return [schedule_read(flow, flow.name in paused, now) for flow in flows]


def pause(session: Session, tenant_id: str, flow_name: str, now: datetime) -> ScheduleRead:
    """Pause the flow's schedule: its not-yet-started scheduled runs are deleted and no more are created."""
    flow = find_flow(session, tenant_id, flow_name, None)
    schedules.set_paused(session, tenant_id, flow_name, True, now)
    result = schedules.reconcile(session, flow, now, SchedulePolicy())
    read = schedule_read(flow, True, now)
    read.deleted_runs = result.deleted
    return read


def resume(session: Session, tenant_id: str, flow_name: str, now: datetime, policy: SchedulePolicy) -> ScheduleRead:
    """Resume it from ``now``: runs for times passed while paused are not created (a backfill can)."""
    flow = find_flow(session, tenant_id, flow_name, None)
    was_paused = schedules.is_paused(session, tenant_id, flow_name)
    schedules.set_paused(session, tenant_id, flow_name, False, now)
    if was_paused:
        schedules.restart_marks(session, tenant_id, flow_name)
    result = schedules.reconcile(session, flow, now, policy)
    read = schedule_read(flow, False, now)
    read.created_runs = result.created
    return read


def backfill(
    session: Session, tenant_id: str, flow_name: str, request: BackfillRequest, now: datetime, max_runs: int
) -> BackfillResult:
    """Create the runs of the flow's clocks for the times in [start, end] (the past only), each once ever.

    Raises:
        Conflict: the flow has no schedule (409).
        InvalidRequest: ``end`` is in the future, or more than ``max_runs`` times are in the range (422).
    """
    flow = find_flow(session, tenant_id, flow_name, None)
    schedule = schedules.stored_schedule(flow)
    if schedule is None:
        raise Conflict(f"flow {flow_name!r} has no schedule to backfill: register it with one")
    if request.end > now:
        raise InvalidRequest(
            f"end {request.end.isoformat()} is in the future: backfill creates past runs (the schedule creates the "
            f"future ones); give an end before {now.astimezone(UTC).isoformat(timespec='seconds')}"
        )
    limit = min(max_runs, request.max_runs or max_runs)
    after = request.start - timedelta(microseconds=1)
    due: list[tuple[str, Clock, datetime]] = []
    for clock_id, clock in schedule.by_id().items():
        for when in next_times(clock, after, request.end, limit=limit + 1 - len(due)):
            due.append((clock_id, clock, when))
        if len(due) > limit:
            raise InvalidRequest(
                f"backfill of {flow_name!r} from {request.start.isoformat()} to {request.end.isoformat()} would "
                f"create more than {limit} runs: give a shorter range (or a larger --max-runs, at most {max_runs})"
            )
    created = 0
    due.sort(key=lambda item: (item[2], item[0]))
    for first in range(0, len(due), BATCH):
        created += schedules.insert_scheduled_runs(session, flow, due[first : first + BATCH], now)
    return BackfillResult(
        flow_name=flow_name, start=request.start, end=request.end, created=created, existing=len(due) - created
    )

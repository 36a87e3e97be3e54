"""The dashboard's figures, each one grouped query on indexed columns (it must stay fast with 100k+ runs).

Runs are placed in time by their ``created`` and counted by their current state, from
``ix_flow_runs_tenant_created_state`` (tenant, created, state, flow), which holds every column read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from baton.schemas.states import StateName
from baton.server.database.orm import Flow, FlowRun


@dataclass(frozen=True)
class FailingFlow:
    name: str
    failed: int
    total: int
    last_failed: datetime | None


def _hour(session: Session) -> Any:
    """SQL for a run's creation hour as text ``YYYY-MM-DD HH`` (the same text on both databases)."""
    if session.get_bind().dialect.name == "postgresql":
        return func.to_char(func.timezone("UTC", FlowRun.created), "YYYY-MM-DD HH24")
    # SQLite holds the time as UTC text 'YYYY-MM-DD HH:MM:SS.ffffff' (orm.UTCDateTime): its first 13 characters
    # are the hour, with no date parsing per row.
    return func.substr(FlowRun.created, 1, 13)


def runs_by_hour(session: Session, tenant_id: str, since: datetime) -> dict[datetime, dict[str, int]]:
    """Runs created since ``since``, counted by creation hour (UTC) and current state."""
    hour = _hour(session).label("hour")
    rows = session.execute(
        select(hour, FlowRun.state, func.count())
        .where(FlowRun.tenant_id == tenant_id, FlowRun.created >= since)
        .group_by(hour, FlowRun.state)
    ).all()
    counts: dict[datetime, dict[str, int]] = {}
    for text, state, count in rows:
        start = datetime.strptime(text, "%Y-%m-%d %H").replace(tzinfo=UTC)
        counts.setdefault(start, {})[state] = int(count)
    return counts


def failing_flows(session: Session, tenant_id: str, since: datetime, limit: int = 10) -> list[FailingFlow]:
    """Flows with Failed runs created since ``since``, most failures first.

    Counted per flow version from ``ix_flow_runs_tenant_created_state`` alone, then summed by name here.
    """
    is_failed = FlowRun.state == StateName.FAILED.value
    failed = func.sum(case((is_failed, 1), else_=0))
    last_failed = func.max(case((is_failed, FlowRun.created)))
    rows = session.execute(
        select(FlowRun.flow_id, failed, func.count(), last_failed)
        .where(FlowRun.tenant_id == tenant_id, FlowRun.created >= since)
        .group_by(FlowRun.flow_id)
        .having(failed > 0)
    ).all()
    names = dict(session.execute(select(Flow.id, Flow.name).where(Flow.id.in_([row[0] for row in rows]))).all())
    by_name: dict[str, FailingFlow] = {}
    for flow_id, fails, total, last in rows:
        name = names.get(flow_id)
        if name is None:
            continue
        seen = by_name.get(name)
        if seen is not None:
            latest = max((t for t in (seen.last_failed, last) if t is not None), default=None)
            by_name[name] = FailingFlow(name, seen.failed + int(fails), seen.total + int(total), latest)
        else:
            by_name[name] = FailingFlow(name, int(fails), int(total), last)
    return sorted(by_name.values(), key=lambda flow: (-flow.failed, flow.name))[:limit]

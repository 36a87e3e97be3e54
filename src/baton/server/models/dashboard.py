"""The dashboard's figures, each one grouped query on indexed columns (it must stay fast with 100k+ runs).

Runs are placed in time by their ``created`` (indexed with the tenant: ``ix_flow_runs_tenant_created``), and
counted by their current state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from baton.server.database.orm import Flow, FlowRun

WINDOW = timedelta(hours=24)


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
    return func.strftime("%Y-%m-%d %H", FlowRun.created)


def runs_by_hour(session: Session, tenant_id: str, now: datetime) -> dict[datetime, dict[str, int]]:
    """Runs created in the 24 hours before ``now``, counted by creation hour (UTC) and current state."""
    hour = _hour(session).label("hour")
    rows = session.execute(
        select(hour, FlowRun.state, func.count())
        .where(FlowRun.tenant_id == tenant_id, FlowRun.created >= now - WINDOW)
        .group_by(hour, FlowRun.state)
    ).all()
    counts: dict[datetime, dict[str, int]] = {}
    for text, state, count in rows:
        start = datetime.strptime(text, "%Y-%m-%d %H").replace(tzinfo=UTC)
        counts.setdefault(start, {})[state] = int(count)
    return counts


def failing_flows(session: Session, tenant_id: str, now: datetime, limit: int = 10) -> list[FailingFlow]:
    """Flows with Failed runs created in the last 24 hours, most failures first."""
    failed = func.sum(case((FlowRun.state == "Failed", 1), else_=0))
    last_failed = func.max(func.coalesce(FlowRun.end_time, FlowRun.created)).filter(FlowRun.state == "Failed")
    rows = session.execute(
        select(Flow.name, failed, func.count(), last_failed)
        .join(Flow, Flow.id == FlowRun.flow_id)
        .where(FlowRun.tenant_id == tenant_id, FlowRun.created >= now - WINDOW)
        .group_by(Flow.name)
        .having(failed > 0)
        .order_by(failed.desc(), Flow.name)
        .limit(limit)
    ).all()
    return [FailingFlow(name, int(fails), int(total), last) for name, fails, total, last in rows]

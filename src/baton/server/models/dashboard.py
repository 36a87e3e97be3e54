"""The dashboard's figures, read from the run counts (``models/run_counts.py``), never by counting runs: the
page costs the same with a thousand runs a day as with a million.

Runs are placed in time by their ``created`` hour and counted by their current state.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from baton.schemas.states import StateName
from baton.server.database.orm import Flow, FlowRun
from baton.server.models import run_counts

FAILED = StateName.FAILED.value


@dataclass(frozen=True)
class FailingFlow:
    name: str
    failed: int
    total: int
    last_failed: datetime | None


def failing_flows(session: Session, tenant_id: str, since: datetime, limit: int = 10) -> list[FailingFlow]:
    """Flows with Failed runs created from ``since``'s hour on, most failures first, summed over their versions by
    name; with the time of each one's newest failure (one index lookup per failing version)."""
    failing = run_counts.by_flow(session, tenant_id, since, state=FAILED)
    failed = {flow_id: states[FAILED] for flow_id, states in failing.items()}
    if not failed:
        return []
    names = dict(session.execute(select(Flow.id, Flow.name).where(Flow.id.in_(list(failed)))).all())
    by_name: dict[str, list[str]] = defaultdict(list)
    for flow_id in failed:
        if flow_id in names:
            by_name[names[flow_id]].append(flow_id)
    ranked = sorted(by_name, key=lambda name: (-sum(failed[f] for f in by_name[name]), name))[:limit]
    first_hour = run_counts.hour_of(run_counts.hour_number(since))
    shown = [flow_id for name in ranked for flow_id in by_name[name]]
    counts = run_counts.by_flow(session, tenant_id, since, flow_ids=shown)
    last_failed = _last_failed(session, shown, first_hour)
    result = []
    for name in ranked:
        versions = by_name[name]
        times = [moment for flow_id in versions if (moment := last_failed.get(flow_id)) is not None]
        total = sum(sum(counts.get(flow_id, {}).values()) for flow_id in versions)
        result.append(FailingFlow(name, sum(failed[f] for f in versions), total, max(times, default=None)))
    return result


def _last_failed(session: Session, flow_ids: list[str], since: datetime) -> dict[str, datetime | None]:
    """Each flow version's newest Failed run time from ``since`` on, in one query: per version, a walk of
    ``ix_flow_runs_flow_created`` from its newest end that stops at the first Failed run."""
    newest = (
        select(FlowRun.created)
        .where(FlowRun.flow_id == Flow.id, FlowRun.created >= since, FlowRun.state == FAILED)
        .order_by(FlowRun.created.desc())
        .limit(1)
        .correlate(Flow)
        .scalar_subquery()
    )
    return {
        flow_id: created for flow_id, created in session.execute(select(Flow.id, newest).where(Flow.id.in_(flow_ids)))
    }

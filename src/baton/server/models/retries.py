"""Flow-level retries: when a failed attempt becomes ``Retrying`` instead of ``Failed`` (issue 9, run policies).

:func:`baton.server.models.flow_runs.transition` asks :func:`plan_retry` whenever a run is to become Failed, so
every path that fails a run (the flow-run process, its agent, the recovery and lease services, a timeout) retries
the same way. A retry is a new attempt of the same run: back in the queue, due ``retry_delay_seconds`` after the
failure, with the agent, lease, deployment and run token cleared (the old attempt's token dies with its claim).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from baton.schemas.states import StateName
from baton.server.database.orm import Flow, FlowRun


@dataclass(frozen=True)
class RetryPlan:
    message: str  # the Retrying state's message: which attempt failed, why, and when the next is due
    values: dict[str, Any]  # columns the retry changes besides the state


def plan_retry(session: Session, run: FlowRun, failure: str | None, now: datetime) -> RetryPlan | None:
    """How ``run``'s failing attempt is retried, or None when it has no attempts left (it is then Failed).

    A run being cancelled is never retried: whatever ends it, the user asked it to stop.
    """
    if run.state == StateName.CANCELLING:
        return None
    policy = session.execute(select(Flow.retries, Flow.retry_delay_seconds).where(Flow.id == run.flow_id)).first()
    if policy is None:
        return None
    retries, delay = int(policy[0] or 0), int(policy[1] or 0)
    attempts = retries + 1
    if run.attempt >= attempts:
        return None
    due = now + timedelta(seconds=delay)
    message = (
        f"attempt {run.attempt} of {attempts} failed: {failure or 'no message'}; "
        f"retrying at {due.isoformat(timespec='seconds')} (attempt {run.attempt + 1} of {attempts})"
    )
    # A new attempt starts with a fresh lease-return budget: the old attempt's returns said nothing about it.
    values = {"attempt": run.attempt + 1, "scheduled_start_time": due, "lease_returns": 0, "heartbeat_at": None}
    return RetryPlan(message, values)

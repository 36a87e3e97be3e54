"""Late runs and the per-flow ``max_lateness`` policy (issue 9, run policies).

A run is *late* when it is claimable (Scheduled or Retrying) and still unclaimed past its start time; for a
Retrying run the start time is the retry's due time, so lateness counts from there. A flow registered with
``@flow(max_lateness_seconds=N)`` has its runs later than that *skipped*: Cancelled with a message, rather than
started days late after an outage. Two places skip: a claim never hands such a run out (:func:`skip_if_too_late`),
and the lateness service sweeps the ones nobody claims (:func:`skip_too_late_runs`), so they are visible too.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Float, cast, func, literal, select
from sqlalchemy.orm import Session, defer

from baton.schemas.states import CLAIMABLE_STATES, StateName
from baton.server.database.orm import Flow, FlowRun, UTCDateTime
from baton.server.models.errors import StaleState
from baton.server.models.flow_runs import transition

logger = logging.getLogger("baton.server")

_CLAIMABLE = [state.value for state in CLAIMABLE_STATES]


def format_duration(seconds: float) -> str:
    """``45s``, ``5m 03s``, ``3h 02m``, ``2d 04h``: the two largest units, the second left out when zero."""
    total = max(0, int(seconds))
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for index, (name, size) in enumerate(units):
        if total >= size or name == "s":
            first, rest = divmod(total, size)
            if index + 1 == len(units):
                return f"{first}{name}"
            next_name, next_size = units[index + 1]
            second = rest // next_size
            return f"{first}{name} {second:02d}{next_name}" if second else f"{first}{name}"
    return "0s"  # pragma: no cover - the loop always returns at "s"


def seconds_late(run: FlowRun, now: datetime) -> float:
    """Seconds since ``run`` was due (negative: not due yet)."""
    return (now - run.scheduled_start_time).total_seconds()


def skip_message(run: FlowRun, max_lateness_seconds: int | None, now: datetime) -> str | None:
    """Why ``run`` is skipped, or None when it is not too late (or its flow has no ``max_lateness``)."""
    if max_lateness_seconds is None or run.state not in CLAIMABLE_STATES:
        return None
    late = seconds_late(run, now)
    if late <= max_lateness_seconds:
        return None
    return (
        f"skipped: {format_duration(late)} late, past the flow's max_lateness of "
        f"{format_duration(max_lateness_seconds)}"
    )


def skip_if_too_late(session: Session, run: FlowRun, flow: Flow | None, now: datetime) -> bool:
    """Cancel ``run`` if it is later than its ``flow``'s ``max_lateness``; True when it is skipped (or was just taken
    by another writer): either way the caller must not hand it out."""
    message = skip_message(run, flow.max_lateness_seconds if flow else None, now)
    if message is None:
        return False
    try:
        with session.begin_nested():
            transition(session, run, StateName.CANCELLED, message)
    except StaleState:
        return True  # someone else moved it meanwhile: not ours to hand out
    logger.info("flow run %s %s", run.id, message)
    return True


def _overdue(dialect: str, now: datetime) -> ColumnElement[bool]:
    """SQL: the run is later than its flow's ``max_lateness`` (a coarse filter; :func:`skip_message` decides)."""
    if dialect == "postgresql":
        allowed = func.make_interval(0, 0, 0, 0, 0, 0, cast(Flow.max_lateness_seconds, Float))
        return FlowRun.scheduled_start_time + allowed < now
    # SQLite stores UTC timestamps as text: compare their Julian day numbers.
    now_value = func.julianday(literal(now, UTCDateTime()))
    return (now_value - func.julianday(FlowRun.scheduled_start_time)) * 86400.0 > Flow.max_lateness_seconds


def skip_too_late_runs(session: Session, now: datetime, batch: int = 500) -> list[FlowRun]:
    """Cancel up to ``batch`` claimable runs, of every tenant, later than their flow's ``max_lateness``."""
    dialect = session.get_bind().dialect.name
    # The flows with a policy first: usually none, and then the runs are not looked at (the sweep runs every
    # second, and walking every waiting run of every tenant cost ~50 ms at 10k of them).
    policed = select(Flow.id).where(Flow.max_lateness_seconds.is_not(None))
    if session.scalar(policed.limit(1)) is None:
        return []
    query = (
        select(FlowRun, Flow.max_lateness_seconds)
        .join(Flow, Flow.id == FlowRun.flow_id)
        .where(
            FlowRun.flow_id.in_(policed),
            FlowRun.state.in_(_CLAIMABLE),
            FlowRun.scheduled_start_time < now - timedelta(seconds=1),
            _overdue(dialect, now),
        )
        .order_by(FlowRun.scheduled_start_time)
        .limit(batch)
        .options(defer(FlowRun.parameters), defer(FlowRun.run_config))
    )
    if dialect == "postgresql":
        query = query.with_for_update(skip_locked=True, of=FlowRun)  # replicas' sweeps split the work
    skipped: list[FlowRun] = []
    for run, max_lateness in session.execute(query).all():
        message = skip_message(run, max_lateness, now)
        if message is None:
            continue
        try:
            with session.begin_nested():
                transition(session, run, StateName.CANCELLED, message)
        except StaleState:
            continue  # claimed or cancelled at this very moment: that wins
        skipped.append(run)
    return skipped

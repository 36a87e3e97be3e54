"""Scheduled runs: each (flow, clock, time) becomes one run, whoever creates it (docs/design.md, Schedules).

The database decides "exactly once": an auto-scheduled run carries ``schedule_key`` = ``<flow>/<clock>/<time>``
and (tenant, schedule_key) is a unique index. Runs are inserted with ``INSERT ... ON CONFLICT DO NOTHING`` (SQLite
and PostgreSQL alike), so replicas racing, a tick repeated after a crash, and a backfill over times that already
have runs all leave one run per key. Each clock's *mark* (``schedule_marks``) is where its next window starts.

The window of one pass over a clock is ``(lower, now + horizon]``, where ``lower`` is the clock's mark, but never
older than ``now - catchup`` (times further back are not created: no catch-up, use a backfill), and ``now`` for a
clock that has no mark yet (a new schedule starts from its registration). The mark moves to the window's end (or
the last time created when a pass stops at ``max_per_clock``) in the same transaction as the runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session, defer, load_only

from baton.schedules import next_times
from baton.schemas.schedules import Clock, Schedule
from baton.schemas.states import StateName
from baton.server.database.connection import upsert_insert
from baton.server.database.orm import (
    Flow,
    FlowRun,
    FlowRunLabel,
    FlowRunState,
    FlowScheduleState,
    ScheduleMark,
    new_id,
)
from baton.server.models.errors import InvalidRequest
from baton.server.models.flow_runs import label_rows, resolve_run_labels
from baton.server.models.parameters import check_parameters

if TYPE_CHECKING:
    from baton.settings import ServerSettings

logger = logging.getLogger("baton.server.schedules")


@dataclass(frozen=True)
class SchedulePolicy:
    """The scheduler's settings (``ServerSettings.scheduler_*``)."""

    horizon_seconds: float = 3600.0
    catchup_seconds: float = 300.0
    max_runs_per_clock: int = 100


# An idle clock's mark is written at most this often (see schedule_flow).
MARK_STEP = timedelta(seconds=60)


def schedule_policy(server: ServerSettings) -> SchedulePolicy:
    return SchedulePolicy(
        horizon_seconds=server.scheduler_horizon_seconds,
        catchup_seconds=server.scheduler_catchup_seconds,
        max_runs_per_clock=server.scheduler_max_runs_per_clock,
    )


def flow_key(flow_name: str) -> str:
    # Hashed so that a key is short whatever the name (names are up to 200 characters).
    return hashlib.sha256(flow_name.encode()).hexdigest()[:16]


def schedule_key(flow_name: str, clock_id: str, when: datetime) -> str:
    return f"{flow_key(flow_name)}/{clock_id}/{when.astimezone(UTC).strftime('%Y%m%dT%H%M%S.%fZ')}"


def clock_of_key(key: str) -> str:
    parts = key.split("/")
    return parts[1] if len(parts) == 3 else ""


def stored_schedule(flow: Flow) -> Schedule | None:
    """The flow's schedule, or None when it has none or its stored form no longer parses (logged, never raised:
    one bad row must not stop the scheduler or a read)."""
    value: Any = flow.schedule
    if value is None:
        return None
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
        return _parsed(text)
    except (ValidationError, ValueError, TypeError) as exc:
        logger.warning("flow %s (%s v%s): stored schedule ignored: %s", flow.id, flow.name, flow.version, exc)
        return None


@functools.lru_cache(maxsize=4096)
def _parsed(text: str) -> Schedule:
    # Cached by content: every tick reads every scheduled flow, and parsing (croniter, zoneinfo) is the costly part.
    # Schedules are not changed after parsing, so sharing one instance is safe.
    return Schedule.model_validate_json(text)


def check_clock_parameters(schema: dict[str, Any], schedule: Schedule | None) -> None:
    """Each clock's parameter defaults must make a valid run of the flow, as a create would check them.

    Raises:
        InvalidRequest: naming the clock (422).
    """
    for index, clock in enumerate(schedule.clocks if schedule else []):
        try:
            check_parameters(schema, dict(clock.parameter_defaults))
        except InvalidRequest as exc:
            raise InvalidRequest(f"schedule.clocks.{index} ({clock.describe()}): {exc}") from None


# --- pause state ---------------------------------------------------------------------------------


def is_paused(session: Session, tenant_id: str, flow_name: str) -> bool:
    state = session.get(FlowScheduleState, (tenant_id, flow_name))
    return bool(state and state.paused)


def paused_names(session: Session, tenant_id: str | None = None) -> set[tuple[str, str]]:
    stmt = select(FlowScheduleState.tenant_id, FlowScheduleState.flow_name).where(FlowScheduleState.paused.is_(True))
    if tenant_id is not None:
        stmt = stmt.where(FlowScheduleState.tenant_id == tenant_id)
    return {(row[0], row[1]) for row in session.execute(stmt)}


def set_paused(session: Session, tenant_id: str, flow_name: str, paused: bool, now: datetime) -> None:
    _insert_ignore(
        session,
        FlowScheduleState,
        {"tenant_id": tenant_id, "flow_name": flow_name, "paused": paused, "updated": now},
        ["tenant_id", "flow_name"],
    )
    session.execute(
        update(FlowScheduleState)
        .where(FlowScheduleState.tenant_id == tenant_id, FlowScheduleState.flow_name == flow_name)
        .values(paused=paused, updated=now)
        .execution_options(synchronize_session=False)
    )


# --- portable insert-or-ignore -------------------------------------------------------------------


def _insert_ignore(session: Session, model: Any, values: dict[str, Any], conflict: list[str]) -> bool:
    """INSERT ... ON CONFLICT (conflict) DO NOTHING; whether the row was inserted."""
    table = model.__table__
    stmt = upsert_insert(session, table).values(**values).on_conflict_do_nothing(index_elements=conflict)
    # RETURNING says whether a row went in: the driver's rowcount is -1 for these on PostgreSQL (psycopg).
    key = table.c[conflict[0]]
    return session.execute(stmt.returning(key)).first() is not None


# --- creating runs -------------------------------------------------------------------------------


Occurrence = tuple[str, Clock, datetime]  # (clock id, clock, scheduled time)


def _run_row(flow: Flow, clock_id: str, clock: Clock, when: datetime, now: datetime) -> dict[str, Any]:
    labels = list(clock.labels) or resolve_run_labels(None, flow)
    return {
        "id": new_id(),
        "tenant_id": flow.tenant_id,
        "flow_id": flow.id,
        "flow_name": flow.name,
        "name": f"{flow.name} @ {when.astimezone(UTC):%Y-%m-%d %H:%M:%S}Z"[:200],
        "parameters": dict(clock.parameter_defaults),
        "labels": labels,
        "label_count": len(labels),
        "run_config": flow.run_config,
        "scheduled_start_time": when,
        "state": StateName.SCHEDULED.value,
        "state_message": None,
        "state_version": 0,
        "created": now,
        "updated": now,
        "schedule_key": schedule_key(flow.name, clock_id, when),
    }


def insert_scheduled_runs(session: Session, flow: Flow, due: list[Occurrence], now: datetime) -> int:
    """The runs of ``flow``'s occurrences ``due`` that do not exist yet; how many this call created."""
    return insert_runs_of_flows(session, [(flow, due)], now)


def insert_runs_of_flows(session: Session, work: list[tuple[Flow, list[Occurrence]]], now: datetime) -> int:
    """The runs of several flows' occurrences that do not exist yet, in one batched statement; how many this call
    created. INSERT ... ON CONFLICT DO NOTHING RETURNING id: the ids that come back are the runs made here."""
    rows: list[dict[str, Any]] = []
    for flow, due in work:
        rows.extend(_run_row(flow, clock_id, clock, when, now) for clock_id, clock, when in due)
    if not rows:
        return 0
    table: Any = FlowRun.__table__
    stmt = upsert_insert(session, table).on_conflict_do_nothing(index_elements=["tenant_id", "schedule_key"])
    # The driver's rowcount is -1 for these on PostgreSQL (psycopg): RETURNING says which rows went in.
    inserted = set(session.execute(stmt.returning(table.c.id), rows).scalars())
    made = [row for row in rows if row["id"] in inserted]
    labels = [label for row in made for label in label_rows(row["id"], row["tenant_id"], row["created"], row["labels"])]
    label_table: Any = FlowRunLabel.__table__
    state_table: Any = FlowRunState.__table__
    if labels:
        session.execute(insert(label_table), labels)
    if made:
        states = [
            {"flow_run_id": row["id"], "name": StateName.SCHEDULED.value, "message": None, "timestamp": now}
            for row in made
        ]
        session.execute(insert(state_table), states)
    return len(made)


def _marks(session: Session, tenant_id: str, flow_name: str) -> dict[str, datetime]:
    rows = session.execute(
        select(ScheduleMark.clock_id, ScheduleMark.mark).where(
            ScheduleMark.tenant_id == tenant_id, ScheduleMark.flow_name == flow_name
        )
    )
    return {clock_id: mark for clock_id, mark in rows}


MarkUpdate = dict[str, Any]  # tenant_id, flow_name, clock_id, mark


def _advance_marks(session: Session, updates: list[MarkUpdate]) -> None:
    """Moves clocks' marks forward (never back: a slower replica's pass must not rewind one), in one statement:
    INSERT ... ON CONFLICT DO UPDATE ... WHERE the stored mark is older."""
    if not updates:
        return
    table: Any = ScheduleMark.__table__
    stmt = upsert_insert(session, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenant_id", "flow_name", "clock_id"],
        set_={"mark": stmt.excluded.mark},
        where=table.c.mark < stmt.excluded.mark,
    )
    session.execute(stmt, updates)


def schedule_flow(
    session: Session,
    flow: Flow,
    now: datetime,
    policy: SchedulePolicy,
    marks: dict[str, datetime] | None = None,
) -> int:
    """Create the runs of ``flow``'s clocks in their windows (module docstring); how many this call created."""
    if marks is None:
        marks = _marks(session, flow.tenant_id, flow.name)
    return schedule_flows(session, [flow], now, policy, {(flow.tenant_id, flow.name): marks})


def schedule_flows(
    session: Session,
    flows: list[Flow],
    now: datetime,
    policy: SchedulePolicy,
    marks: dict[tuple[str, str], dict[str, datetime]],
) -> int:
    """:func:`schedule_flow` for several flows, with their runs and marks written in one statement each."""
    work: list[tuple[Flow, list[Occurrence]]] = []
    updates: list[MarkUpdate] = []
    for flow in flows:
        due, moved = _plan(flow, now, policy, marks.get((flow.tenant_id, flow.name), {}))
        work.append((flow, due))
        updates.extend(moved)
    created = insert_runs_of_flows(session, work, now)
    _advance_marks(session, updates)
    return created


def _plan(
    flow: Flow, now: datetime, policy: SchedulePolicy, marks: dict[str, datetime]
) -> tuple[list[Occurrence], list[MarkUpdate]]:
    """The occurrences ``flow`` needs runs for, and the marks to write."""
    schedule = stored_schedule(flow)
    if schedule is None:
        return [], []
    until = now + timedelta(seconds=policy.horizon_seconds)
    oldest = now - timedelta(seconds=policy.catchup_seconds)
    due: list[Occurrence] = []
    updates: list[MarkUpdate] = []
    for clock_id, clock in schedule.by_id().items():
        mark = marks.get(clock_id)
        lower = now if mark is None else max(mark, oldest)
        times = [] if lower >= until else list(next_times(clock, lower, until, limit=policy.max_runs_per_clock))
        due.extend((clock_id, clock, when) for when in times)
        new_mark = times[-1] if len(times) >= policy.max_runs_per_clock else until
        # Written when runs were made, when the clock has none, and else only every MARK_STEP: an idle pass that
        # leaves the mark behind just looks again at a stretch that held no time (cheaper than a write per tick).
        if times or mark is None or new_mark - mark >= MARK_STEP:
            updates.append(
                {"tenant_id": flow.tenant_id, "flow_name": flow.name, "clock_id": clock_id, "mark": new_mark}
            )
    return due, updates


# --- re-registration and pause: runs not yet started ---------------------------------------------


def pending_scheduled_runs(session: Session, tenant_id: str, flow_name: str) -> list[FlowRun]:
    """Auto-scheduled runs of the flow (any version) that nobody has claimed or started."""
    stmt = (
        select(FlowRun)
        .join(Flow, Flow.id == FlowRun.flow_id)
        .where(
            Flow.tenant_id == tenant_id,
            Flow.name == flow_name,
            FlowRun.schedule_key.is_not(None),
            FlowRun.state == StateName.SCHEDULED.value,
            FlowRun.agent_id.is_(None),
            FlowRun.start_time.is_(None),
        )
        .options(defer(FlowRun.parameters))
        .order_by(FlowRun.scheduled_start_time)
    )
    return list(session.scalars(stmt))


def _delete_run(session: Session, run: FlowRun) -> bool:
    """Deletes ``run`` if it is still as read (compare-and-set on its version): a run claimed meanwhile stays."""
    result = session.execute(
        delete(FlowRun)
        .where(FlowRun.id == run.id, FlowRun.state_version == run.state_version)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.execute(delete(FlowRunLabel).where(FlowRunLabel.flow_run_id == run.id))
    session.execute(delete(FlowRunState).where(FlowRunState.flow_run_id == run.id))
    return True


def _move_run(session: Session, run: FlowRun, flow: Flow, clock: Clock) -> bool:
    labels = list(clock.labels) or resolve_run_labels(None, flow)
    result = session.execute(
        update(FlowRun)
        .where(FlowRun.id == run.id, FlowRun.state_version == run.state_version)
        .values(
            flow_id=flow.id, flow_name=flow.name, run_config=flow.run_config, labels=labels, label_count=len(labels)
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return False
    if sorted(run.labels or []) != labels:
        session.execute(delete(FlowRunLabel).where(FlowRunLabel.flow_run_id == run.id))
        session.add_all(FlowRunLabel(**row) for row in label_rows(run.id, run.tenant_id, run.created, labels))
    return True


@dataclass
class Reconciled:
    moved: int = 0
    deleted: int = 0
    created: int = 0


def reconcile(session: Session, flow: Flow, now: datetime, policy: SchedulePolicy) -> Reconciled:
    """Make the not-yet-started scheduled runs of ``flow``'s name agree with ``flow`` (its newest version):
    runs of clocks it still has move to it, the others are deleted; then its clocks are scheduled at once (so a
    new or changed schedule takes effect now, not at the next tick). A paused flow keeps no such runs."""
    result = Reconciled()
    paused = is_paused(session, flow.tenant_id, flow.name)
    schedule = stored_schedule(flow)
    clocks = {} if paused or schedule is None else schedule.by_id()
    for run in pending_scheduled_runs(session, flow.tenant_id, flow.name):
        clock = clocks.get(clock_of_key(run.schedule_key or ""))
        if clock is None:
            result.deleted += _delete_run(session, run)
        elif run.flow_id != flow.id:
            result.moved += _move_run(session, run, flow, clock)
    # Marks of clocks the flow no longer has: a clock that comes back later starts again from its registration.
    session.execute(
        delete(ScheduleMark).where(
            ScheduleMark.tenant_id == flow.tenant_id,
            ScheduleMark.flow_name == flow.name,
            ScheduleMark.clock_id.not_in(list(clocks) or [""]),
        )
    )
    if clocks:
        result.created = schedule_flow(session, flow, now, policy)
    return result


def restart_marks(session: Session, tenant_id: str, flow_name: str) -> None:
    """Resume: every clock starts again from the next pass's ``now`` (a clock without a mark starts there), so
    the paused time is not caught up."""
    session.execute(
        delete(ScheduleMark).where(ScheduleMark.tenant_id == tenant_id, ScheduleMark.flow_name == flow_name)
    )


# --- the scheduler's pass over every flow --------------------------------------------------------


def scheduled_flows(
    session: Session, names: set[str] | None = None, tenant_id: str | None = None, include_paused: bool = False
) -> list[Flow]:
    """The newest version of every flow (all tenants, or ``tenant_id``'s; only ``names`` if given) that has a
    schedule and is not paused (or ``include_paused``), by tenant and name."""
    from sqlalchemy import Text, cast, func

    newest = (
        select(Flow.tenant_id, Flow.name, func.max(Flow.version).label("version"))
        .where(Flow.name.in_(names) if names is not None else Flow.name.is_not(None))
        .where(Flow.tenant_id == tenant_id if tenant_id is not None else Flow.tenant_id.is_not(None))
        .group_by(Flow.tenant_id, Flow.name)
        .subquery()
    )
    stmt = (
        select(Flow)
        .join(
            newest,
            (newest.c.tenant_id == Flow.tenant_id) & (newest.c.name == Flow.name) & (newest.c.version == Flow.version),
        )
        .where(Flow.schedule.is_not(None), cast(Flow.schedule, Text) != "null")
        # Only what scheduling reads: every pass loads every scheduled flow.
        .options(load_only(Flow.tenant_id, Flow.name, Flow.version, Flow.schedule, Flow.labels, Flow.run_config))
        .order_by(Flow.tenant_id, Flow.name)
    )
    paused = set() if include_paused else paused_names(session, tenant_id)
    return [flow for flow in session.scalars(stmt) if (flow.tenant_id, flow.name) not in paused]


def all_marks(session: Session, flows: Iterable[Flow]) -> dict[tuple[str, str], dict[str, datetime]]:
    """The marks of several flows' clocks in one query."""
    names = {flow.name for flow in flows}
    found: dict[tuple[str, str], dict[str, datetime]] = {}
    if not names:
        return found
    rows = session.execute(
        select(ScheduleMark.tenant_id, ScheduleMark.flow_name, ScheduleMark.clock_id, ScheduleMark.mark).where(
            ScheduleMark.flow_name.in_(names)
        )
    )
    for tenant_id, flow_name, clock_id, mark in rows:
        found.setdefault((tenant_id, flow_name), {})[clock_id] = mark
    return found

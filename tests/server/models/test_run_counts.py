"""The run counts behind the dashboard, on SQLite and PostgreSQL: whatever changes a run (the model functions, a
bulk UPDATE, a DELETE, a moved flow version, a hand-edited creation time), the counts read back equal a GROUP BY
over ``flow_runs``, before and after the deltas are folded, and racing folds count each change once."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from baton.schemas.actions import FlowCreate, FlowRunCreate
from baton.schemas.states import StateName
from baton.server.database.connection import create_database_engine, create_session_factory, transaction
from baton.server.database.migrate import upgrade
from baton.server.database.orm import Flow, FlowRun, FlowRunCount, FlowRunCountDelta, new_id
from baton.server.models import flow_runs, flows, run_counts, tenants
from baton.server.services.run_counts import RunCountService
from server.harness import TenantContext, unique

SINCE = datetime(2000, 1, 1, tzinfo=UTC)


@pytest.fixture
def factory(migrated_engine: Engine) -> sessionmaker[Session]:
    return create_session_factory(migrated_engine)


def _tenant(factory: sessionmaker[Session], name: str) -> str:
    with transaction(factory) as session:
        return tenants.create_tenant(session, name).id


def _flow(factory: sessionmaker[Session], tenant_id: str, name: str, description: str = "") -> str:
    with transaction(factory) as session:
        payload = FlowCreate(name=name, entrypoint="main", source="x", description=description)
        flow, _created = flows.register_flow(session, tenant_id, payload)
        return flow.id


def _runs(factory: sessionmaker[Session], tenant_id: str, name: str, count: int) -> list[str]:
    with transaction(factory) as session:
        made = [flow_runs.create_flow_run(session, tenant_id, FlowRunCreate(flow_name=name)) for _ in range(count)]
        return [run.id for run in made]


def _flow_as_of(factory: sessionmaker[Session], tenant_id: str, name: str) -> str:
    """A flow written with only the columns an older revision has (``register_flow`` reads the ORM's newest ones,
    such as 0016's ``kind``)."""
    row = {"id": new_id(), "tenant_id": tenant_id, "name": name, "version": 1, "entrypoint": "main", "source": "x"}
    row |= {"content_hash": "0", "storage": {}, "run_config": {}, "labels": [], "parameters_schema": {}, "tasks": []}
    with transaction(factory) as session:
        session.execute(insert(Flow.__table__).values(created=datetime.now(UTC), **row))
    return str(row["id"])


def _runs_as_of(factory: sessionmaker[Session], tenant_id: str, flow_id: str, count: int) -> list[str]:
    """Runs written with only the columns an older revision has (``create_flow_run`` writes the ORM's newest ones,
    such as 0013's ``flow_name``), for a database migrated to that revision."""
    now = datetime.now(UTC)
    rows = [
        {"id": new_id(), "tenant_id": tenant_id, "flow_id": flow_id, "name": "old", "parameters": {}, "labels": []}
        | {"label_count": 0, "run_config": {}, "scheduled_start_time": now, "state": "Scheduled", "state_version": 0}
        | {"created": now, "updated": now}
        for _ in range(count)
    ]
    with transaction(factory) as session:
        session.execute(insert(FlowRun.__table__), rows)
    return [row["id"] for row in rows]


def _truth(session: Session, tenant_id: str) -> dict[tuple[int, str, str], int]:
    """The counts by counting the rows: (hour, flow_id, state) → runs."""
    rows = session.execute(
        select(FlowRun.created, FlowRun.flow_id, FlowRun.state).where(FlowRun.tenant_id == tenant_id)
    ).all()
    truth: dict[tuple[int, str, str], int] = {}
    for created, flow_id, state in rows:
        key = (run_counts.hour_number(created), flow_id, state)
        truth[key] = truth.get(key, 0) + 1
    return truth


def _counted(session: Session, tenant_id: str) -> dict[tuple[int, str, str], int]:
    rows = run_counts.totals(session, tenant_id, SINCE, ("hour", "flow_id", "state"))
    return {(hour, flow_id, state): count for (hour, flow_id, state), count in rows}


def _check(factory: sessionmaker[Session], tenant_id: str) -> dict[tuple[int, str, str], int]:
    """The per-flow counts and the per-hour ones (the chart's table) both equal the rows' own."""
    with factory() as session:
        truth, counted = _truth(session, tenant_id), _counted(session, tenant_id)
        hours = run_counts.by_hour(session, tenant_id, SINCE)
    assert counted == truth
    hourly_truth: dict[datetime, dict[str, int]] = {}
    for (hour, _flow_id, state), count in truth.items():
        states = hourly_truth.setdefault(run_counts.hour_of(hour), {})
        states[state] = states.get(state, 0) + count
    assert hours == hourly_truth
    return counted


def _pending(factory: sessionmaker[Session]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(FlowRunCountDelta)) or 0)


def test_counts_follow_every_kind_of_change_before_and_after_folding(factory: sessionmaker[Session]) -> None:
    tenant_id, other = _tenant(factory, "counted"), _tenant(factory, "neighbour")
    v1 = _flow(factory, tenant_id, "etl")
    _flow(factory, other, "etl")
    # Given runs made by the model function (the API's path), in two tenants
    ids = _runs(factory, tenant_id, "etl", 12)
    _runs(factory, other, "etl", 5)
    assert _check(factory, tenant_id) == {(run_counts.hour_number(datetime.now(UTC)), v1, "Scheduled"): 12}

    # When runs move through the state machine one by one, as the API moves them
    with transaction(factory) as session:
        for run_id in ids[:3]:
            flow_runs.transition(session, flow_runs.get_flow_run(session, tenant_id, run_id), StateName.CANCELLED)
    _check(factory, tenant_id)
    # And a bulk UPDATE moves many at once, as recovery and the lateness sweep do
    with transaction(factory) as session:
        session.execute(update(FlowRun).where(FlowRun.id.in_(ids[3:9])).values(state="Failed"))
    _check(factory, tenant_id)
    # And an UPDATE that sets the state to what it already is changes nothing
    with transaction(factory) as session:
        session.execute(update(FlowRun).where(FlowRun.id.in_(ids[3:9])).values(state="Failed"))
    _check(factory, tenant_id)
    # And scheduled runs move to a new flow version, as re-registration does
    v2 = _flow(factory, tenant_id, "etl", description="v2")
    with transaction(factory) as session:
        session.execute(update(FlowRun).where(FlowRun.id.in_(ids[9:])).values(flow_id=v2))
    # And a run's creation time is edited by hand into another hour (its last instant), and another run deleted
    with transaction(factory) as session:
        last_instant = datetime(2026, 1, 1, 5, 59, 59, 999_999, tzinfo=UTC)
        session.execute(update(FlowRun).where(FlowRun.id == ids[0]).values(created=last_instant))
        session.execute(delete(FlowRun).where(FlowRun.id == ids[1]))

    # Then the counts equal the rows' own, read with the changes still pending
    counted = _check(factory, tenant_id)
    assert counted[(run_counts.hour_number(datetime(2026, 1, 1, 5, 59, tzinfo=UTC)), v1, "Cancelled")] == 1
    assert counted[(run_counts.hour_number(datetime.now(UTC)), v2, "Scheduled")] == 3
    assert _pending(factory) > 0
    # And after folding, with none pending, the other tenant's included
    assert RunCountService(factory).fold_pending() > 0
    assert _pending(factory) == 0
    assert _check(factory, tenant_id) == counted
    _check(factory, other)
    # And the folded table holds them, with no key left at zero (v1's Scheduled runs all moved on)
    with factory() as session:
        stored = session.execute(
            select(func.sum(FlowRunCount.count), func.min(FlowRunCount.count)).where(
                FlowRunCount.tenant_id == tenant_id
            )
        ).one()
    assert tuple(stored) == (11, 1)


def test_racing_folds_count_each_change_once(factory: sessionmaker[Session]) -> None:
    # Given thousands of pending changes (more than one fold batch takes... in small batches here)
    tenant_id = _tenant(factory, "raced")
    _flow(factory, tenant_id, "etl")
    ids = _runs(factory, tenant_id, "etl", 300)
    with transaction(factory) as session:
        session.execute(update(FlowRun).where(FlowRun.id.in_(ids[:200])).values(state="Running"))
        session.execute(update(FlowRun).where(FlowRun.id.in_(ids[:100])).values(state="Success"))
    # When four services fold at once, with small batches, while more changes are made
    original = run_counts.FOLD_BATCH
    run_counts.FOLD_BATCH = 37
    errors: list[BaseException] = []
    start = threading.Barrier(5)

    def fold_all() -> None:
        try:
            start.wait()
            for _ in range(30):
                RunCountService(factory).fold_pending()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=fold_all) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        start.wait()
        with transaction(factory) as session:
            session.execute(update(FlowRun).where(FlowRun.id.in_(ids[200:])).values(state="Cancelled"))
        for thread in threads:
            thread.join(timeout=60)
    finally:
        run_counts.FOLD_BATCH = original
    assert not errors, errors
    RunCountService(factory).fold_pending()

    # Then the counts are exact: nothing lost, nothing counted twice
    assert _pending(factory) == 0
    counted = _check(factory, tenant_id)
    assert sorted(counted.values()) == [100, 100, 100]


def test_counts_start_from_the_runs_a_database_already_has(tmp_path: Path) -> None:
    # Given a database at the revision before the counts, with runs in it
    engine = create_database_engine(f"sqlite:///{tmp_path}/old.db", 2)
    try:
        upgrade(engine, "0009")
        sessions = create_session_factory(engine)
        tenant_id = _tenant(sessions, "older")
        flow_id = _flow_as_of(sessions, tenant_id, "etl")
        ids = _runs_as_of(sessions, tenant_id, flow_id, 4)
        with transaction(sessions) as session:
            session.execute(update(FlowRun).where(FlowRun.id == ids[0]).values(state="Failed"))
        # When it is migrated
        upgrade(engine)
        # Then the old runs are counted, and changes from then on too
        now = run_counts.hour_number(datetime.now(UTC))
        assert _check(sessions, tenant_id) == {(now, flow_id, "Scheduled"): 3, (now, flow_id, "Failed"): 1}
        with transaction(sessions) as session:
            session.execute(update(FlowRun).where(FlowRun.id == ids[1]).values(state="Failed"))
        assert _check(sessions, tenant_id) == {(now, flow_id, "Scheduled"): 2, (now, flow_id, "Failed"): 2}
    finally:
        engine.dispose()


def test_counts_leave_out_hours_before_since(factory: sessionmaker[Session]) -> None:
    tenant_id = _tenant(factory, "windowed")
    _flow(factory, tenant_id, "etl")
    ids = _runs(factory, tenant_id, "etl", 2)
    old = datetime.now(UTC) - timedelta(hours=30)
    with transaction(factory) as session:
        session.execute(update(FlowRun).where(FlowRun.id == ids[0]).values(created=old))
    since = datetime.now(UTC) - timedelta(hours=24)
    with factory() as session:
        hours = run_counts.by_hour(session, tenant_id, since)
        flows_ = run_counts.by_flow(session, tenant_id, since)
    assert list(hours.values()) == [{"Scheduled": 1}] and list(flows_.values()) == [{"Scheduled": 1}]
    (hour,) = hours
    assert hour.tzinfo is UTC and hour >= since.replace(minute=0, second=0, microsecond=0)


def test_the_server_folds_the_changes_its_runs_make(tenant: TenantContext, api_database: sessionmaker[Session]) -> None:
    # Given runs made and cancelled through the API of a running server
    name = tenant.register_flow(unique("folded")).name
    user = tenant.client(tenant.key("user"))
    runs = [user.create_flow_run(flow_name=name).id for _ in range(3)]
    user.cancel_flow_run(runs[0])

    # Then its run-counts service folds them (every services_interval_seconds), leaving the counts exact
    def pending() -> int:
        with api_database() as session:
            query = select(func.count()).where(FlowRunCountDelta.tenant_id == tenant.id)
            return int(session.scalar(query.select_from(FlowRunCountDelta)) or 0)

    deadline = time.monotonic() + 20
    while pending() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert pending() == 0
    with api_database() as session:
        assert {state: n for (state,), n in run_counts.totals(session, tenant.id, SINCE, ("state",))} == {
            "Scheduled": 2,
            "Cancelled": 1,
        }

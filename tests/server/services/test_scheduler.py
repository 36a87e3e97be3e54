"""The scheduler on a database of its own (SQLite and PostgreSQL) with an injected clock: each (flow, clock, time)
becomes one run however many schedulers race, restarts skip nothing within the catch-up window, re-registration
moves and drops runs, pause and resume, backfill."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from baton.schemas.actions import FlowCreate
from baton.schemas.schedules import BackfillRequest
from baton.server.database.connection import create_session_factory, transaction
from baton.server.database.orm import Flow, FlowRun, FlowRunLabel
from baton.server.models import flow_runs, flows, schedule_views, schedules, tenants
from baton.server.models.errors import Conflict, InvalidRequest
from baton.server.models.schedules import SchedulePolicy
from baton.server.services.scheduler import SchedulerService

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
POLICY = SchedulePolicy(horizon_seconds=600, catchup_seconds=300, max_runs_per_clock=100)


@pytest.fixture
def factory(migrated_engine: Engine) -> sessionmaker[Session]:
    return create_session_factory(migrated_engine)


@pytest.fixture
def tenant_id(factory: sessionmaker[Session]) -> str:
    with transaction(factory) as session:
        return tenants.create_tenant(session, "scheduling").id


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def register(
    factory: sessionmaker[Session],
    tenant_id: str,
    schedule: Any,
    now: datetime = T0,
    name: str = "etl",
    policy: SchedulePolicy = POLICY,
    **extra: Any,
) -> Flow:
    """What POST /api/flows does: store the version, then reconcile its scheduled runs."""
    payload = FlowCreate(name=name, entrypoint="etl", source="x", schedule=schedule, **extra)
    with transaction(factory) as session:
        flow, _created = flows.register_flow(session, tenant_id, payload)
        schedules.reconcile(session, flow, now, policy)
        session.expunge(flow)
        return flow


def runs(factory: sessionmaker[Session], name: str = "etl") -> list[FlowRun]:
    with transaction(factory) as session:
        stmt = (
            select(FlowRun)
            .join(Flow, Flow.id == FlowRun.flow_id)
            .where(Flow.name == name)
            .order_by(FlowRun.scheduled_start_time)
        )
        found = list(session.scalars(stmt))
        session.expunge_all()
        return found


def starts(factory: sessionmaker[Session], name: str = "etl") -> list[datetime]:
    return [run.scheduled_start_time for run in runs(factory, name)]


def grid(first: datetime, last: datetime, step: int) -> list[datetime]:
    count = int((last - first).total_seconds()) // step
    return [first + timedelta(seconds=step * i) for i in range(count + 1)]


def test_registration_creates_the_horizons_runs_at_once_and_a_tick_only_the_new_ones(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    # Given a flow registered with a one-minute cron (horizon 600 s)
    flow = register(factory, tenant_id, "* * * * *")
    # Then its next ten minutes have runs already, Scheduled and marked as the schedule's
    created = runs(factory)
    assert [run.scheduled_start_time for run in created] == grid(
        T0 + timedelta(minutes=1), T0 + timedelta(minutes=10), 60
    )
    assert {run.state for run in created} == {"Scheduled"}
    assert {run.flow_id for run in created} == {flow.id}
    assert all(run.schedule_key and run.schedule_key.endswith("00.000000Z") for run in created)
    # When the scheduler ticks at the same time, then it creates nothing; a minute later, one run
    clock = Clock()
    service = SchedulerService(factory, POLICY, clock)
    assert service.tick().created == 0
    clock.now = T0 + timedelta(seconds=61)
    assert service.tick().created == 1
    assert starts(factory)[-1] == T0 + timedelta(minutes=11)


def test_runs_carry_the_clocks_parameters_and_labels_else_the_flows_labels(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    schedule = [
        {"type": "interval", "every": 300, "parameter_defaults": {"n": 7}, "labels": ["fast"]},
        {"type": "interval", "every": 600, "anchor": "2026-01-01T00:01:00Z"},
    ]
    register(factory, tenant_id, schedule, labels=["etl-host"])
    by_labels = Counter((tuple(run.labels), tuple(sorted(run.parameters.items()))) for run in runs(factory))
    assert by_labels == {(("fast",), (("n", 7),)): 2, (("etl-host",), ()): 1}
    with transaction(factory) as session:
        rows = session.scalars(select(FlowRunLabel.label)).all()
    assert sorted(rows) == ["etl-host", "fast", "fast"]


def test_two_schedulers_racing_create_each_time_once_and_skip_none(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    # Given ten flows on a 10-second interval, and two schedulers (two replicas) ticking the same moments at once
    policy = SchedulePolicy(horizon_seconds=60, catchup_seconds=300, max_runs_per_clock=100)
    for index in range(10):
        register(factory, tenant_id, {"interval": 10}, name=f"flow-{index}", policy=policy)
    moments = [T0 + timedelta(seconds=6 * k) for k in range(1, 16)]
    errors: list[BaseException] = []

    def replica(chunk: int) -> None:
        clock = Clock()
        service = SchedulerService(factory, policy, clock, chunk=chunk)
        try:
            for moment in moments:
                clock.now = moment
                service.tick()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=replica, args=(chunk,)) for chunk in (3, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Then every flow has exactly one run per 10 s from its registration to the last tick's horizon
    last = moments[-1] + timedelta(seconds=60)
    for index in range(10):
        assert starts(factory, f"flow-{index}") == grid(T0 + timedelta(seconds=10), last, 10)


def test_a_restart_within_the_catchup_window_creates_the_times_it_missed_late(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    policy = SchedulePolicy(horizon_seconds=60, catchup_seconds=300, max_runs_per_clock=100)
    register(factory, tenant_id, {"interval": 10}, policy=policy)
    # When the server was down for 200 s (longer than the horizon, shorter than the catch-up window)
    clock = Clock(T0 + timedelta(seconds=200))
    SchedulerService(factory, policy, clock).tick()
    # Then the times after the last horizon are created (those already due, late), without a gap
    assert starts(factory) == grid(T0 + timedelta(seconds=10), T0 + timedelta(seconds=260), 10)


def test_after_a_long_outage_times_older_than_the_catchup_window_are_not_created(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    policy = SchedulePolicy(horizon_seconds=60, catchup_seconds=300, max_runs_per_clock=100)
    register(factory, tenant_id, {"interval": 10}, policy=policy)
    clock = Clock(T0 + timedelta(seconds=1000))
    SchedulerService(factory, policy, clock).tick()
    before = grid(T0 + timedelta(seconds=10), T0 + timedelta(seconds=60), 10)
    after = grid(T0 + timedelta(seconds=710), T0 + timedelta(seconds=1060), 10)
    assert starts(factory) == before + after  # (60, 700] were not caught up: a backfill can create them


def test_a_pass_creates_at_most_max_runs_per_clock_and_the_next_goes_on_from_there(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    policy = SchedulePolicy(horizon_seconds=3600, catchup_seconds=300, max_runs_per_clock=5)
    register(factory, tenant_id, "* * * * *", policy=policy)
    assert len(starts(factory)) == 5
    SchedulerService(factory, policy, Clock()).tick()
    assert starts(factory) == grid(T0 + timedelta(minutes=1), T0 + timedelta(minutes=10), 60)


def test_re_registration_moves_kept_clocks_runs_and_deletes_the_dropped_clocks_runs(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    # Given version 1 with two clocks, and one of the second clock's runs already claimed (Pending)
    first = register(factory, tenant_id, [{"type": "interval", "every": 120}, {"type": "interval", "every": 300}])
    before = runs(factory)
    claimed = next(run for run in before if run.scheduled_start_time.minute % 5 == 0 and run.labels == [])
    claimed_id = claimed.id
    with transaction(factory) as session:
        session.execute(update(FlowRun).where(FlowRun.id == claimed_id).values(state="Pending", state_version=1))
    kept_ids = {run.id for run in before if run.schedule_key and "/" in run.schedule_key}
    # When version 2 keeps the first clock only, with new labels
    second = register(
        factory, tenant_id, [{"type": "interval", "every": 120}], now=T0 + timedelta(seconds=30), labels=["v2"]
    )
    after = runs(factory)
    # Then the first clock's runs are the same runs, now of version 2 with its labels; the second clock's
    # not-yet-started runs are gone; the claimed one stays with version 1
    assert second.version == first.version + 1
    every_two = [run for run in after if run.id != claimed_id]
    assert [run.scheduled_start_time for run in every_two] == grid(
        T0 + timedelta(minutes=2), T0 + timedelta(minutes=10), 120
    )
    assert {run.flow_id for run in every_two} == {second.id}
    assert {tuple(run.labels) for run in every_two} == {("v2",)}
    assert {run.id for run in every_two} <= kept_ids
    assert [run.flow_id for run in after if run.id == claimed_id] == [first.id]
    with transaction(factory) as session:
        label_rows = session.scalar(select(func.count()).select_from(FlowRunLabel).where(FlowRunLabel.label == "v2"))
    assert label_rows == len(every_two)


def test_a_changed_clock_replaces_its_runs_at_registration(factory: sessionmaker[Session], tenant_id: str) -> None:
    register(factory, tenant_id, "*/5 * * * *")
    register(factory, tenant_id, "*/2 * * * *", now=T0 + timedelta(seconds=1))
    assert starts(factory) == grid(T0 + timedelta(minutes=2), T0 + timedelta(minutes=10), 120)
    register(factory, tenant_id, None, now=T0 + timedelta(seconds=2))
    assert starts(factory) == []


def test_pause_deletes_future_runs_stops_ticks_and_resume_starts_from_now(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    register(factory, tenant_id, "* * * * *")
    clock = Clock(T0 + timedelta(seconds=5))
    with transaction(factory) as session:
        paused = schedule_views.pause(session, tenant_id, "etl", clock.now)
    assert (paused.active, paused.deleted_runs, paused.next_run_time) == (False, 10, None)
    assert starts(factory) == []
    clock.now = T0 + timedelta(minutes=30)
    assert SchedulerService(factory, POLICY, clock).tick().created == 0
    # Resumed 30 minutes later: the runs of the paused time are not caught up
    with transaction(factory) as session:
        resumed = schedule_views.resume(session, tenant_id, "etl", clock.now, POLICY)
    assert resumed.active and resumed.created_runs == 10
    assert starts(factory) == grid(T0 + timedelta(minutes=31), T0 + timedelta(minutes=40), 60)
    # Re-registering a paused flow keeps it paused and creates nothing
    with transaction(factory) as session:
        schedule_views.pause(session, tenant_id, "etl", clock.now)
    register(factory, tenant_id, "*/2 * * * *", now=clock.now)
    assert starts(factory) == []


def test_backfill_creates_past_runs_once_and_counts_those_that_existed(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    register(factory, tenant_id, "0 * * * *", now=T0 - timedelta(hours=2), policy=SchedulePolicy(horizon_seconds=7200))
    request = BackfillRequest(start=T0 - timedelta(days=1), end=T0)
    with transaction(factory) as session:
        first = schedule_views.backfill(session, tenant_id, "etl", request, T0, 10_000)
    # 25 hourly times in [T0 - 1 day, T0]; the last two were created by the scheduler at registration
    assert (first.created, first.existing) == (23, 2)
    with transaction(factory) as session:
        second = schedule_views.backfill(session, tenant_id, "etl", request, T0, 10_000)
    assert (second.created, second.existing) == (0, 25)
    assert Counter(starts(factory)).most_common(1)[0][1] == 1


def test_backfill_is_bounded_and_refuses_future_ends_and_flows_without_schedule(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    register(factory, tenant_id, "* * * * *", now=T0)
    week = BackfillRequest(start=T0 - timedelta(days=7), end=T0)
    with transaction(factory) as session, pytest.raises(InvalidRequest, match="would create more than 10000 runs"):
        schedule_views.backfill(session, tenant_id, "etl", week, T0, 10_000)
    small = BackfillRequest(start=T0 - timedelta(hours=1), end=T0, max_runs=10)
    with transaction(factory) as session, pytest.raises(InvalidRequest, match="more than 10 runs"):
        schedule_views.backfill(session, tenant_id, "etl", small, T0, 10_000)
    future = BackfillRequest(start=T0, end=T0 + timedelta(hours=1))
    with transaction(factory) as session, pytest.raises(InvalidRequest, match="is in the future"):
        schedule_views.backfill(session, tenant_id, "etl", future, T0, 10_000)
    register(factory, tenant_id, None, name="plain")
    with transaction(factory) as session, pytest.raises(Conflict, match="has no schedule"):
        schedule_views.backfill(session, tenant_id, "plain", small, T0, 10_000)
    assert len(starts(factory)) == 10  # only the scheduler's runs


def test_a_stored_schedule_that_does_not_parse_is_skipped_and_still_readable(
    factory: sessionmaker[Session], tenant_id: str
) -> None:
    # Given a flow stored before schedules were checked, with a schedule that means nothing
    flow = register(factory, tenant_id, None, name="legacy")
    with transaction(factory) as session:
        session.execute(update(Flow).where(Flow.id == flow.id).values(schedule={"cron": "every tuesday-ish"}))
    register(factory, tenant_id, "* * * * *")
    # Then the scheduler goes on with the others, and reads say what is wrong
    clock = Clock(T0 + timedelta(minutes=2))
    assert SchedulerService(factory, POLICY, clock).tick().flows == 2
    assert starts(factory, "legacy") == []
    with transaction(factory) as session:
        read = schedule_views.get_schedule(session, tenant_id, "legacy", clock.now)
        served = flows.to_read(flows.get_flow(session, tenant_id, flow.id))
    assert read.clocks == [] and read.problem is not None and "does not parse" in read.problem
    assert served.schedule == {"cron": "every tuesday-ish"}


def test_a_legacy_cron_row_is_scheduled_as_its_clock(factory: sessionmaker[Session], tenant_id: str) -> None:
    # {"cron": ...} as stored before schedules fired: it parses as its clock and now fires
    flow = register(factory, tenant_id, None, name="old")
    with transaction(factory) as session:
        session.execute(update(Flow).where(Flow.id == flow.id).values(schedule={"cron": "*/5 * * * *"}))
    SchedulerService(factory, POLICY, Clock()).tick()
    assert starts(factory, "old") == grid(T0 + timedelta(minutes=5), T0 + timedelta(minutes=10), 300)


def test_auto_scheduled_runs_say_so_in_their_answer(factory: sessionmaker[Session], tenant_id: str) -> None:
    register(factory, tenant_id, "* * * * *")
    with transaction(factory) as session:
        run = session.scalars(select(FlowRun).limit(1)).one()
        read = flow_runs.to_read(session, [run])[0]
    assert read.auto_scheduled is True
    assert read.schedule_key == run.schedule_key

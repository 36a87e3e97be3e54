"""The web UI dashboard's figures, on SQLite and PostgreSQL: runs per creation hour and state over the last day,
and the flows that failed, summed over their versions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.connection import transaction
from baton.server.database.orm import FlowRun, utcnow
from baton.server.models import dashboard, run_counts
from server.harness import TenantContext, unique


def _age(sessions: sessionmaker[Session], run_id: str, created: datetime, state: str) -> None:
    # A sign of life now: the shared server's recovery service would otherwise find a Running run with no heartbeat
    # lost and fail it between this write and the count (seen once it ran past its start-up grace).
    with transaction(sessions) as session:
        session.execute(
            update(FlowRun).where(FlowRun.id == run_id).values(created=created, state=state, heartbeat_at=utcnow())
        )


def test_runs_are_counted_by_creation_hour_and_state_within_a_day(
    tenant: TenantContext, api_database: sessionmaker[Session]
) -> None:
    now = datetime(2026, 12, 2, 15, 40, tzinfo=UTC)
    name = tenant.register_flow(unique("etl")).name
    user = tenant.client(tenant.key("user"))
    placed = [
        (now - timedelta(minutes=10), "Success"),  # 15:30
        (now - timedelta(minutes=20), "Success"),  # 15:20
        (now - timedelta(minutes=30), "Failed"),  # 15:10
        (now - timedelta(hours=3, minutes=5), "Running"),  # 12:35
        (now - timedelta(hours=25), "Success"),  # older than a day: not counted
    ]
    for created, state in placed:
        _age(api_database, user.create_flow_run(flow_name=name).id, created, state)

    with api_database() as session:
        counts = run_counts.by_hour(session, tenant.id, now - timedelta(hours=24))

    assert counts == {
        datetime(2026, 12, 2, 15, tzinfo=UTC): {"Success": 2, "Failed": 1},
        datetime(2026, 12, 2, 12, tzinfo=UTC): {"Running": 1},
    }


def test_failing_flows_sum_their_versions_and_come_most_failures_first(
    tenant: TenantContext, api_database: sessionmaker[Session]
) -> None:
    now = datetime.now(UTC)
    flaky, broken, fine = unique("flaky"), unique("broken"), unique("fine")
    user = tenant.client(tenant.key("user"))
    tenant.register_flow(flaky)
    tenant.register_flow(broken)
    tenant.register_flow(fine)
    outcomes = {flaky: ["Failed", "Success", "Success"], broken: ["Failed", "Failed"], fine: ["Success"]}
    for name, states in outcomes.items():
        for n, state in enumerate(states):
            _age(api_database, user.create_flow_run(flow_name=name).id, now - timedelta(minutes=n + 1), state)
    # A new version of `broken`: its failures add to the old version's
    tenant.register_flow(broken, description="v2")
    _age(api_database, user.create_flow_run(flow_name=broken).id, now - timedelta(seconds=5), "Failed")
    # A failure older than a day does not count
    _age(api_database, user.create_flow_run(flow_name=fine).id, now - timedelta(hours=30), "Failed")

    with api_database() as session:
        failing = dashboard.failing_flows(session, tenant.id, now - timedelta(hours=24))

    assert [(f.name, f.failed, f.total) for f in failing] == [(broken, 3, 3), (flaky, 1, 3)]
    assert failing[0].last_failed is not None and now - failing[0].last_failed < timedelta(seconds=10)

"""Every writer of runs fills migration 0013's copies: a run's ``flow_name`` is its flow's name, and each of its
label rows holds the run's ``tenant_id`` and ``created``. The runs lists by flow and by label read only the copies,
so a writer that forgot one would leave its runs out of those lists (the columns are nullable: see 0013)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.schemas.actions import FlowCreate
from baton.schemas.responses import FlowRead
from baton.server.database.connection import create_session_factory, transaction
from baton.server.database.orm import Flow, FlowRun, FlowRunLabel
from baton.server.models import flows, schedules, tenants
from baton.server.models.schedules import SchedulePolicy
from server.harness import TenantContext, raw_http

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
POLICY = SchedulePolicy(horizon_seconds=600, catchup_seconds=300, max_runs_per_clock=100)


def copies(session: Session, run_ids: list[str]) -> list[dict[str, Any]]:
    """Per run: whether its copies agree with the run and its flow, and its labels as rows and as the run says."""
    found = []
    for run, flow_name in session.execute(
        select(FlowRun, Flow.name).join(Flow, Flow.id == FlowRun.flow_id).where(FlowRun.id.in_(run_ids))
    ):
        rows = session.scalars(select(FlowRunLabel).where(FlowRunLabel.flow_run_id == run.id)).all()
        found.append(
            {
                "flow_name": run.flow_name == flow_name,
                "labels": sorted(row.label for row in rows) == sorted(run.labels),
                "tenant_id": all(row.tenant_id == run.tenant_id for row in rows),
                "created": all(row.created == run.created for row in rows),
            }
        )
    assert len(found) == len(run_ids)
    return found


ALL_TRUE = {"flow_name": True, "labels": True, "tenant_id": True, "created": True}


def test_a_run_made_by_the_api_carries_the_copies(
    tenant: TenantContext, user: Client, flow: FlowRead, api_database: sessionmaker[Session]
) -> None:
    made = [
        user.create_flow_run(flow_name=flow.name, labels=["gpu", "eu"]),
        user.create_flow_run(flow_id=flow.id, labels=["gpu"], idempotency_key="copies-1"),
        user.create_flow_run(flow_name=flow.name),  # no labels: no label rows, the run's name still copied
    ]
    with transaction(api_database) as session:
        assert copies(session, [run.id for run in made]) == [ALL_TRUE] * 3
        labelled = session.scalar(select(FlowRunLabel).where(FlowRunLabel.flow_run_id == made[1].id))
    assert labelled is not None and (labelled.tenant_id, labelled.created) == (tenant.id, made[1].created)
    # And the lists that read the copies find them
    with raw_http(tenant.server, tenant.key("user")) as http:
        for query, expected in (({"label": "gpu"}, made[1::-1]), ({"flow_name": flow.name}, made[::-1])):
            answer = http.get("/api/flow_runs", params=query)
            assert answer.status_code == 200, answer.text
            assert [item["id"] for item in answer.json()] == [run.id for run in expected]


@pytest.fixture
def factory(migrated_engine: Engine) -> sessionmaker[Session]:
    return create_session_factory(migrated_engine)


def register(factory: sessionmaker[Session], tenant_id: str, schedule: Any, now: datetime, **extra: Any) -> Flow:
    """What POST /api/flows does: store the version, then reconcile its scheduled runs (moves them to it)."""
    payload = FlowCreate(name="etl", entrypoint="etl", source="x", schedule=schedule, **extra)
    with transaction(factory) as session:
        flow, _created = flows.register_flow(session, tenant_id, payload)
        schedules.reconcile(session, flow, now, POLICY)
        session.expunge(flow)
        return flow


def scheduled_runs(factory: sessionmaker[Session]) -> list[FlowRun]:
    with transaction(factory) as session:
        found = list(session.scalars(select(FlowRun).where(FlowRun.schedule_key.is_not(None))))
        session.expunge_all()
        return found


def test_the_schedulers_runs_and_a_run_moved_to_a_new_version_carry_the_copies(factory: sessionmaker[Session]) -> None:
    # Given a flow on two clocks, one labelled: the scheduler's batch insert made its runs
    with transaction(factory) as session:
        tenant_id = tenants.create_tenant(session, "copies").id
    clocks = [{"type": "interval", "every": 120, "labels": ["fast"]}, {"type": "interval", "every": 300}]
    first = register(factory, tenant_id, clocks, T0, labels=["etl-host"])
    made = scheduled_runs(factory)
    assert {tuple(run.labels) for run in made} == {("fast",), ("etl-host",)}
    with transaction(factory) as session:
        assert copies(session, [run.id for run in made]) == [ALL_TRUE] * len(made)
    # When version 2 changes the flow's labels: the second clock's runs move to it, their label rows rewritten
    second = register(factory, tenant_id, clocks, T0 + timedelta(seconds=30), labels=["v2"])
    moved = [run for run in scheduled_runs(factory) if run.labels == ["v2"]]
    # Then they carry the copies still, with the same creation time and name
    assert moved and {run.flow_id for run in moved} == {second.id} != {first.id}
    with transaction(factory) as session:
        assert copies(session, [run.id for run in moved]) == [ALL_TRUE] * len(moved)
        assert {run.flow_name for run in session.scalars(select(FlowRun))} == {"etl"}

"""``GET /api/flow_runs``: the label and created_after filters (added with the web UI's runs list)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.server.database.connection import transaction
from baton.server.database.orm import FlowRun
from server.harness import TenantContext, unique


def test_label_and_created_after_narrow_the_list(
    tenant: TenantContext, user: Client, api_database: sessionmaker[Session]
) -> None:
    name = tenant.register_flow(unique("etl")).name
    gpu = user.create_flow_run(flow_name=name, labels=["gpu"])
    plain = user.create_flow_run(flow_name=name)
    old = user.create_flow_run(flow_name=name, labels=["gpu"])
    with transaction(api_database) as session:
        week_ago = datetime.now(UTC) - timedelta(days=7)
        session.execute(update(FlowRun).where(FlowRun.id == old.id).values(created=week_ago))
    http = tenant.raw(tenant.key("user"))
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

    by_label = http.get("/api/flow_runs", params={"flow_name": name, "label": "gpu"}).json()
    recent = http.get("/api/flow_runs", params={"flow_name": name, "created_after": since}).json()
    both = http.get("/api/flow_runs", params={"flow_name": name, "label": "gpu", "created_after": since}).json()

    assert {run["id"] for run in by_label} == {gpu.id, old.id}
    assert {run["id"] for run in recent} == {gpu.id, plain.id}
    assert [run["id"] for run in both] == [gpu.id]


@pytest.mark.parametrize("value", ["0.5", "yesterday", "2026-12-02T10:00:00", "1e9", "2026-13-40T00:00:00Z"])
def test_created_after_must_be_an_iso_time_with_an_offset(tenant: TenantContext, value: str) -> None:
    answer = tenant.raw(tenant.key("read")).get("/api/flow_runs", params={"created_after": value})

    assert answer.status_code == 422
    assert "created_after" in answer.json()["detail"]

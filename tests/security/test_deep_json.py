"""Issue 8, item 3: deeply nested JSON poisoned a tenant.

Parameters nested ~300 deep answered 500 but the run was stored; afterwards every list and claim of the tenant
answered 500. Now one limit (``MAX_JSON_DEPTH`` = 32) holds at every door where JSON enters, with 422 and nothing
stored, and a row that cannot be served (written before the limit, or straight into the database) never breaks a
list or a claim: lists serve it with the field left out, claims fail it instead of handing it out.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from baton.schemas.core import MAX_JSON_DEPTH
from baton.server.database.connection import transaction
from baton.server.database.orm import FlowRun, FlowRunState, utcnow
from security.input_support import database_of, deep_text, nested, start_server
from server.harness import TenantContext, unique
from support import ServerProcess


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def deep_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from start_server(request, tmp_path_factory)


@pytest.fixture(scope="module")
def deep_database(deep_server: ServerProcess) -> Iterator[sessionmaker[Session]]:
    yield from database_of(deep_server)


@pytest.fixture
def tenant(deep_server: ServerProcess, deep_database: sessionmaker[Session]) -> Iterator[TenantContext]:
    context = TenantContext.create(deep_server, deep_database)
    yield context
    context.close()


def flow_body(**extra: Any) -> dict[str, Any]:
    return {"name": unique("deep"), "entrypoint": "hello", "source": "x", **extra}


TOO_DEEP = nested(MAX_JSON_DEPTH + 1)
# Every JSON field a user key or a run token can send, each one level too deep.
FLOW_DOORS = {
    "parameters_schema": {"parameters_schema": {"type": "object", "default": TOO_DEEP}},
    "schedule": {"schedule": TOO_DEEP},
    "run_config.job_template": {"run_config": {"job_template": TOO_DEEP}},
    "run_config.host_config": {"run_config": {"host_config": TOO_DEEP}},
    "run_config.env": {"run_config": {"env": {"A": TOO_DEEP}}},
    "storage": {"storage": {"type": "api", "path": TOO_DEEP}},
}


@pytest.mark.parametrize("door", list(FLOW_DOORS))
def test_a_flow_with_json_nested_too_deep_is_422_and_not_registered(tenant: TenantContext, door: str) -> None:
    body = flow_body(**FLOW_DOORS[door])

    response = tenant.raw(tenant.key("user")).post("/api/flows", json=body)

    assert response.status_code == 422, response.text
    assert tenant.admin.list_flows(name=body["name"]) == []


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 300, 5_000, 100_000])
def test_parameters_nested_too_deep_are_422_and_no_run_is_stored(tenant: TenantContext, depth: int) -> None:
    tenant.register_flow("hello", parameters_schema={})
    body = '{"flow_name": "hello", "parameters": ' + deep_text(depth) + "}"

    response = tenant.raw(tenant.key("user")).post(
        "/api/flow_runs", content=body, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 422, response.text
    assert "nested deeper than" in response.text
    assert tenant.admin.list_flow_runs() == []


def test_parameters_at_the_limit_are_stored_and_served_back(tenant: TenantContext) -> None:
    tenant.register_flow("hello", parameters_schema={})
    parameters = nested(MAX_JSON_DEPTH)

    run = tenant.client(tenant.key("user")).create_flow_run(flow_name="hello", parameters=parameters)

    assert tenant.run(run.id).parameters == parameters
    assert [r.id for r in tenant.admin.list_flow_runs()] == [run.id]


def test_a_run_token_cannot_store_state_data_nested_too_deep(tenant: TenantContext) -> None:
    run = tenant.stage("Running")

    response = tenant.raw(run.token).post(f"/api/flow_runs/{run.id}/state", json={"name": "Success", "data": TOO_DEEP})

    assert response.status_code == 422, response.text
    after = tenant.run(run.id)
    assert after.state == "Running"
    assert [state.data for state in after.states if state.data and "a" in state.data] == []


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/flow_runs/{run}/logs", {"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": TOO_DEEP}]}),
        (
            "/api/flow_runs/{run}/logs",
            {"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": "x", "name": TOO_DEEP}]},
        ),
        ("/api/flow_runs/{run}/task_runs", {"task_name": TOO_DEEP}),
    ],
    ids=["log-message", "log-name", "task-name"],
)
def test_log_and_task_run_fields_nested_too_deep_are_422(
    tenant: TenantContext, path: str, body: dict[str, Any]
) -> None:
    run = tenant.stage("Running")

    response = tenant.raw(run.token).post(path.format(run=run.id), json=body)

    assert response.status_code == 422, response.text


def test_a_body_nested_30000_deep_is_422_on_every_route(tenant: TenantContext) -> None:
    # json.loads gives up with RecursionError near 1000 levels: that was a 400 with no reason, or a 500. 30,000
    # levels are 60 KB, under the 64 KiB claims take (bigger bodies are 413 there before any parsing).
    run = tenant.stage("Running")
    agent = tenant.client(tenant.key("runner")).register_agent(unique("agent"), "local", [])
    body = "[" * 30_000 + "]" * 30_000
    paths = [
        "/api/flows",
        "/api/flow_runs",
        f"/api/flow_runs/{run.id}/state",
        f"/api/flow_runs/{run.id}/logs",
        f"/api/agents/{agent.id}/claim",
        f"/api/agents/{agent.id}/heartbeat",
        "/api/keys",
    ]
    admin = tenant.raw(tenant.admin_key)
    for path in paths:
        response = admin.post(path, content=body, headers={"Content-Type": "application/json"})
        assert response.status_code == 422, f"{path}: {response.status_code} {response.text[:300]}"
        assert "nested deeper than" in response.json()["detail"]


# --- rows written straight into the database ------------------------------------------------------------------


def insert_run(factory: sessionmaker[Session], tenant: TenantContext, flow_id: str, **columns: Any) -> str:
    """A Scheduled, unlabelled run written with SQLAlchemy, past every API check; its id."""
    now = utcnow()
    values: dict[str, Any] = {
        "tenant_id": tenant.id,
        "flow_id": flow_id,
        "name": unique("bad-row"),
        "parameters": {},
        "labels": [],
        "label_count": 0,
        "run_config": {},
        "scheduled_start_time": now - timedelta(minutes=5),  # due before the good runs: a claim meets it first
        "state": "Scheduled",
        "state_version": 0,
        "created": now,
        "updated": now,
        **columns,
    }
    with transaction(factory) as session:
        run = FlowRun(**values)
        session.add(run)
        session.flush()
        session.add(FlowRunState(flow_run_id=run.id, name="Scheduled", timestamp=now, data=columns.get("deployment")))
        return run.id


BAD_ROWS = {
    "parameters-300-deep": {"parameters": nested(300)},
    "run-config-not-a-run-config": {"run_config": {"type": "nonsense", "ports": "x"}},
    "deployment-300-deep": {"deployment": nested(300)},
}


@pytest.mark.parametrize("columns", list(BAD_ROWS.values()), ids=list(BAD_ROWS))
def test_a_bad_row_in_the_database_breaks_neither_the_list_nor_the_claim(
    tenant: TenantContext, deep_database: sessionmaker[Session], columns: dict[str, Any]
) -> None:
    # Given a tenant with two good runs and one row no API call could store
    flow = tenant.register_flow("hello")
    user = tenant.client(tenant.key("user"))
    good = [user.create_flow_run(flow_name="hello", parameters={"name": "Ada"}).id for _ in range(2)]
    bad = insert_run(deep_database, tenant, flow.id, **columns)

    # When the tenant's runs are listed, the bad one read alone, and an agent claims
    listed = tenant.raw(tenant.admin_key).get("/api/flow_runs")
    alone = tenant.raw(tenant.admin_key).get(f"/api/flow_runs/{bad}")
    runner = tenant.client(tenant.key("runner"))
    agent = runner.register_agent(unique("agent"), "local", [])
    claim = tenant.raw(tenant.key("runner")).post(f"/api/agents/{agent.id}/claim", json={"limit": 10})

    # Then every answer is 200: the list serves all three runs, the bad one with the field left out
    assert listed.status_code == 200, listed.text
    assert {run["id"] for run in listed.json()} == {*good, bad}
    assert alone.status_code == 200, alone.text
    # and the claim hands out the good runs only: the bad one is Failed with the reason, never deployed
    assert claim.status_code == 200, claim.text
    assert sorted(c["flow_run"]["id"] for c in claim.json()["runs"]) == sorted(good)
    failed = tenant.run(bad)
    assert failed.state == "Failed"
    assert "cannot be served" in (failed.state_message or "")


def test_a_bad_row_of_state_data_does_not_break_reading_the_run(
    tenant: TenantContext, deep_database: sessionmaker[Session]
) -> None:
    flow = tenant.register_flow("hello")
    run = tenant.client(tenant.key("user")).create_flow_run(flow_name="hello")
    with transaction(deep_database) as session:
        session.add(FlowRunState(flow_run_id=run.id, name="Scheduled", timestamp=utcnow(), data=nested(300)))

    response = tenant.raw(tenant.admin_key).get("/api/flow_runs")

    assert response.status_code == 200, response.text
    assert [r["id"] for r in response.json()] == [run.id]
    assert flow.id == response.json()[0]["flow_id"]


def test_the_old_poisoning_cannot_happen_through_the_api(deep_server: ServerProcess, tenant: TenantContext) -> None:
    # The exact sequence: a 300-deep create, then the list and a claim
    tenant.register_flow("hello", parameters_schema={})
    user = tenant.raw(tenant.key("user"))
    created = user.post(
        "/api/flow_runs",
        content='{"flow_name": "hello", "parameters": ' + deep_text(300) + "}",
        headers={"Content-Type": "application/json"},
    )
    listed = httpx.get(
        f"{deep_server.url}/api/flow_runs", headers={"Authorization": f"Bearer {tenant.admin_key}"}, timeout=30
    )

    assert created.status_code == 422
    assert listed.status_code == 200
    assert listed.json() == []

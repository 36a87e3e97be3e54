"""Flow registration (versions by content) and reads."""

from __future__ import annotations

from typing import Any

import pytest

from baton.client import Client
from baton.exceptions import ClientError, NotFoundError, PermissionDeniedError
from baton.schemas.responses import ClaimedRun, FlowRead
from server.harness import TenantContext
from support import HELLO_SOURCE


def flow_payload(**extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "name": "hello",
        "entrypoint": "hello",
        "source": HELLO_SOURCE,
        "source_filename": "/flows/hello.py",
        "parameters_schema": {"type": "object", "properties": {"name": {"type": "string"}}},
        "tasks": ["greet"],
    }
    payload.update(extra)
    return payload


def test_first_registration_is_version_1_with_201(tenant: TenantContext) -> None:
    response = tenant.raw(tenant.admin_key).post("/api/flows", json=flow_payload(labels=["b", "a", "b"]))

    assert response.status_code == 201
    body = response.json()
    assert (body["name"], body["version"], body["labels"], body["tasks"]) == ("hello", 1, ["a", "b"], ["greet"])
    assert body["source"] is None  # only on GET with include_source


def test_same_content_returns_the_same_version_with_200(tenant: TenantContext) -> None:
    http = tenant.raw(tenant.admin_key)
    first = http.post("/api/flows", json=flow_payload())

    again = http.post("/api/flows", json=flow_payload())

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["version"] == 1


@pytest.mark.parametrize(
    "change",
    [
        {"source": HELLO_SOURCE + "\n# changed\n"},
        {"labels": ["gpu"]},
        {"run_config": {"type": "docker", "image": "python:3.11"}},
        {"parameters_schema": {"type": "object", "properties": {"name": {"type": "integer"}}}},
    ],
    ids=["source", "labels", "run_config", "parameters"],
)
def test_changed_content_makes_the_next_version_with_201(tenant: TenantContext, change: dict[str, Any]) -> None:
    http = tenant.raw(tenant.admin_key)
    first = http.post("/api/flows", json=flow_payload()).json()

    changed = http.post("/api/flows", json=flow_payload(**change))

    assert changed.status_code == 201
    assert changed.json()["version"] == 2
    assert changed.json()["id"] != first["id"]


def test_versions_are_per_flow_name(tenant: TenantContext) -> None:
    tenant.register_flow("hello")
    tenant.register_flow("hello", labels=["v2"])

    other = tenant.register_flow("other")

    assert other.version == 1


def test_list_flows_shows_latest_versions_unless_all_asked(tenant: TenantContext, admin: Client) -> None:
    tenant.register_flow("hello")
    latest = tenant.register_flow("hello", labels=["v2"])
    other = tenant.register_flow("other")

    assert [(f.name, f.version) for f in admin.list_flows()] == [("hello", 2), ("other", 1)]
    assert [f.id for f in admin.list_flows(name="hello")] == [latest.id]
    everything = admin.request("GET", "/api/flows", params={"all_versions": "true"})
    assert [(f["name"], f["version"]) for f in everything] == [("hello", 2), ("hello", 1), ("other", 1)]
    assert other.id in {f["id"] for f in everything}


def test_get_flow_includes_source_only_when_asked(admin: Client, flow: FlowRead) -> None:
    assert admin.get_flow(flow.id).source is None
    assert admin.get_flow(flow.id, include_source=True).source == HELLO_SOURCE


@pytest.mark.parametrize("role", ["user", "admin"])
def test_user_and_admin_may_register(tenant: TenantContext, role: str) -> None:
    flow = tenant.client(tenant.key(role)).register_flow(flow_payload())

    assert flow.version == 1


@pytest.mark.parametrize("role", ["runner", "read"])
def test_runner_and_read_keys_may_not_register(tenant: TenantContext, role: str) -> None:
    with pytest.raises(PermissionDeniedError, match=f"role \\({role}\\)"):
        tenant.client(tenant.key(role)).register_flow(flow_payload())


def test_read_key_may_read_flows(reader: Client, flow: FlowRead) -> None:
    assert reader.get_flow(flow.id).id == flow.id
    assert [f.id for f in reader.list_flows()] == [flow.id]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"source": None}, "storage 'api' needs the flow's source"),
        ({"storage": {"type": "local"}}, "storage 'local' needs a path"),
        ({"name": "bad/name"}, "name"),
        ({"entrypoint": ""}, "entrypoint"),
    ],
)
def test_incomplete_registration_is_refused_with_422(admin: Client, change: dict[str, Any], message: str) -> None:
    with pytest.raises(ClientError) as excinfo:
        admin.register_flow(flow_payload(**change))

    assert excinfo.value.status_code == 422
    assert message in excinfo.value.detail


def test_run_config_labels_are_normalised(admin: Client) -> None:
    flow = admin.register_flow(flow_payload(run_config={"labels": ["z", "a", "z"]}))

    assert flow.run_config.labels == ["a", "z"]


def test_other_tenant_gets_404_for_a_flow(flow: FlowRead, other_tenant: TenantContext) -> None:
    with pytest.raises(NotFoundError, match=f"flow {flow.id} not found"):
        other_tenant.admin.get_flow(flow.id)
    assert other_tenant.admin.list_flows() == []


def test_run_token_reads_only_its_own_runs_flow(tenant: TenantContext, claimed: ClaimedRun, flow: FlowRead) -> None:
    other_flow = tenant.register_flow("other")
    token = tenant.client(claimed.run_token)

    assert token.get_flow(flow.id, include_source=True).source == HELLO_SOURCE
    with pytest.raises(NotFoundError):
        token.get_flow(other_flow.id)
    with pytest.raises(PermissionDeniedError, match="a run token may only act on its own flow run"):
        token.list_flows()
    with pytest.raises(PermissionDeniedError):
        token.register_flow(flow_payload(name="sneaky"))

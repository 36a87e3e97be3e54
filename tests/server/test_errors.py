"""Bad input on every route gets a 4xx with a ``detail``, never a 5xx; bad credentials get 401."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from server.harness import TenantContext
from support import HELLO_SOURCE, ServerProcess


@dataclass
class Ids:
    run: str
    flow: str
    agent: str
    task_run: str

    def fill(self, path: str) -> str:
        return path.format(run=self.run, flow=self.flow, agent=self.agent, task_run=self.task_run)


@pytest.fixture(scope="module")
def shared_tenant(api_server: ServerProcess, api_database: sessionmaker[Session]) -> Iterator[TenantContext]:
    """One tenant for the tests here that change nothing (refused requests): hundreds of cases stay cheap."""
    context = TenantContext.create(api_server, api_database)
    yield context
    context.close()


def make_ids(tenant: TenantContext) -> Ids:
    """A claimed run with a task run: real ids for every route."""
    staged = tenant.stage("Pending", runner=tenant.admin)  # its agent is the admin key's: the key here
    task_run = tenant.client(staged.token or "").create_task_run(staged.id, "greet")
    flow_id = tenant.run(staged.id).flow_id
    return Ids(staged.id, flow_id, staged.agent_id or "", task_run.id)


@pytest.fixture(scope="module")
def ids(shared_tenant: TenantContext) -> Ids:
    return make_ids(shared_tenant)


@pytest.fixture(scope="module")
def http(shared_tenant: TenantContext) -> httpx.Client:
    """Raw HTTP with the shared tenant's admin key."""
    return shared_tenant.raw(shared_tenant.admin_key)


@pytest.fixture(scope="module")
def anonymous(shared_tenant: TenantContext) -> httpx.Client:
    """Raw HTTP with no Authorization header."""
    return shared_tenant.raw()


FLOW = {"name": "hello", "entrypoint": "hello", "source": HELLO_SOURCE}
# Every route that takes a body: a valid body, and one with wrong types.
BODY_ROUTES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("/api/keys", {"role": "read"}, {"role": 5, "name": ["x"]}),
    ("/api/flows", FLOW, {"name": 5, "entrypoint": [], "source": {}}),
    ("/api/flow_runs", {"flow_name": "hello"}, {"flow_name": ["hello"], "parameters": "x", "labels": "dev"}),
    ("/api/flow_runs/{run}/state", {"name": "Submitted"}, {"name": 3, "data": "x"}),
    ("/api/flow_runs/{run}/logs", {"logs": []}, {"logs": "x"}),
    ("/api/flow_runs/{run}/task_runs", {"task_name": "t"}, {"task_name": {}, "state": 1}),
    ("/api/task_runs/{task_run}/state", {"state": "Running"}, {"state": 3, "attempt": "two"}),
    ("/api/agents", {"name": "a", "type": "local"}, {"name": True, "type": 1, "labels": "dev"}),
    ("/api/agents/{agent}/claim", {}, {"limit": "many", "wait_seconds": [1]}),
    ("/api/agents/{agent}/heartbeat", {}, {"deployments": {}}),
]
BODY_IDS = [path.split("/api/")[1].replace("/", "_").replace("{", "").replace("}", "") for path, _, _ in BODY_ROUTES]
# Every route: method, path, and a body that would be valid.
ALL_ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("GET", "/api/whoami", None),
    ("GET", "/api/keys", None),
    ("GET", "/api/flows", None),
    ("GET", "/api/flows/{flow}", None),
    ("GET", "/api/flow_runs", None),
    ("GET", "/api/flow_runs/{run}", None),
    ("POST", "/api/flow_runs/{run}/cancel", None),
    ("POST", "/api/flow_runs/{run}/retry", None),
    ("GET", "/api/flow_runs/{run}/explain", None),
    ("POST", "/api/flow_runs/{run}/heartbeat", None),
    ("GET", "/api/flow_runs/{run}/logs", None),
    ("GET", "/api/flow_runs/{run}/task_runs", None),
    ("GET", "/api/agents", None),
    *(("POST", path, valid) for path, valid, _ in BODY_ROUTES),
]
ALL_IDS = [f"{m}-{p.split('/api/')[1]}" for m, p, _ in ALL_ROUTES]


def assert_client_error(response: httpx.Response, status: int | None = None) -> None:
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if status is not None:
        assert response.status_code == status, response.text[:500]
    detail = response.json()["detail"]
    assert detail, response.text


def post_raw(http: httpx.Client, path: str, content: bytes) -> httpx.Response:
    return http.post(path, content=content, headers={"Content-Type": "application/json"})


# --- bodies --------------------------------------------------------------------------------------------

MALFORMED = {
    "truncated-json": b'{"name": ',
    "not-json": b"name=hello",
    "invalid-utf8": b'{"name": "\xff\xfe\xfa"}',
    "array": b"[]",
    "string": b'"hello"',
    "number": b"5",
    "null": b"null",
    "deeply-nested": b'{"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
}


@pytest.mark.parametrize("body", list(MALFORMED.values()), ids=list(MALFORMED))
@pytest.mark.parametrize(("path", "valid", "wrong"), BODY_ROUTES, ids=BODY_IDS)
def test_malformed_body_is_4xx(
    http: httpx.Client, ids: Ids, path: str, valid: dict[str, Any], wrong: dict[str, Any], body: bytes
) -> None:
    assert_client_error(post_raw(http, ids.fill(path), body))


@pytest.mark.parametrize(("path", "valid", "wrong"), BODY_ROUTES, ids=BODY_IDS)
def test_wrong_types_are_422_naming_the_fields(
    http: httpx.Client, ids: Ids, path: str, valid: dict[str, Any], wrong: dict[str, Any]
) -> None:
    response = http.post(ids.fill(path), json=wrong)

    assert_client_error(response, 422)
    named = {str(part) for error in response.json()["detail"] for part in error["loc"]}
    assert set(wrong) & named, response.text


@pytest.mark.parametrize(("path", "valid", "wrong"), BODY_ROUTES, ids=BODY_IDS)
def test_unknown_fields_are_422_and_the_valid_body_works(
    tenant: TenantContext, path: str, valid: dict[str, Any], wrong: dict[str, Any]
) -> None:
    # A tenant of its own: the valid request changes things
    http, ids = tenant.raw(tenant.admin_key), make_ids(tenant)

    typo = http.post(ids.fill(path), json={**valid, "lables": ["dev"]})
    control = http.post(ids.fill(path), json=valid)

    assert_client_error(typo, 422)
    assert "lables" in json.dumps(typo.json()["detail"])
    assert control.status_code < 300, control.text


def test_text_content_type_is_4xx(http: httpx.Client) -> None:
    response = http.post("/api/agents", content=b"name=a", headers={"Content-Type": "text/plain"})

    assert_client_error(response)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/agents", {"name": "a", "type": "local", "labels": [f"l{i}" for i in range(65)]}),
        ("/api/flows", {**FLOW, "labels": [f"l{i}" for i in range(65)]}),
        ("/api/flows", {**FLOW, "run_config": {"labels": [f"l{i}" for i in range(65)]}}),
        ("/api/flow_runs", {"flow_name": "hello", "labels": [f"l{i}" for i in range(65)]}),
        ("/api/flow_runs", {"flow_name": "hello", "labels": ["x"] * 10_000}),
    ],
    ids=["agent", "flow", "run-config", "run", "run-10000-duplicates"],
)
def test_more_than_64_labels_are_422(http: httpx.Client, ids: Ids, path: str, body: dict[str, Any]) -> None:
    response = http.post(path, json=body)

    assert_client_error(response, 422)
    assert "64" in json.dumps(response.json()["detail"])


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/agents", {"name": "a", "type": "local", "labels": ["has space"]}),
        ("/api/flows", {**FLOW, "labels": ["a,b"]}),
        ("/api/flows", {**FLOW, "run_config": {"labels": [""]}}),
        ("/api/flow_runs", {"flow_name": "hello", "labels": ["x" * 129]}),
        ("/api/flow_runs", {"flow_name": "hello", "labels": [5]}),
    ],
    ids=["space", "comma", "empty", "too-long", "not-a-string"],
)
def test_invalid_labels_are_422(http: httpx.Client, ids: Ids, path: str, body: dict[str, Any]) -> None:
    assert_client_error(http.post(path, json=body), 422)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/agents/{agent}/claim", {"limit": 0}),
        ("/api/agents/{agent}/claim", {"limit": 101}),
        ("/api/agents/{agent}/claim", {"wait_seconds": -1}),
        ("/api/agents/{agent}/claim", {"wait_seconds": 1e308}),
        ("/api/agents/{agent}/claim", {"prefetch_seconds": -0.5}),
        ("/api/flow_runs", {"flow_name": "hello", "flow_version": 0}),
        ("/api/flow_runs/{run}/logs", {"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": "x", "level": -1}]}),
        ("/api/flow_runs/{run}/logs", {"logs": [{"timestamp": "yesterday", "message": "x"}]}),
        ("/api/task_runs/{task_run}/state", {"state": "Running", "attempt": 0}),
        ("/api/flow_runs/{run}/state", {"name": "Bogus"}),
        ("/api/flow_runs/{run}/state", {"name": "running"}),
        ("/api/flow_runs/{run}/state", {"name": "Failed", "message": "x" * 100_001}),
    ],
)
def test_out_of_range_values_are_422(http: httpx.Client, ids: Ids, path: str, body: dict[str, Any]) -> None:
    assert_client_error(http.post(ids.fill(path), json=body), 422)


NAIVE_LOG_TIME = (
    "server bug: schemas/actions.py LogEntry.timestamp accepts naive datetimes, which orm.UTCDateTime refuses "
    "at INSERT (StatementError) → 500"
)
UTC_OVERFLOW = (
    "server bug: an aware datetime whose UTC value leaves years 1..9999 passes validation, then "
    "orm.UTCDateTime.process_bind_param's astimezone(UTC) raises OverflowError (StatementError) → 500"
)
HUGE_INT = "server bug: an int field with no upper bound reaches the SQLite driver, which raises OverflowError → 500"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        pytest.param(
            "/api/flow_runs/{run}/logs",
            {"logs": [{"timestamp": "2030-01-01T00:00:00", "message": "naive"}]},
            id="naive-log-timestamp",
        ),
        pytest.param(
            "/api/flow_runs/{run}/logs",
            {"logs": [{"timestamp": "9999-12-31T23:59:59-01:00", "message": "x"}]},
            id="log-timestamp-beyond-year-9999-in-utc",
        ),
        pytest.param(
            "/api/flow_runs",
            {"flow_name": "hello", "scheduled_start_time": "9999-12-31T23:59:59-01:00"},
            id="start-time-beyond-year-9999-in-utc",
        ),
        pytest.param(
            "/api/flow_runs",
            {"flow_name": "hello", "scheduled_start_time": "0001-01-01T00:00:00+01:00"},
            id="start-time-before-year-1-in-utc",
        ),
        pytest.param(
            "/api/flow_runs",
            {"flow_name": "hello", "flow_version": 10**30},
            id="huge-flow-version",
        ),
        pytest.param(
            "/api/task_runs/{task_run}/state",
            {"state": "Running", "attempt": 10**30},
            id="huge-task-attempt",
        ),
        pytest.param(
            "/api/agents/{agent}/heartbeat",
            {"deployments": [{"flow_run_id": "x", "alive": False, "exit_code": 10**30}]},
            id="huge-exit-code",
        ),
        pytest.param(
            "/api/flow_runs",
            {"flow_name": "hello", "scheduled_start_time": "9999-12-31T23:59:59Z"},
            id="start-time-year-9999",
        ),
    ],
)
def test_edge_values_never_cause_a_server_error(http: httpx.Client, ids: Ids, path: str, body: dict[str, Any]) -> None:
    response = http.post(ids.fill(path), json=body)

    assert http.get("/api/health").status_code == 200
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_client_error(response)


# --- query parameters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/api/flow_runs", {"limit": -1}),
        ("/api/flow_runs", {"limit": 0}),
        ("/api/flow_runs", {"limit": 1001}),
        ("/api/flow_runs", {"limit": "abc"}),
        ("/api/flow_runs", {"limit": "1e3"}),
        ("/api/flow_runs", {"offset": -1}),
        ("/api/flow_runs", {"state": "Bogus"}),
        ("/api/flow_runs", {"state": "scheduled"}),
        ("/api/flow_runs", {"flow_name": "x" * 201}),
        ("/api/flow_runs/{run}/logs", {"limit": 0}),
        ("/api/flow_runs/{run}/logs", {"limit": 5001}),
        ("/api/flow_runs/{run}/logs", {"offset": -1}),
        ("/api/flow_runs/{run}/logs", {"offset": "next"}),
        ("/api/flows", {"all_versions": "maybe"}),
        ("/api/flows", {"name": "x" * 201}),
        ("/api/flows/{flow}", {"include_source": "maybe"}),
    ],
)
def test_bad_query_parameters_are_422(http: httpx.Client, ids: Ids, path: str, params: dict[str, Any]) -> None:
    assert_client_error(http.get(ids.fill(path), params=params), 422)


@pytest.mark.parametrize("path", ["/api/flow_runs", "/api/flow_runs/{run}/logs"])
def test_huge_offset_is_not_a_server_error(http: httpx.Client, ids: Ids, path: str) -> None:
    response = http.get(ids.fill(path), params={"offset": 10**30})

    assert response.status_code < 500, response.text


# --- unknown ids -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_id", ["no-such-id", "x" * 5000, "%00"], ids=["unknown", "5000-chars", "nul"])
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [r for r in ALL_ROUTES if "{" in r[1]],
    ids=[i for i, r in zip(ALL_IDS, ALL_ROUTES, strict=True) if "{" in r[1]],
)
def test_unknown_ids_are_404(
    http: httpx.Client, method: str, path: str, body: dict[str, Any] | None, bad_id: str
) -> None:
    url = path.format(run=bad_id, flow=bad_id, agent=bad_id, task_run=bad_id)

    response = http.request(method, url, json=body)

    assert_client_error(response, 404)
    assert "not found" in response.json()["detail"]


# --- credentials -----------------------------------------------------------------------------------------

BAD_AUTHORIZATION = {
    "missing": None,
    "empty": "",
    "basic": "Basic dXNlcjpwYXNz",
    "scheme-only": "Bearer",
    "other-scheme": "Token bat_" + "0" * 43,
    "unknown-key": "Bearer bat_" + "0" * 43,
    "unknown-run-token": "Bearer batr_" + "0" * 43,
    "garbage": "Bearer !!!not a key at all!!!",
}


@pytest.mark.parametrize("authorization", list(BAD_AUTHORIZATION.values()), ids=list(BAD_AUTHORIZATION))
@pytest.mark.parametrize(("method", "path", "body"), ALL_ROUTES, ids=ALL_IDS)
def test_missing_or_garbage_authorization_is_401(
    anonymous: httpx.Client,
    ids: Ids,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    authorization: str | None,
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = anonymous.request(method, ids.fill(path), json=body, headers=headers)

    assert_client_error(response, 401)
    assert "API key" in response.json()["detail"]


def test_scheme_is_case_insensitive(anonymous: httpx.Client, shared_tenant: TenantContext) -> None:
    response = anonymous.get("/api/whoami", headers={"Authorization": f"bearer {shared_tenant.admin_key}"})

    assert response.status_code == 200
    assert response.json()["tenant_id"] == shared_tenant.id


def test_server_stays_healthy_after_all_that(shared_tenant: TenantContext) -> None:
    client: Client = shared_tenant.admin
    assert client.health().status == "healthy"
    assert client.whoami().tenant_id == shared_tenant.id

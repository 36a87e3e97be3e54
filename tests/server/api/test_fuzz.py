"""The API fuzzed with schemathesis against its own OpenAPI document: no answer is a 5xx, every answer's status and
body are the documented ones, schema-invalid input is refused with a 4xx, and without a valid key the answer is 401.

The document is the app's own (``create_app(...).openapi()``, read at collection so that each operation is a test
of its own; a test checks that the server serves exactly this document). The requests go over HTTP to a real server
process, so the whole stack is exercised: body-size middleware, authentication, error handlers, both databases.
The fuzzed requests carry a fresh tenant's admin key, and half of the ids in their paths are ids of that tenant's
real flow, runs (in several states), agents and task run, so the handlers are reached past their 404s.

Generation is derandomized, with no feedback from the answers, so a run repeats the one before: per operation,
schemathesis' coverage cases (boundaries, missing and wrongly typed fields, other methods) and then
``BATON_FUZZ_EXAMPLES`` generated ones (default 25; the unauthenticated pass takes a fifth). For a deeper local run::

    BATON_FUZZ_EXAMPLES=500 .venv/bin/pytest tests/server/api/test_fuzz.py -p no:cacheprovider
"""

from __future__ import annotations

import copy
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from sqlalchemy import create_engine

from baton.bundles import build_bundle
from baton.schemas.actions import FlowRunCreate
from baton.schemas.responses import ErrorDetail, FlowRead, FlowRunRead
from baton.server.app import create_app
from baton.settings import BatonSettings
from server.harness import TenantContext
from support import ServerProcess

EXAMPLES = int(os.environ.get("BATON_FUZZ_EXAMPLES", "25"))
UNAUTHENTICATED_EXAMPLES = max(5, EXAMPLES // 5)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
# What a caller without a valid key may send; every one of them must get 401.
BAD_AUTHORIZATION = [
    None,
    "",
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "Bearer bat_" + "0" * 43,
    "Bearer batr_" + "0" * 43,
    "Bearer !!!not a key!!!",
]


def _app_document() -> dict[str, Any]:
    """The app's OpenAPI document, built without a database (the engine is never connected)."""
    return create_app(BatonSettings.model_construct(), engine=create_engine("sqlite://")).openapi()


def _is_authorization(parameter: dict[str, Any]) -> bool:
    return parameter.get("in") == "header" and parameter.get("name", "").lower() == "authorization"


def _without_authorization(document: dict[str, Any], *, authenticated_only: bool = False) -> dict[str, Any]:
    """``document`` without its Authorization header parameters: the fuzz tests send that header themselves,
    so that generated values never replace the key (and a generated bad key is not taken for bad input)."""
    stripped = copy.deepcopy(document)
    for path, path_item in list(stripped["paths"].items()):
        for method, operation in list(path_item.items()):
            parameters = operation.get("parameters", [])
            if authenticated_only and not any(_is_authorization(p) for p in parameters):
                del path_item[method]
            operation["parameters"] = [p for p in parameters if not _is_authorization(p)]
        if not path_item:
            del stripped["paths"][path]
    return stripped


def _config(examples: int, mode: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "generation": {"max-examples": examples, "deterministic": True, "mode": mode, "database": "none"},
            # No feedback from answers into generation: the same requests on every run and on both databases.
            "phases": {
                "stateful": {"enabled": False},
                "fuzzing": {"extra-data-sources": {"responses": False}, "error-feedback": {"enabled": False}},
                "coverage": {"extra-data-sources": {"responses": False}},
            },
            # Requests to a real server are slow by Hypothesis' standards; that is not a finding.
            "suppress-health-check": ["too_slow", "data_too_large", "large_base_example"],
        }
    )


# Bundle uploads are raw bytes (PUT /api/bundles/{digest}): sent as they were generated, like octet streams.
schemathesis.serializer.alias("application/gzip", "application/octet-stream")
DOCUMENT = _app_document()
SCHEMA = schemathesis.openapi.from_dict(_without_authorization(DOCUMENT), config=_config(EXAMPLES, "all"))
UNAUTHENTICATED = schemathesis.openapi.from_dict(
    _without_authorization(DOCUMENT, authenticated_only=True), config=_config(UNAUTHENTICATED_EXAMPLES, "positive")
)

# Answers particular to one route, which the route declares with ``responses=``, and the model of their body.
ROUTE_ANSWERS: dict[str, dict[int, type[BaseModel]]] = {
    "POST /api/flows": {200: FlowRead, 409: ErrorDetail},  # same content again: that version; racing registrations
    "POST /api/flow_runs": {404: ErrorDetail},  # the flow named by the body is unknown
    "POST /api/flow_runs/{flow_run_id}/state": {409: ErrorDetail},  # illegal transition
    "POST /api/flow_runs/{flow_run_id}/cancel": {409: ErrorDetail},  # the run already ended
    # a repeat with the same Idempotency-Key; the run is not Failed/Cancelled or the key was used for another run
    "POST /api/flow_runs/{flow_run_id}/retry": {200: FlowRunRead, 409: ErrorDetail},
    "POST /api/flow_runs/{flow_run_id}/logs": {409: ErrorDetail},  # the run ended longer than the log grace ago
}

# Ids of real objects by path parameter name, filled by the ``real_objects`` fixture for the current server.
REAL_IDS: dict[str, list[str]] = {}


@SCHEMA.hook
def flatmap_path_parameters(context: schemathesis.HookContext, path_parameters: dict[str, Any] | None) -> Any:
    """Half of the time, the path's ids name real objects of the tenant (the generated ones name nothing)."""
    real = {name: REAL_IDS[name] for name in path_parameters or {} if REAL_IDS.get(name)}
    if not real:
        return st.just(path_parameters)
    chosen = st.fixed_dictionaries({name: st.sampled_from(ids) for name, ids in real.items()})
    return st.one_of(st.just(path_parameters), chosen.map(lambda ids: {**(path_parameters or {}), **ids}))


def _is_valid_run(body: Any) -> bool:
    try:
        FlowRunCreate.model_validate(body)
    except ValidationError:
        return False
    return True


@SCHEMA.hook
def flatmap_body(context: schemathesis.HookContext, body: Any) -> Any:
    """Half of the valid new runs name the tenant's real flow, so that their parameters and labels are checked
    against it. Invalid bodies are left alone: they must stay as invalid as their generator made them."""
    if context.operation is None or context.operation.label != "POST /api/flow_runs" or not _is_valid_run(body):
        return st.just(body)
    naming_the_flow = {key: value for key, value in body.items() if key not in ("flow_id", "flow_version")}
    return st.sampled_from([body, {**naming_the_flow, "flow_name": "hello"}])


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own: claims wait at most 0.2 s (a fuzzed ``wait_seconds`` would otherwise hold each claim
    for the 30 s default), and failed authentications are not throttled (the unauthenticated pass makes many)."""
    settings_env = {
        "BATON__SERVER__MAX_CLAIM_WAIT_SECONDS": "0.2",
        "BATON__SERVER__FAILED_AUTH_LIMIT": "1000000",
    }
    if request.param == "postgresql":
        cluster = request.getfixturevalue("postgres_cluster")
        settings_env["BATON__SERVER__DATABASE_URL"] = cluster.create_database()
    server = ServerProcess(tmp_path_factory.mktemp(f"fuzz-server-{request.param}"), **settings_env).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fuzz_tenant(fuzz_server: ServerProcess) -> Iterator[TenantContext]:
    context = TenantContext.create(fuzz_server)
    yield context
    context.close()


@pytest.fixture(scope="module")
def real_objects(fuzz_tenant: TenantContext) -> Iterator[dict[str, list[str]]]:
    """The tenant's flow ``hello``, runs in several states, their agents and a task run: ids for the paths."""
    # Their agents are the admin key's, the key of the fuzzed requests: only that key may drive them.
    states = ("Scheduled", "Pending", "Running", "Success", "Cancelled")
    runs = [fuzz_tenant.stage(state, runner=fuzz_tenant.admin) for state in states]
    pending = runs[1]
    task_run = fuzz_tenant.client(pending.token or "").create_task_run(pending.id, "greet")
    REAL_IDS.update(
        flow_id=[fuzz_tenant.run(pending.id).flow_id],
        flow_run_id=[run.id for run in runs],
        agent_id=[run.agent_id for run in runs if run.agent_id],
        task_run_id=[task_run.id],
        # A notification rule whose webhook never resolves (.invalid): a fuzzed test of it sends nothing.
        rule_id=[fuzz_tenant.admin.add_notification_rule(["Failed"], "https://hooks.example.invalid/fuzz").id],
        digest=[_uploaded_bundle(fuzz_tenant)],
    )
    yield REAL_IDS
    REAL_IDS.clear()


def _uploaded_bundle(tenant: TenantContext) -> str:
    """A bundle of the tenant (its digest), so that the bundle routes are reached past their 404s."""
    with tempfile.TemporaryDirectory() as folder:
        flow_file = Path(folder) / "hello.py"
        flow_file.write_text("print('fuzzed')\n")
        bundle = build_bundle([("hello.py", flow_file)])
    tenant.admin.upload_bundle(bundle.digest, bundle.data)
    return bundle.digest


@pytest.fixture(scope="module")
def live_objects(real_objects: dict[str, list[str]], fuzz_tenant: TenantContext) -> dict[str, list[str]]:
    """The real objects with an agent registered after the fuzzing (the tests that use it come after it): the fuzzed
    requests may have deregistered and pruned the staged runs' agents (DELETE /api/agents/{id}, POST
    /api/agents/prune), as any user may."""
    agent = fuzz_tenant.admin.register_agent(f"fuzz-live-{uuid.uuid4().hex[:8]}", "local", [])
    return {**real_objects, "agent_id": [agent.id]}


def test_server_serves_the_fuzzed_document(fuzz_server: ServerProcess) -> None:
    served = httpx.get(f"{fuzz_server.url}/api/openapi.json", timeout=30)

    assert served.status_code == 200
    assert served.json() == DOCUMENT


@SCHEMA.parametrize()
def test_every_answer_is_documented_and_never_a_server_error(
    case: schemathesis.Case, fuzz_server: ServerProcess, fuzz_tenant: TenantContext, real_objects: object
) -> None:
    headers = {"Authorization": f"Bearer {fuzz_tenant.admin_key}"}

    response = case.call(base_url=fuzz_server.url, headers=headers, timeout=30)

    case.validate_response(response, checks=CHECKS, headers=headers)


@pytest.mark.parametrize(
    ("label", "status"), [(label, status) for label in ROUTE_ANSWERS for status in ROUTE_ANSWERS[label]]
)
def test_answers_particular_to_a_route_are_documented(label: str, status: int) -> None:
    method, path = label.split(" ", 1)

    assert str(status) in DOCUMENT["paths"][path][method.lower()]["responses"]


@UNAUTHENTICATED.parametrize()
@UNAUTHENTICATED.given(authorization=st.sampled_from(BAD_AUTHORIZATION))
def test_without_a_valid_key_every_answer_is_401(
    case: schemathesis.Case, authorization: str | None, fuzz_server: ServerProcess
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}

    response = case.call(base_url=fuzz_server.url, headers=headers, timeout=30)

    assert response.status_code == 401, f"{case.method} {case.formatted_path}: {response.text[:500]}"
    case.validate_response(response, checks=CHECKS, headers=headers)


# --- bad input found by fuzzing, kept as explicit cases --------------------------------------------------------


@pytest.fixture(scope="module")
def admin_http(fuzz_tenant: TenantContext) -> httpx.Client:
    return fuzz_tenant.raw(fuzz_tenant.admin_key)


def fill(path: str, ids: dict[str, list[str]]) -> str:
    return path.format(run=ids["flow_run_id"][0], agent=ids["agent_id"][0], task_run=ids["task_run_id"][0])


# Raw JSON, so that the escapes reach the server as written: NUL (which PostgreSQL cannot store in text) and lone
# surrogates (which no UTF-8 encoder takes) were 500s, on PostgreSQL or on both databases.
UNSTORABLE_TEXT = {
    "nul-in-source": ("/api/flows", '{"name": "hello", "entrypoint": "hello", "source": "x\\u0000"}'),
    "nul-in-task-name": ("/api/flow_runs/{run}/task_runs", '{"task_name": "greet\\u0000"}'),
    "nul-in-log-key": (
        "/api/flow_runs/{run}/logs",
        '{"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": "x", "key": "k\\u0000"}]}',
    ),
    "nul-in-log-message": (
        "/api/flow_runs/{run}/logs",
        '{"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": "\\u0000"}]}',
    ),
    "nul-in-state-message": ("/api/flow_runs/{run}/state", '{"name": "Failed", "message": "a\\u0000"}'),
    "nul-in-run-name": ("/api/flow_runs", '{"flow_name": "hello", "name": "a\\u0000"}'),
    "nul-in-key-name": ("/api/keys", '{"role": "read", "name": "a\\u0000"}'),
    "surrogate-in-parameters": ("/api/flow_runs", '{"flow_name": "hello", "parameters": {"name": "\\ud800"}}'),
    "surrogate-in-state-data": ("/api/flow_runs/{run}/state", '{"name": "Failed", "data": {"a": "\\udfff"}}'),
    "surrogate-in-schema-key": (
        "/api/flows",
        '{"name": "h", "entrypoint": "h", "source": "x", "parameters_schema": {"\\ud800": 1}}',
    ),
    "nul-in-env": (
        "/api/flows",
        '{"name": "h", "entrypoint": "h", "source": "x", "run_config": {"env": {"A": "\\u0000"}}}',
    ),
}


@pytest.mark.parametrize(("path", "body"), list(UNSTORABLE_TEXT.values()), ids=list(UNSTORABLE_TEXT))
def test_text_no_database_can_store_is_422(
    admin_http: httpx.Client, live_objects: dict[str, list[str]], path: str, body: str
) -> None:
    response = admin_http.post(fill(path, live_objects), content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text
    assert "NUL" in response.text or "surrogate" in response.text


# Values that validation used to let through: JSON values of another type than the documented one, which it
# converted (true → 1, 0 → 1970-01-01), and a log's task run id longer than its column.
LET_THROUGH = {
    "limit-true": ("/api/agents/{agent}/claim", {"limit": True}),
    "wait-seconds-true": ("/api/agents/{agent}/claim", {"wait_seconds": True}),
    "prefetch-seconds-string": ("/api/agents/{agent}/claim", {"prefetch_seconds": "1"}),
    "alive-number": ("/api/agents/{agent}/heartbeat", {"deployments": [{"flow_run_id": "x", "alive": 0}]}),
    "exit-code-false": (
        "/api/agents/{agent}/heartbeat",
        {"deployments": [{"flow_run_id": "x", "alive": False, "exit_code": False}]},
    ),
    "attempt-true": ("/api/task_runs/{task_run}/state", {"state": "Running", "attempt": True}),
    "level-string": (
        "/api/flow_runs/{run}/logs",
        {"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": "x", "level": "20"}]},
    ),
    "log-timestamp-number": ("/api/flow_runs/{run}/logs", {"logs": [{"timestamp": 1_900_000_000, "message": "x"}]}),
    "start-time-number": ("/api/flow_runs", {"flow_name": "hello", "scheduled_start_time": 0}),
    "flow-version-true": ("/api/flow_runs", {"flow_name": "hello", "flow_version": True}),
    "port-string": ("/api/flows", {"name": "h", "entrypoint": "h", "source": "x", "run_config": {"ports": ["80"]}}),
    # The column holds a UUID: 37 characters and more were a 500 on PostgreSQL.
    "log-task-run-id-too-long": (
        "/api/flow_runs/{run}/logs",
        {"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": "x", "task_run_id": "t" * 37}]},
    ),
}


@pytest.mark.parametrize(("path", "body"), list(LET_THROUGH.values()), ids=list(LET_THROUGH))
def test_values_of_another_json_type_or_too_long_are_422(
    admin_http: httpx.Client, live_objects: dict[str, list[str]], path: str, body: dict[str, Any]
) -> None:
    response = admin_http.post(fill(path, live_objects), json=body)

    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/api/flows?name=a%00", {200, 422}),  # PostgreSQL refused to compare with NUL: a 500
        ("/api/flow_runs?flow_name=a%00", {200, 422}),
        ("/api/flow_runs?flow_name=%ff%fe", {200}),  # invalid UTF-8 in the query: replaced, matches nothing
        ("/api/flow_runs?state=%ff", {422}),
        ("/api/flow_runs/%ff%fe", {404}),  # invalid UTF-8 in the path
    ],
)
def test_bad_query_and_path_text_is_answered_cleanly(admin_http: httpx.Client, path: str, expected: set[int]) -> None:
    response = admin_http.get(path)

    assert response.status_code in expected, response.text
    if response.status_code == 200:
        assert response.json() == []


def test_authorization_that_is_not_utf8_is_401(fuzz_server: ServerProcess) -> None:
    response = httpx.get(f"{fuzz_server.url}/api/whoami", headers={"Authorization": b"Bearer \xff\xfe"}, timeout=30)

    assert response.status_code == 401
    assert response.json()["detail"]


# --- deep nesting, non-finite numbers and oversize bodies (issue 8, items 3, 7, 12) ----------------------------
# Every JSON field a caller can send, nested one level past MAX_JSON_DEPTH, far past it (the C parser's own limit
# is near 1000 levels: it raised RecursionError, a 400 with no reason), holding NaN, and bodies over the limit.


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


JSON_FIELDS = {
    "parameters": ("/api/flow_runs", '{{"flow_name": "hello", "parameters": {{"a": {value}}}}}'),
    "state-data": ("/api/flow_runs/{run}/state", '{{"name": "Failed", "data": {{"a": {value}}}}}'),
    "parameters-schema": (
        "/api/flows",
        '{{"name": "h", "entrypoint": "h", "source": "x", "parameters_schema": {{"default": {value}}}}}',
    ),
    "schedule": ("/api/flows", '{{"name": "h", "entrypoint": "h", "source": "x", "schedule": {{"a": {value}}}}}'),
    "job-template": (
        "/api/flows",
        '{{"name": "h", "entrypoint": "h", "source": "x", "run_config": {{"job_template": {{"a": {value}}}}}}}',
    ),
    "host-config": (
        "/api/flows",
        '{{"name": "h", "entrypoint": "h", "source": "x", "run_config": {{"host_config": {{"a": {value}}}}}}}',
    ),
    "env": (
        "/api/flows",
        '{{"name": "h", "entrypoint": "h", "source": "x", "run_config": {{"env": {{"a": {value}}}}}}}',
    ),
    "log-message": (
        "/api/flow_runs/{run}/logs",
        '{{"logs": [{{"timestamp": "2030-01-01T00:00:00Z", "message": {value}}}]}}',
    ),
    "claim": ("/api/agents/{agent}/claim", '{{"limit": {value}}}'),
    "heartbeat": ("/api/agents/{agent}/heartbeat", '{{"deployments": [{{"flow_run_id": "x", "alive": {value}}}]}}'),
}
BAD_VALUES = {
    "33-deep": deep(32),
    "300-deep": deep(300),
    # Far past the parser's own recursion guard (~1000), yet under the 64 KiB that claims take.
    "30000-deep": deep(30_000),
    "nan": "NaN",
    "inf": "-Infinity",
}


@pytest.mark.parametrize("value", list(BAD_VALUES.values()), ids=list(BAD_VALUES))
@pytest.mark.parametrize(("path", "template"), list(JSON_FIELDS.values()), ids=list(JSON_FIELDS))
def test_deep_or_non_finite_json_in_any_field_is_422(
    admin_http: httpx.Client, live_objects: dict[str, list[str]], path: str, template: str, value: str
) -> None:
    body = template.format(value=value)

    response = admin_http.post(fill(path, live_objects), content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 422, response.text[:500]


@settings(max_examples=max(5, EXAMPLES // 5), deadline=None, derandomize=True, database=None)
@given(depth=st.integers(min_value=33, max_value=3_000), field=st.sampled_from(sorted(JSON_FIELDS)))
def test_nesting_past_the_limit_is_never_stored(
    admin_http: httpx.Client, live_objects: dict[str, list[str]], depth: int, field: str
) -> None:
    path, template = JSON_FIELDS[field]
    before = {run["id"] for run in admin_http.get("/api/flow_runs", params={"limit": 1000}).json()}

    response = admin_http.post(
        fill(path, live_objects),
        content=template.format(value=deep(depth - 1)),
        headers={"Content-Type": "application/json"},
    )

    assert response.status_code == 422, response.text[:500]
    assert {run["id"] for run in admin_http.get("/api/flow_runs", params={"limit": 1000}).json()} == before


@pytest.mark.parametrize(
    ("path", "template"),
    [JSON_FIELDS["parameters"], JSON_FIELDS["state-data"], JSON_FIELDS["log-message"], JSON_FIELDS["job-template"]],
    ids=["parameters", "state-data", "log-message", "job-template"],
)
def test_a_body_over_the_size_limit_is_413(
    admin_http: httpx.Client, live_objects: dict[str, list[str]], path: str, template: str
) -> None:
    body = template.format(value='"' + "x" * (10 * 1024 * 1024) + '"')

    response = admin_http.post(fill(path, live_objects), content=body, headers={"Content-Type": "application/json"})

    assert response.status_code == 413, response.text[:500]

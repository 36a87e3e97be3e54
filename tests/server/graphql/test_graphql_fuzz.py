"""The GraphQL API fuzzed from its own schema (hypothesis-graphql, derandomized): valid and invalid queries and
mutations of every served field, with hostile scalar values, against a real server on both databases. Every answer
is HTTP 200 with ``data`` or coded ``errors``; none is a server fault."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC
from importlib import resources
from typing import Any

import httpx
import pytest
from graphql import build_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, nodes, queries
from sqlalchemy.orm import Session, sessionmaker

from server.graphql.test_graphql_endpoint import data
from server.graphql.test_graphql_flows import register, serialized, with_parameter_tasks
from server.graphql.test_graphql_projects import create as create_project
from server.harness import TenantContext
from support import ServerProcess

EXAMPLES = int(os.environ.get("BATON_FUZZ_EXAMPLES", "25"))
SDL = resources.files("baton.server.graphql").joinpath("schema.graphql").read_text(encoding="utf-8")
# Codes an answer may carry: refusals. INTERNAL_SERVER_ERROR (a bug) and API_ERROR (a database failure, which the
# client retries) must never come from input alone.
EXPECTED_CODES = {"GRAPHQL_VALIDATION_FAILED", "BAD_USER_INPUT", "FORBIDDEN", "NOT_FOUND", "CONFLICT"}

_TEXT = st.text(max_size=60)
# Ids of the fuzzed tenant's real objects (its id, a project, a flow), filled by ``real_objects``: half of the ids
# sent are real, so that mutations are reached past their NOT_FOUND.
REAL_IDS: list[str] = []
_REAL = st.integers(min_value=0, max_value=99).map(lambda index: REAL_IDS[index % len(REAL_IDS)] if REAL_IDS else "")
_UUIDS = st.one_of(_REAL, st.uuids().map(str), _TEXT).map(nodes.String)
_TIMES = st.one_of(st.datetimes(timezones=st.just(UTC)).map(lambda time: time.isoformat()), _TEXT).map(nodes.String)
_JSON = st.one_of(_TEXT.map(nodes.String), st.integers().map(nodes.Int), st.booleans().map(nodes.Boolean))
SCALARS = {"uuid": _UUIDS, "UUID": _UUIDS, "timestamptz": _TIMES, "jsonb": _JSON, "JSON": _JSON}
_SCHEMA = build_schema(SDL)
# One root field per operation, as the endpoint takes them (an operation of many is refused before any resolver).
OPERATIONS = st.one_of(
    *(
        make(SDL, fields=[name], custom_scalars=SCALARS, mode=mode)
        for make, root in ((queries, _SCHEMA.query_type), (mutations, _SCHEMA.mutation_type))
        if root is not None
        for name in sorted(root.fields)
        # Invalid operations need an argument to violate.
        for mode in ((Mode.POSITIVE, Mode.NEGATIVE) if root.fields[name].args else (Mode.POSITIVE,))
    )
)


@pytest.fixture(scope="module")
def fuzzed_tenant(api_server: ServerProcess, api_database: sessionmaker[Session]) -> Iterator[TenantContext]:
    context = TenantContext.create(api_server, api_database)
    yield context
    context.close()


@pytest.fixture(scope="module")
def http(fuzzed_tenant: TenantContext) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {fuzzed_tenant.admin_key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=fuzzed_tenant.server.url, headers=headers, timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
def real_objects(fuzzed_tenant: TenantContext) -> Iterator[list[str]]:
    project = create_project(fuzzed_tenant, "fuzzed")
    flow = data(register(fuzzed_tenant, project, with_parameter_tasks(serialized("fuzzed-flow"))))["create_flow"]["id"]
    REAL_IDS[:] = [fuzzed_tenant.id, project, flow]
    yield REAL_IDS
    REAL_IDS.clear()


@settings(
    max_examples=4 * EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
@given(document=OPERATIONS)
def test_no_query_or_mutation_is_a_server_fault(http: httpx.Client, real_objects: list[str], document: Any) -> None:
    text = document if isinstance(document, str) else str(document)
    body = json.dumps({"query": text}).encode()  # ASCII JSON: lone surrogates travel escaped

    answer = http.post("/graphql", content=body)

    assert answer.status_code in (200, 400), answer.text[:500]
    payload = answer.json()
    assert "data" in payload or "errors" in payload, payload
    codes = {error.get("extensions", {}).get("code") for error in payload.get("errors") or []}
    assert codes <= EXPECTED_CODES, (text[:500], payload)

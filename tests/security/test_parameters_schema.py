"""Issue 8, item 4: a malformed ``parameters_schema`` was accepted at registration, and then every run creation of
the flow answered 500. Now a schema is checked against the JSON Schema meta-schema at registration (422 with the
JSON pointer of the problem), references must stay inside it, and no stored schema can make run creation fail
with anything but a clear 4xx.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.connection import transaction
from baton.server.database.orm import Flow
from security.input_support import database_of, start_server
from server.harness import TenantContext, unique
from support import ServerProcess


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def schema_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from start_server(request, tmp_path_factory)


@pytest.fixture(scope="module")
def schema_database(schema_server: ServerProcess) -> Iterator[sessionmaker[Session]]:
    yield from database_of(schema_server)


@pytest.fixture
def tenant(schema_server: ServerProcess, schema_database: sessionmaker[Session]) -> Iterator[TenantContext]:
    context = TenantContext.create(schema_server, schema_database)
    yield context
    context.close()


# (schema, the JSON pointer the answer must name)
MALFORMED: dict[str, tuple[dict[str, Any], str]] = {
    "properties-a-string": ({"properties": "abc"}, "at /properties:"),
    "required-a-number": ({"required": 5}, "at /required:"),
    "type-a-number": ({"type": 5}, "at /type:"),
    "nested-type-unknown": ({"type": "object", "properties": {"a": {"type": "strin"}}}, "at /properties/a/type:"),
    "required-of-numbers": ({"required": [1, 2]}, "at /required/0:"),
    "any-of-not-a-list": ({"properties": {"a": {"anyOf": {"type": "string"}}}}, "at /properties/a/anyOf:"),
    "remote-ref": ({"properties": {"a": {"$ref": "http://127.0.0.1:9/x.json"}}}, "at /properties/a/$ref:"),
    "unknown-meta-schema": ({"$schema": "http://127.0.0.1:9/meta", "type": "object"}, "at /$schema:"),
    "meta-schema-not-a-string": ({"$schema": {"a": 1}}, "at /$schema:"),
}


@pytest.mark.parametrize(("schema", "pointer"), list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_schema_is_422_with_the_path_of_the_problem(
    tenant: TenantContext, schema: dict[str, Any], pointer: str
) -> None:
    name = unique("flow")
    body = {"name": name, "entrypoint": "hello", "source": "x", "parameters_schema": schema}

    response = tenant.raw(tenant.key("user")).post("/api/flows", json=body)

    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "parameters_schema"]
    assert pointer in error["msg"]
    assert tenant.admin.list_flows(name=name) == []


@pytest.mark.parametrize(
    "schema",
    [
        {},
        {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]},
        {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
        {"type": "object", "$defs": {"n": {"type": "integer"}}, "properties": {"n": {"$ref": "#/$defs/n"}}},
        {"type": "object", "properties": {"s": {"type": "string", "pattern": "^(a+)+$"}}},
    ],
    ids=["empty", "plain", "draft-07", "local-ref", "pattern"],
)
def test_a_valid_schema_is_registered(tenant: TenantContext, schema: dict[str, Any]) -> None:
    flow = tenant.register_flow(unique("flow"), parameters_schema=schema)

    assert flow.parameters_schema == schema


STORED_BEFORE_THE_CHECK = [
    {"properties": "abc"},
    {"required": 5},
    {"type": 5},
    {"properties": {"a": {"type": 5}}},
    {"properties": {"a": {"type": ["string", 5]}}},
    {"properties": {"a": {"anyOf": [{"type": ["string"]}]}}},
    {"properties": {"a": "not a schema"}, "required": "a"},
    {"additionalProperties": {"$ref": "#"}, "properties": {"s": {"pattern": "^(a+)+$"}}},
]


@pytest.mark.parametrize("schema", STORED_BEFORE_THE_CHECK, ids=[str(i) for i in range(len(STORED_BEFORE_THE_CHECK))])
def test_no_stored_schema_makes_run_creation_a_server_error(
    tenant: TenantContext, schema_database: sessionmaker[Session], schema: dict[str, Any]
) -> None:
    # Given a flow whose schema was stored before registration checked it (written straight into the database)
    name = unique("old")
    with transaction(schema_database) as session:
        session.add(
            Flow(
                tenant_id=tenant.id,
                name=name,
                version=1,
                entrypoint="hello",
                source="x",
                content_hash="0" * 64,
                storage={"type": "api"},
                run_config={},
                labels=[],
                parameters_schema=schema,
                tasks=[],
            )
        )

    # When runs of it are created, with and without parameters
    user = tenant.raw(tenant.key("user"))
    answers = [
        user.post("/api/flow_runs", json={"flow_name": name, "parameters": parameters})
        for parameters in ({}, {"a": "x" * 50}, {"a": 5, "s": "a" * 40 + "!"})
    ]

    # Then each is created or refused with a reason, never a 500 nor a dropped connection
    assert [answer.status_code for answer in answers if answer.status_code not in (201, 422)] == []

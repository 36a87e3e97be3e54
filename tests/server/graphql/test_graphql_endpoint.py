"""``POST /graphql`` on a real server (both databases): Prefect Cloud 1's conventions for credentials, variables and
errors, Hasura-style ``where``/``order_by`` on the tenant, and hostile requests answered cleanly."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from server.harness import TenantContext


def ask(tenant: TenantContext, query: str, key: str | None = None, **extra: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or tenant.admin_key}", "Content-Type": "application/json"}
    # ASCII JSON, as json.dumps writes it: a lone surrogate a test sends travels as its escape, as from any client.
    body = json.dumps({"query": query, **extra}).encode()
    return httpx.post(f"{tenant.server.url}/graphql", content=body, headers=headers, timeout=30)


def data(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    body = response.json()
    assert "errors" not in body, body
    return body["data"]


def error(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    errors = response.json()["errors"]
    assert len(errors) == 1, errors
    found: dict[str, Any] = errors[0]
    return found


def test_auth_info_names_the_keys_tenant_and_its_role(tenant: TenantContext) -> None:
    answer = data(ask(tenant, "{ auth_info { tenant_id api_token_scope user_id } }", key=tenant.key("runner")))

    assert answer == {"auth_info": {"tenant_id": tenant.id, "api_token_scope": "runner", "user_id": None}}


def test_a_refused_key_is_a_200_that_says_unauthenticated_and_the_body_is_never_read(tenant: TenantContext) -> None:
    response = httpx.post(
        f"{tenant.server.url}/graphql",
        content=b"not even JSON",
        headers={"Authorization": "Bearer bt_" + "x" * 43},
        timeout=30,
    )

    assert response.status_code == 200
    body = response.json()
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    assert body["errors"][0]["message"].startswith("UNAUTHENTICATED")
    assert (
        httpx.post(f"{tenant.server.url}/graphql", json={"query": "{ hello }"}).json()["errors"][0]["extensions"][
            "code"
        ]
        == "UNAUTHENTICATED"
    )


def test_the_tenant_query_sees_only_the_callers_tenant(tenant: TenantContext, other_tenant: TenantContext) -> None:
    every = data(ask(tenant, "{ tenant(order_by: {slug: asc}) { id name slug created } }"))["tenant"]
    other = data(ask(tenant, f'{{ tenant(where: {{id: {{_eq: "{other_tenant.id}"}}}}) {{ id }} }}'))["tenant"]

    assert [(row["id"], row["name"], row["slug"]) for row in every] == [(tenant.id, tenant.name, tenant.name)]
    assert every[0]["created"].endswith("+00:00")
    assert other == []


@pytest.mark.parametrize(
    ("where", "found"),
    [
        ({"id": {"_eq": None}}, True),  # Hasura's null-collapse: no filter
        ({"name": {"_neq": "someone else"}}, True),
        ({"_or": [{"slug": {"_eq": "nope"}}, {"slug": {"_in": ["a", "{name}"]}}]}, True),
        ({"_and": [{"slug": {"_eq": "{name}"}}, {"name": {"_is_null": True}}]}, False),
        ({"_not": {"name": {"_eq": "{name}"}}}, False),
        ({"slug": {"_nin": []}}, True),
        ({"slug": {"_in": []}}, False),
        ({"created": {"_gt": "2000-01-01T01:00:00+01:00"}}, True),
        ({"created": {"_lt": "2000-01-01T00:00:00"}}, False),
    ],
)
def test_where_filters_as_hasura_does(tenant: TenantContext, where: dict[str, Any], found: bool) -> None:
    variables = json.loads(json.dumps(where).replace("{name}", tenant.name))
    query = "query($where: tenant_bool_exp) { tenant(where: $where) { id } }"

    # As Prefect 1's client sends them: the variables as a JSON string.
    rows = data(ask(tenant, query, variables=json.dumps({"where": variables})))["tenant"]

    assert rows == ([{"id": tenant.id}] if found else [])


def test_variables_may_be_an_object_a_json_string_or_the_string_null(tenant: TenantContext) -> None:
    query = "query($id: uuid) { tenant(where: {id: {_eq: $id}}) { id } }"
    absent = str(uuid.uuid4())

    assert data(ask(tenant, query, variables={"id": absent}))["tenant"] == []
    assert data(ask(tenant, query, variables=json.dumps({"id": tenant.id})))["tenant"] == [{"id": tenant.id}]
    assert data(ask(tenant, query, variables="null"))["tenant"] == [{"id": tenant.id}]


def test_an_unknown_field_is_an_error_that_names_it(tenant: TenantContext) -> None:
    found = error(ask(tenant, "{ flow_group_sla { id } }"))

    assert "flow_group_sla" in found["message"]
    assert found["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ('{ tenant(where: {id: {_eq: "not-a-uuid"}}) { id } }', "uuid"),
        ('{ tenant(where: {created: {_gt: "yesterday"}}) { id } }', "timestamptz"),
        ("{ tenant(limit: -1) { id } }", "limit"),
        ("{ tenant(limit: 100000) { id } }", "limit"),
        ("{ tenant(offset: -5) { id } }", "offset"),
        ('{ tenant(where: {id: {_like: "%"}}) { id } }', "_like"),
    ],
)
def test_bad_arguments_are_errors_that_say_which(tenant: TenantContext, query: str, words: str) -> None:
    found = error(ask(tenant, query))

    assert words in found["message"], found
    assert found["extensions"]["code"] in ("BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED")


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"{", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"query": 3}', "'query'"),
        (b'{"query": "{ hello }", "variables": "[1]"}', "'variables'"),
        (b'{"query": "{ hello }", "variables": "{nope"}', "'variables'"),
        (b'{"query": "{ hello }", "operationName": 7}', "'operationName'"),
        (b'{"query": "{ hello }", "variables": {"x": NaN}}', "NaN"),
    ],
)
def test_a_request_that_is_not_graphql_is_a_400_that_says_why(tenant: TenantContext, body: bytes, words: str) -> None:
    response = httpx.post(
        f"{tenant.server.url}/graphql",
        content=body,
        headers={"Authorization": f"Bearer {tenant.admin_key}", "Content-Type": "application/json"},
        timeout=30,
    )

    assert response.status_code == 400, response.text
    assert words in response.json()["errors"][0]["message"]


@pytest.mark.parametrize(
    "query",
    [
        "{" + " tenant {" * 2400 + " id" + " }" * 2401,  # nested far past Python's recursion limit
        "{ hello " + "hello " * 6000 + "}",  # past the token bound
    ],
)
def test_hostile_queries_are_refused_and_the_server_goes_on(tenant: TenantContext, query: str) -> None:
    found = error(ask(tenant, query))

    assert found["extensions"]["code"] in ("BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED"), found
    assert data(ask(tenant, "{ hello }")) == {"hello": "👋"}


def test_only_post_is_served(tenant: TenantContext) -> None:
    assert httpx.get(f"{tenant.server.url}/graphql", timeout=30).status_code == 405

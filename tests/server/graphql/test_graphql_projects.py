"""Projects over GraphQL on a real server (both databases): the mutations Prefect 1's client sends, names unique
per tenant, tenants isolated, and the roles of ``access.POLICY``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.connection import transaction
from baton.server.database.orm import Project
from server.graphql.test_graphql_endpoint import ask, data, error
from server.harness import TenantContext

CREATE = "mutation($input: create_project_input!) { create_project(input: $input) { id } }"
LIST = "{ project(order_by: {name: asc}) { id name description tenant_id created } }"


def create(tenant: TenantContext, name: str, key: str | None = None, **extra: Any) -> str:
    answer = data(ask(tenant, CREATE, key=key, variables={"input": {"name": name, "tenant_id": tenant.id, **extra}}))
    project_id: str = answer["create_project"]["id"]
    return project_id


def test_a_created_project_is_listed_and_found_by_name_and_by_id(tenant: TenantContext) -> None:
    etl = create(tenant, "etl", description="nightly loads")
    create(tenant, "adhoc")

    listed = data(ask(tenant, LIST))["project"]
    by_name = data(ask(tenant, '{ project(where: {name: {_eq: "etl"}}) { id } }'))["project"]
    by_id = data(ask(tenant, f'{{ project_by_pk(id: "{etl}") {{ name description }} }}'))["project_by_pk"]

    assert [(row["name"], row["description"], row["tenant_id"]) for row in listed] == [
        ("adhoc", None, tenant.id),
        ("etl", "nightly loads", tenant.id),
    ]
    assert by_name == [{"id": etl}]
    assert by_id == {"name": "etl", "description": "nightly loads"}


def test_a_name_the_tenant_has_is_the_uniqueness_violation_prefect_1_looks_for(tenant: TenantContext) -> None:
    create(tenant, "etl")

    found = error(ask(tenant, CREATE, variables={"input": {"name": " etl ", "tenant_id": tenant.id}}))

    assert found["message"] == "Uniqueness violation."
    assert found["extensions"]["code"] == "CONFLICT"
    assert len(data(ask(tenant, LIST))["project"]) == 1


def test_tenants_see_and_touch_only_their_own_projects(tenant: TenantContext, other_tenant: TenantContext) -> None:
    mine = create(tenant, "etl")
    create(other_tenant, "etl")  # the same name in another tenant is another project

    theirs = data(ask(other_tenant, LIST))["project"]
    peeked = data(ask(other_tenant, f'{{ project_by_pk(id: "{mine}") {{ id }} }}'))["project_by_pk"]
    into_mine = error(ask(other_tenant, CREATE, variables={"input": {"name": "x", "tenant_id": tenant.id}}))
    deleted = error(
        ask(
            other_tenant,
            "mutation($input: delete_project_input!) { delete_project(input: $input) { success } }",
            variables={"input": {"project_id": mine}},
        )
    )

    assert [row["id"] for row in theirs] != [mine] and len(theirs) == 1
    assert peeked is None
    assert into_mine["extensions"]["code"] == "NOT_FOUND"
    assert deleted["extensions"]["code"] == "NOT_FOUND"
    assert [row["id"] for row in data(ask(tenant, LIST))["project"]] == [mine]


@pytest.mark.parametrize(("role", "may_create"), [("admin", True), ("user", True), ("runner", False), ("read", False)])
def test_who_may_create_and_who_may_read(tenant: TenantContext, role: str, may_create: bool) -> None:
    key = tenant.key(role)
    created = ask(tenant, CREATE, key=key, variables={"input": {"name": f"by-{role}"}})

    if may_create:
        assert data(created)["create_project"]["id"]
    else:
        assert error(created)["extensions"]["code"] == "FORBIDDEN"
    assert len(data(ask(tenant, LIST, key=key))["project"]) == (1 if may_create else 0)


def test_rename_describe_and_delete(tenant: TenantContext) -> None:
    etl = create(tenant, "etl")
    create(tenant, "taken")

    def mutate(field: str, **fields: Any) -> Any:
        payload = "{ success }" if field == "delete_project" else "{ id }"
        query = f"mutation($input: {field}_input!) {{ {field}(input: $input) {payload} }}"
        return ask(tenant, query, variables={"input": {"project_id": etl, **fields}})

    assert data(mutate("set_project_name", name="loads")) == {"set_project_name": {"id": etl}}
    assert error(mutate("set_project_name", name="taken"))["message"] == "Uniqueness violation."
    assert data(mutate("set_project_description", description="d")) == {"set_project_description": {"id": etl}}
    assert data(ask(tenant, f'{{ project_by_pk(id: "{etl}") {{ name description }} }}'))["project_by_pk"] == {
        "name": "loads",
        "description": "d",
    }
    assert data(mutate("delete_project")) == {"delete_project": {"success": True}}
    assert error(mutate("delete_project"))["extensions"]["code"] == "NOT_FOUND"
    assert [row["name"] for row in data(ask(tenant, LIST))["project"]] == ["taken"]


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "tab\there", "new\nline"])
def test_names_no_one_could_read_back_are_refused(tenant: TenantContext, name: str) -> None:
    found = error(ask(tenant, CREATE, variables={"input": {"name": name}}))

    assert found["extensions"]["code"] == "BAD_USER_INPUT"
    assert "name" in found["message"]
    assert data(ask(tenant, LIST))["project"] == []


def test_without_a_limit_more_rows_than_one_answer_holds_is_an_error_that_says_to_page(
    tenant: TenantContext, api_database: sessionmaker[Session]
) -> None:
    now = datetime.now(UTC)
    rows = [{"id": str(uuid.uuid4()), "tenant_id": tenant.id, "name": f"p{i:04}", "created": now} for i in range(1001)]
    with transaction(api_database) as session:
        session.execute(insert(Project.__table__), rows)

    unbounded = error(ask(tenant, "{ project { id } }"))
    first = data(ask(tenant, "{ project(limit: 1000, order_by: {name: asc}) { name } }"))["project"]
    rest = data(ask(tenant, "{ project(limit: 1000, offset: 1000, order_by: {name: asc}) { name } }"))["project"]

    assert unbounded["extensions"]["code"] == "BAD_USER_INPUT" and "limit and offset" in unbounded["message"]
    assert len(first) == 1000 and rest == [{"name": "p1000"}]

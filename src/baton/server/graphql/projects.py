"""Projects over GraphQL: ``project`` and ``project_by_pk``, and Prefect Server 1's four project mutations."""

from __future__ import annotations

from typing import Any

from ariadne import MutationType, ObjectType, QueryType
from sqlalchemy import select

from baton.server.access import Action
from baton.server.database.connection import transaction
from baton.server.database.orm import Project
from baton.server.graphql.core import Info, ListArguments, context_of, paged, require
from baton.server.models import projects
from baton.server.models.errors import ObjectNotFound

query = QueryType()
mutation = MutationType()
project_type = ObjectType("project")

COLUMNS = {"id": Project.id, "name": Project.name, "created": Project.created}


def row(project: Project) -> dict[str, Any]:
    return {
        "id": project.id,
        "tenant_id": project.tenant_id,
        "name": project.name,
        "description": project.description,
        "created": project.created,
    }


@query.field("project")
def _projects(_: None, info: Info, **arguments: Any) -> list[dict[str, Any]]:
    principal = require(info, Action.PROJECT_LIST)
    listing = ListArguments.of(arguments, COLUMNS, Project.id)
    statement = listing.applied(select(Project).where(Project.tenant_id == principal.tenant_id))
    with context_of(info).read_sessions() as session:
        return paged([row(project) for project in session.scalars(statement)])


@query.field("project_by_pk")
def _project_by_pk(_: None, info: Info, id: str) -> dict[str, Any] | None:
    principal = require(info, Action.PROJECT_LIST)
    with context_of(info).read_sessions() as session:
        found = session.scalar(select(Project).where(Project.tenant_id == principal.tenant_id, Project.id == id))
        return None if found is None else row(found)


@project_type.field("flows_aggregate")
def _flows_aggregate(project: dict[str, Any], info: Info, distinct_on: list[str] | None = None) -> dict[str, Any]:
    """The project's flow versions counted, or its flows (``distinct_on: name``, as ``prefect get projects`` asks)."""
    principal = context_of(info).principal
    with context_of(info).read_sessions() as session:
        if distinct_on == ["name"]:
            count = len(projects.flow_names(session, principal.tenant_id, project["id"]))
        else:
            count = projects.flow_version_count(session, principal.tenant_id, project["id"])
    return {"aggregate": {"count": count}}


def _own_tenant(info: Info, tenant_id: str | None) -> str:
    principal = context_of(info).principal
    if tenant_id is not None and tenant_id != principal.tenant_id:
        raise ObjectNotFound(f"tenant {tenant_id} not found")
    return principal.tenant_id


@mutation.field("create_project")
def _create_project(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    require(info, Action.PROJECT_CREATE)
    tenant_id = _own_tenant(info, input.get("tenant_id"))
    with transaction(context_of(info).sessions) as session:
        project = projects.create_project(session, tenant_id, input["name"], input.get("description"))
        return {"id": project.id}


@mutation.field("delete_project")
def _delete_project(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.PROJECT_DELETE)
    with transaction(context_of(info).sessions) as session:
        projects.delete_project(session, principal.tenant_id, input["project_id"])
    return {"success": True, "error": None}


@mutation.field("set_project_name")
def _set_project_name(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.PROJECT_UPDATE)
    with transaction(context_of(info).sessions) as session:
        projects.rename_project(session, principal.tenant_id, input["project_id"], input["name"])
    return {"id": input["project_id"]}


@mutation.field("set_project_description")
def _set_project_description(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.PROJECT_UPDATE)
    with transaction(context_of(info).sessions) as session:
        projects.describe_project(session, principal.tenant_id, input["project_id"], input.get("description"))
    return {"id": input["project_id"]}

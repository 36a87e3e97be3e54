"""Projects: Prefect 1's grouping of flows, created and found by name within a tenant (issue 13)."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.schemas.core import json_value_problem
from baton.server.database.orm import Flow, Prefect1Flow, Project
from baton.server.models.errors import Conflict, InvalidRequest, ObjectNotFound

MAX_NAME_LENGTH = 200
MAX_DESCRIPTION_LENGTH = 10_000


class DuplicateProject(Conflict):
    """The tenant has a project of that name already."""


class ProjectHoldsFlows(Conflict):
    """A project with flows is not deleted: their versions, runs and history would go with it."""


def _checked_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise InvalidRequest(f"a project's name is 1 to {MAX_NAME_LENGTH} printable characters")
    return name


def _checked_description(description: str | None) -> str | None:
    if description is not None and len(description) > MAX_DESCRIPTION_LENGTH:
        raise InvalidRequest(f"a project's description is at most {MAX_DESCRIPTION_LENGTH} characters")
    problem = json_value_problem(description)
    if problem is not None:
        raise InvalidRequest(f"a project's description: {problem}")
    return description


def create_project(session: Session, tenant_id: str, name: str, description: str | None = None) -> Project:
    """A new project of the tenant. Raises DuplicateProject when the name is taken (checked by the database)."""
    project = Project(tenant_id=tenant_id, name=_checked_name(name), description=_checked_description(description))
    try:
        with session.begin_nested():
            session.add(project)
    except IntegrityError as exc:
        raise DuplicateProject(f"the tenant has a project named {project.name!r} already") from exc
    return project


def get_project(
    session: Session, tenant_id: str, project_id: str, *, lock: Literal["share", "update"] | None = None
) -> Project:
    """The tenant's project; ``lock``: held until commit, FOR SHARE (a registration into it) or FOR UPDATE (its
    deletion), so that neither commits over the other (PostgreSQL; SQLite's writers are one at a time)."""
    query = select(Project).where(Project.tenant_id == tenant_id, Project.id == project_id)
    if lock is not None:
        query = query.with_for_update(read=lock == "share")
    project = session.scalar(query)
    if project is None:
        raise ObjectNotFound(f"project {project_id} not found")
    return project


def rename_project(session: Session, tenant_id: str, project_id: str, name: str) -> None:
    get_project(session, tenant_id, project_id)
    try:
        with session.begin_nested():
            session.execute(
                update(Project)
                .where(Project.tenant_id == tenant_id, Project.id == project_id)
                .values(name=_checked_name(name))
            )
    except IntegrityError as exc:
        raise DuplicateProject(f"the tenant has a project named {name.strip()!r} already") from exc


def describe_project(session: Session, tenant_id: str, project_id: str, description: str | None) -> None:
    get_project(session, tenant_id, project_id)
    session.execute(
        update(Project)
        .where(Project.tenant_id == tenant_id, Project.id == project_id)
        .values(description=_checked_description(description))
    )


def flow_names(session: Session, tenant_id: str, project_id: str) -> list[str]:
    """The names of the flows registered in the project (each once, whatever its versions)."""
    return list(
        session.scalars(
            select(Flow.name)
            .join(Prefect1Flow, Prefect1Flow.flow_id == Flow.id)
            .where(Prefect1Flow.tenant_id == tenant_id, Prefect1Flow.project_id == project_id)
            .distinct()
            .order_by(Flow.name)
        )
    )


def flow_version_count(session: Session, tenant_id: str, project_id: str) -> int:
    counted = select(func.count()).where(Prefect1Flow.tenant_id == tenant_id, Prefect1Flow.project_id == project_id)
    return int(session.scalar(counted) or 0)


def delete_project(session: Session, tenant_id: str, project_id: str) -> None:
    get_project(session, tenant_id, project_id, lock="update")
    names = flow_names(session, tenant_id, project_id)
    if names:
        shown = ", ".join(repr(name) for name in names[:5]) + (" ..." if len(names) > 5 else "")
        raise ProjectHoldsFlows(f"the project holds flows ({shown}): it is deleted only once it holds none")
    session.execute(delete(Project).where(Project.tenant_id == tenant_id, Project.id == project_id))

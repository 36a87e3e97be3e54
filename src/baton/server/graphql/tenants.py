"""The caller and its tenant: ``auth_info`` (what ``prefect auth login`` asks first), ``tenant``, ``hello``."""

from __future__ import annotations

from typing import Any

from ariadne import QueryType
from sqlalchemy import select

from baton.server.access import Action
from baton.server.database.orm import Tenant
from baton.server.graphql.core import Info, ListArguments, context_of, paged, require

query = QueryType()


@query.field("hello")
def _hello(_: None, info: Info) -> str:
    return "👋"


@query.field("auth_info")
def _auth_info(_: None, info: Info) -> dict[str, Any]:
    principal = require(info, Action.WHOAMI)
    scope = "RUN" if principal.is_run_token else str(principal.role)
    return {"tenant_id": principal.tenant_id, "user_id": None, "api_token_scope": scope}


_TENANT = {"id": Tenant.id, "name": Tenant.name, "slug": Tenant.name, "created": Tenant.created}


@query.field("tenant")
def _tenants(_: None, info: Info, **arguments: Any) -> list[dict[str, Any]]:
    principal = require(info, Action.WHOAMI)
    listing = ListArguments.of(arguments, _TENANT)
    statement = listing.applied(select(Tenant.id, Tenant.name, Tenant.created).where(Tenant.id == principal.tenant_id))
    with context_of(info).read_sessions() as session:
        found = session.execute(statement).all()
    return paged([{"id": id_, "name": name, "slug": name, "created": created} for id_, name, created in found])

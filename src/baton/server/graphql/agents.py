"""Prefect 1's agents over GraphQL: ``register_agent`` makes (or finds) a Baton agent of the tenant, whose id the
agent then sends with each call (X-PREFECT-AGENT-ID); its queue reads are its signs of life."""

from __future__ import annotations

import re
from typing import Any

from ariadne import MutationType, QueryType
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from baton.schemas.actions import AgentRegister
from baton.server.access import Action, check_agent_owner
from baton.server.database.connection import transaction
from baton.server.database.orm import Agent, Prefect1AgentConfig
from baton.server.graphql.core import Info, ListArguments, context_of, paged, require, runner_key
from baton.server.models import agent_configs, agents
from baton.server.models.errors import InvalidRequest, ObjectNotFound
from baton.server.models.tenants import Principal

query = QueryType()
mutation = MutationType()

_NOT_TYPE = re.compile(r"[^a-z0-9_-]+")


def agent_type(prefect_type: str) -> str:
    """Prefect 1's agent class (``LocalAgent``) as a Baton agent type (``prefect1-localagent``)."""
    return ("prefect1-" + _NOT_TYPE.sub("-", prefect_type.lower()).strip("-"))[:50]


@mutation.field("register_agent")
def _register_agent(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.AGENT_REGISTER)
    if input.get("tenant_id") not in (None, principal.tenant_id):
        raise ObjectNotFound(f"tenant {input['tenant_id']} not found")
    try:
        payload = AgentRegister(
            name=input.get("name") or "agent",
            type=agent_type(input["type"]),
            labels=input.get("labels") or [],
            agent_config_id=input.get("agent_config_id"),
            version="prefect 1",
        )
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise InvalidRequest(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from exc
    context = context_of(info)
    with transaction(context.sessions) as session:
        if payload.agent_config_id is not None:
            agent_configs.get(session, principal.tenant_id, payload.agent_config_id)  # the tenant's, else NOT_FOUND
        agent = agents.register_agent(
            session, principal.tenant_id, payload, principal.key_id, context.server.max_agents_per_tenant
        )
        return {"id": agent.id}


def touch(session: Session, tenant_id: str, agent_id: str) -> None:
    """A queue read of a registered agent: its sign of life (an unknown id is ignored: the header is a hint)."""
    try:
        agent = agents.get_agent(session, tenant_id, agent_id)
    except ObjectNotFound:
        return
    agents.touch(session, agent)


_COLUMNS = {
    "id": Agent.id,
    "name": Agent.name,
    "type": Agent.type,
    "last_queried": Agent.last_seen,
    "created": Agent.created,
}


@query.field("agent")
def _agents(_: None, info: Info, **arguments: Any) -> list[dict[str, Any]]:
    principal = require(info, Action.AGENT_LIST)
    listing = ListArguments.of(arguments, _COLUMNS, Agent.id)
    statement = listing.applied(select(Agent).where(Agent.tenant_id == principal.tenant_id))
    with context_of(info).read_sessions() as session:
        return paged(
            [
                {
                    "id": agent.id,
                    "name": agent.name,
                    "type": agent.type,
                    "labels": agent.labels,
                    "core_version": agent.version,
                    "last_queried": agent.last_seen,
                    "created": agent.created,
                }
                for agent in session.scalars(statement)
            ]
        )


def acting(session: Session, principal: Principal, agent_id: str | None) -> str | None:
    """The agent a call names (X-PREFECT-AGENT-ID), when it is one of the tenant's: a runner key's own only
    (else AccessDenied); an id of no agent of the tenant is no agent."""
    if agent_id is None:
        return None
    try:
        agents.get_agent(session, principal.tenant_id, agent_id)
    except ObjectNotFound:
        if runner_key(principal) is not None:
            raise
        return None
    if runner_key(principal) is not None:
        check_agent_owner(session, principal, agent_id)
    return agent_id


# --- agent configurations --------------------------------------------------------------------------------------

_CONFIG_COLUMNS = {
    "id": Prefect1AgentConfig.id,
    "name": Prefect1AgentConfig.name,
    "created": Prefect1AgentConfig.created,
}


@query.field("agent_config")
def _agent_configs(_: None, info: Info, **arguments: Any) -> list[dict[str, Any]]:
    principal = require(info, Action.AGENT_LIST)
    listing = ListArguments.of(arguments, _CONFIG_COLUMNS, Prefect1AgentConfig.id)
    statement = listing.applied(select(Prefect1AgentConfig).where(Prefect1AgentConfig.tenant_id == principal.tenant_id))
    with context_of(info).read_sessions() as session:
        return paged(
            [
                {
                    "id": config.id,
                    "tenant_id": config.tenant_id,
                    "name": config.name,
                    "settings": config.settings,
                    "created": config.created,
                }
                for config in session.scalars(statement)
            ]
        )


@mutation.field("create_agent_config")
def _create_agent_config(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.AGENT_CONFIG_MANAGE)
    if input.get("tenant_id") not in (None, principal.tenant_id):
        raise ObjectNotFound(f"tenant {input['tenant_id']} not found")
    with transaction(context_of(info).sessions) as session:
        config = agent_configs.create(session, principal.tenant_id, input.get("name"), input.get("settings"))
        return {"id": config.id}


@mutation.field("update_agent_config")
def _update_agent_config(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.AGENT_CONFIG_MANAGE)
    with transaction(context_of(info).sessions) as session:
        agent_configs.update(session, principal.tenant_id, input["agent_config_id"], input["settings"])
    return {"success": True, "error": None}


@mutation.field("delete_agent_config")
def _delete_agent_config(_: None, info: Info, input: dict[str, Any]) -> dict[str, Any]:
    principal = require(info, Action.AGENT_CONFIG_MANAGE)
    with transaction(context_of(info).sessions) as session:
        agent_configs.delete(session, principal.tenant_id, input["agent_config_id"])
    return {"success": True, "error": None}

"""Agents: register, long-poll claims, heartbeats (DESIGN.md §5)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from baton.schemas.actions import (
    INSTANCE_MAX_LENGTH,
    INSTANCE_PATTERN,
    AgentHeartbeat,
    AgentPrune,
    AgentRegister,
    ClaimRequest,
)
from baton.schemas.responses import NEXT_CURSOR_HEADER, AgentRead, AgentsPruned, ClaimResponse, HeartbeatResponse
from baton.server import shaping
from baton.server.access import Action, allow
from baton.server.api.deps import CursorQuery, Db, transaction
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.models import agent_fleet, agents, pages
from baton.server.models.tenants import Principal
from baton.server.services.claiming import Claimer, claim_with_wait

router = APIRouter(prefix="/agents", tags=["agents"], route_class=JsonRoute)


@router.post("", response_model=AgentRead, status_code=201, responses=error_responses(409))
def register_agent(
    payload: AgentRegister, principal: Annotated[Principal, allow(Action.AGENT_REGISTER)], db: Db, request: Request
) -> AgentRead:
    """Register (or re-register) an agent; 409 when its identity is bound to another, active key."""
    limit = request.app.state.settings.server.max_agents_per_tenant
    with transaction(db) as session:
        return shaping.agent(agents.register_agent(session, principal.tenant_id, payload, principal.key_id, limit))


@router.get("", response_model=list[AgentRead])
def list_agents(
    principal: Annotated[Principal, allow(Action.AGENT_LIST)],
    db: Db,
    request: Request,
    response: Response,
    cursor: CursorQuery = None,
) -> list[AgentRead]:
    """The tenant's agents, oldest first; a page stops at the server's byte budget (X-Next-Cursor for the rest)."""
    settings = request.app.state.settings.server
    with transaction(db) as session:
        page = pages.agents_page(session, principal.tenant_id, cursor, settings.max_list_bytes)
        reads = shaping.fleet(session, page.rows, settings.agent_stale_seconds)
    if page.next_cursor is not None:
        response.headers[NEXT_CURSOR_HEADER] = page.next_cursor
    return reads


@router.delete("/{agent_id}", response_model=AgentRead, responses=error_responses(409))
def deregister_agent(
    agent_id: str,
    principal: Annotated[Principal, allow(Action.AGENT_DEREGISTER)],
    db: Db,
    request: Request,
    instance: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=INSTANCE_MAX_LENGTH,
            pattern=INSTANCE_PATTERN,
            description="the stopping agent process (the `instance` of its claims)",
        ),
    ] = None,
) -> AgentRead:
    """Deregister (a warm stop): the agent stays listed as stale, its runs keep naming it; registering again, or any
    claim or heartbeat, makes it live. 409 while it still holds runs.

    Its long poll still waiting (on any replica) is woken, and ends without claiming (``services/claiming.py``); so
    does any later claim naming the same ``instance``.
    """
    stale_seconds = request.app.state.settings.server.agent_stale_seconds
    with transaction(db) as session:
        agent = agent_fleet.deregister(session, agents.get_agent(session, principal.tenant_id, agent_id), instance)
        read = shaping.fleet(session, [agent], stale_seconds)[0]
    request.app.state.notifier.notify_threadsafe(principal.tenant_id)  # after the commit: the poll must see it
    return read


@router.post("/prune", response_model=AgentsPruned)
def prune_agents(
    payload: AgentPrune, principal: Annotated[Principal, allow(Action.AGENT_PRUNE)], db: Db, request: Request
) -> AgentsPruned:
    """Delete agents that are deregistered or unseen for ``older_than_seconds`` (at least, and by default, the
    server's agent_stale_seconds) and hold no run; ``dry_run`` only lists them."""
    stale_seconds = request.app.state.settings.server.agent_stale_seconds
    with transaction(db) as session:
        outcome = agent_fleet.prune(
            session, principal.tenant_id, payload.older_than_seconds, stale_seconds, payload.dry_run, payload.agent_ids
        )
    return AgentsPruned(pruned=outcome.pruned, dry_run=payload.dry_run, older_than_seconds=outcome.older_than_seconds)


@router.post("/{agent_id}/claim", response_model=ClaimResponse)
async def claim(
    agent_id: str,
    payload: ClaimRequest,
    principal: Annotated[Principal, allow(Action.AGENT_CLAIM)],
    db: Db,
    request: Request,
) -> ClaimResponse:
    """Claim due runs for this agent; wait up to ``wait_seconds`` for one to become ready (long poll)."""
    claimer = Claimer(
        factory=db,
        notifier=request.app.state.notifier,
        loop_time=request.app.state.loop_time,
        settings=request.app.state.settings.server,
        tenant_id=principal.tenant_id,
        agent_id=agent_id,
        shape=lambda session, result: shaping.claimed(session, principal, result),
    )
    return await claim_with_wait(claimer, payload, request.is_disconnected)


@router.post("/{agent_id}/heartbeat", response_model=HeartbeatResponse)
def heartbeat(
    agent_id: str,
    payload: AgentHeartbeat,
    principal: Annotated[Principal, allow(Action.AGENT_HEARTBEAT)],
    db: Db,
    request: Request,
) -> HeartbeatResponse:
    """Liveness of the agent and its deployments; answers with the runs it must cancel."""
    lease = request.app.state.settings.server.claim_lease_seconds
    with transaction(db) as session:
        agent = agents.get_agent(session, principal.tenant_id, agent_id)
        outcome = agents.process_heartbeat(session, agent, payload, lease)
    if outcome.failed:  # dead deployments freed concurrency slots: runs waiting for them may go now
        request.app.state.notifier.notify_threadsafe(principal.tenant_id)
    return HeartbeatResponse(cancel=outcome.cancel, failed=outcome.failed)

"""Agents: register, long-poll claims, heartbeats (DESIGN.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, HTTPException, Request
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from baton.schemas.actions import AgentHeartbeat, AgentRegister, ClaimRequest
from baton.schemas.core import Role
from baton.schemas.responses import AgentRead, ClaimedRun, ClaimResponse, HeartbeatResponse
from baton.server.api.deps import Db, KeyReader, Runner, transaction
from baton.server.database.orm import Agent, utcnow
from baton.server.json_body import JsonRoute
from baton.server.models import agents, claims, flow_runs, flows
from baton.server.models.tenants import Principal
from baton.server.notifier import RunNotifier
from baton.settings import ServerSettings

router = APIRouter(prefix="/agents", tags=["agents"], route_class=JsonRoute)


def _owned_agent(session: Session, principal: Principal, agent_id: str) -> Agent:
    agent = agents.get_agent(session, principal.tenant_id, agent_id)
    if principal.role == Role.RUNNER and agent.api_key_id != principal.key_id:
        raise HTTPException(403, "this agent was registered with another key")
    return agent


@router.post("", response_model=AgentRead, status_code=201)
def register_agent(payload: AgentRegister, principal: Runner, db: Db) -> AgentRead:
    with transaction(db) as session:
        return agents.to_read(agents.register_agent(session, principal.tenant_id, payload, principal.key_id))


@router.get("", response_model=list[AgentRead])
def list_agents(principal: KeyReader, db: Db) -> list[AgentRead]:
    with transaction(db) as session:
        return [agents.to_read(a) for a in agents.list_agents(session, principal.tenant_id)]


@dataclass
class _Attempt:
    response: ClaimResponse
    next_due: datetime | None


def _claim_once(
    factory: sessionmaker[Session], principal: Principal, agent_id: str, payload: ClaimRequest, lease: float
) -> _Attempt:
    with transaction(factory) as session:
        agent = _owned_agent(session, principal, agent_id)
        agents.touch(session, agent)
        result = claims.claim_runs(session, agent, payload.limit, payload.prefetch_seconds, lease)
        runs = [run for run, _token in result.runs]
        reads = flow_runs.to_read(session, runs)
        flow_reads = {
            flow.id: flows.to_read(flow)
            for flow in flows.get_flows(session, agent.tenant_id, {r.flow_id for r in runs})
        }
        claimed = [
            ClaimedRun(flow_run=read, flow=flow_reads[read.flow_id], run_token=token)
            for read, (_run, token) in zip(reads, result.runs, strict=True)
        ]
    return _Attempt(ClaimResponse(runs=claimed), result.next_due)


@router.post("/{agent_id}/claim", response_model=ClaimResponse)
async def claim(agent_id: str, payload: ClaimRequest, principal: Runner, db: Db, request: Request) -> ClaimResponse:
    """Claim due runs for this agent; wait up to ``wait_seconds`` for one to become ready (long poll)."""
    settings: ServerSettings = request.app.state.settings.server
    notifier: RunNotifier = request.app.state.notifier
    loop_time = request.app.state.loop_time
    deadline = loop_time() + min(payload.wait_seconds, settings.max_claim_wait_seconds)
    while True:
        # Taken before the query: a run created while the query runs sets this event, so it is not missed.
        wake_up = notifier.event(principal.tenant_id)
        attempt = await run_in_threadpool(_claim_once, db, principal, agent_id, payload, settings.claim_lease_seconds)
        remaining = deadline - loop_time()
        if attempt.response.runs or remaining <= 0 or await request.is_disconnected():
            return attempt.response
        timeout = min(remaining, settings.claim_recheck_seconds)
        if attempt.next_due is not None:
            due_in = (attempt.next_due - utcnow()).total_seconds() - payload.prefetch_seconds
            timeout = min(timeout, max(due_in, 0.005))
        await notifier.wait(wake_up, timeout)
        if notifier.closing:
            # The server is stopping: answer "nothing yet" now rather than be cut off mid-poll; the agent polls
            # again, on another replica or once this one is back.
            return ClaimResponse(runs=[])
        if await request.is_disconnected():
            # Claiming now would leave the run Pending with nobody to read the answer until its lease expires.
            return ClaimResponse(runs=[])


@router.post("/{agent_id}/heartbeat", response_model=HeartbeatResponse)
def heartbeat(agent_id: str, payload: AgentHeartbeat, principal: Runner, db: Db, request: Request) -> HeartbeatResponse:
    """Liveness of the agent and its deployments; answers with the runs it must cancel."""
    lease = request.app.state.settings.server.claim_lease_seconds
    with transaction(db) as session:
        agent = _owned_agent(session, principal, agent_id)
        outcome = agents.process_heartbeat(session, agent, payload, lease)
    return HeartbeatResponse(cancel=outcome.cancel, failed=outcome.failed)

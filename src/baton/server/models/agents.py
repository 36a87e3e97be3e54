"""Agents: registration, heartbeats (liveness of their deployments) and `runs explain`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import ColumnElement, bindparam, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.labels import agent_can_take, missing_labels
from baton.schemas.actions import AgentHeartbeat, AgentRegister, DeploymentStatus
from baton.schemas.responses import AgentExplanation, AgentRead, RunExplanation
from baton.schemas.states import CLAIMABLE_STATES, DEPLOYED_STATES, FINAL_STATES, StateName
from baton.server.database.orm import Agent, FlowRun, table_of, utcnow
from baton.server.models import lateness
from baton.server.models.claims import extend_leases
from baton.server.models.concurrency import waiting_for_slot
from baton.server.models.errors import Conflict, ObjectNotFound, StaleState
from baton.server.models.flow_runs import get_flow_run, transition
from baton.server.models.ids import checked_id
from baton.server.models.tenants import key_is_active

_DEPLOYED = [state.value for state in DEPLOYED_STATES]


def register_agent(
    session: Session, tenant_id: str, payload: AgentRegister, api_key_id: str | None, max_agents: int = 1000
) -> Agent:
    """Same name + type + labels -> same agent id, so a restarted agent keeps its identity.

    The identity is bound to the key that registered it: another key gets :class:`Conflict` while that key is
    active; once it is revoked, the next key to register takes the agent over (an operator rotating keys).
    """
    labels_key = ",".join(payload.labels)
    identity = (
        Agent.tenant_id == tenant_id,
        Agent.name == payload.name,
        Agent.type == payload.type,
        Agent.labels_key == labels_key,
    )
    agent = session.scalar(select(Agent).where(*identity))
    if agent is None:
        _check_room(session, tenant_id, max_agents)
        agent = Agent(
            tenant_id=tenant_id,
            name=payload.name,
            type=payload.type,
            labels=payload.labels,
            labels_key=labels_key,
        )
        try:
            with session.begin_nested():
                session.add(agent)
        except IntegrityError:  # registered concurrently under the same identity
            agent = session.scalars(select(Agent).where(*identity)).one()
    _check_bound_key(session, agent, api_key_id)
    agent.agent_config_id = payload.agent_config_id
    agent.version = payload.version
    agent.api_key_id = api_key_id
    agent.last_seen = utcnow()
    agent.deregistered_at = None
    agent.deregistered_by = None
    session.flush()
    return agent


def _check_bound_key(session: Session, agent: Agent, api_key_id: str | None) -> None:
    if agent.api_key_id is None or agent.api_key_id == api_key_id or not key_is_active(session, agent.api_key_id):
        return
    raise Conflict(
        f"agent {agent.name!r} ({agent.type}, labels [{', '.join(agent.labels)}]) is registered with another key "
        "that is still active: use that key, choose another agent name, or revoke that key to move the agent"
    )


_AGENT_OF_TENANT = select(Agent).where(Agent.tenant_id == bindparam("tenant_id"), Agent.id == bindparam("id"))


def get_agent(session: Session, tenant_id: str, agent_id: str) -> Agent:
    agent_id = checked_id("agent", agent_id)
    agent = session.scalar(_AGENT_OF_TENANT, {"tenant_id": tenant_id, "id": agent_id})
    if agent is None:
        raise ObjectNotFound(f"agent {agent_id} not found")
    return agent


def _check_room(session: Session, tenant_id: str, max_agents: int) -> None:
    # Every agent is listed (GET /api/agents) and weighed against every run (explain): their number is bounded.
    count = session.scalar(select(func.count()).select_from(Agent).where(Agent.tenant_id == tenant_id)) or 0
    if count >= max_agents:
        raise Conflict(
            f"this tenant has {count} agents, the server's limit (BATON__SERVER__MAX_AGENTS_PER_TENANT): "
            "register under an existing identity (same name, type and labels) or raise the limit"
        )


def list_agents(session: Session, tenant_id: str) -> list[Agent]:
    return list(session.scalars(select(Agent).where(Agent.tenant_id == tenant_id).order_by(Agent.created, Agent.id)))


_AGENTS = table_of(Agent)


def touch(
    session: Session,
    agent: Agent,
    *,
    unless_deregistered: bool = False,
    since: datetime | None = None,
    instance: str | None = None,
) -> bool:
    """A sign of life of ``agent``, which undoes a deregistration. One UPDATE; True when it was made.

    ``unless_deregistered``: a claim attempt's sign of life (or a heartbeat's that names its process), made unless
    the agent process making it has stopped; else False, and the mark stays. That process is ``instance`` when the
    call names it: a deregistration by the same instance is its stop, one by another (or unnamed) is an earlier
    process's under the same identity. Claims that do not name it fall back to time: a deregistration at or after
    ``since`` (ever, when None) is theirs. The condition is in the UPDATE, so on PostgreSQL it waits for a
    deregistration in progress (which holds the row) and then sees it.
    """
    # Every claim attempt and heartbeat: a Core statement on the session's connection (the ORM's bulk-update path
    # costs more than the statement). The session's ``agent`` keeps its old ``last_seen``, as it did before.
    table = _AGENTS.c
    query = update(_AGENTS).where(table.id == agent.id)
    if unless_deregistered:
        not_deregistered: ColumnElement[bool] = table.deregistered_at.is_(None)
        if instance is not None:
            not_deregistered = or_(not_deregistered, table.deregistered_by.is_(None), table.deregistered_by != instance)
        elif since is not None:
            not_deregistered = or_(not_deregistered, table.deregistered_at < since)
        query = query.where(not_deregistered)
    values = {"last_seen": utcnow(), "deregistered_at": None, "deregistered_by": None}
    return session.connection().execute(query.values(values)).rowcount == 1


def vouch_for(session: Session, agent: Agent, alive: list[str]) -> None:
    """The agent sees these deployments alive: a sign of life for their runs, as good as the process's own
    heartbeat (the recovery service, ``models/lost_runs.py``, judges silence by ``heartbeat_at``)."""
    if not alive:
        return
    session.execute(
        update(FlowRun)
        .where(FlowRun.agent_id == agent.id, FlowRun.id.in_(alive), FlowRun.state.in_(_DEPLOYED))
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )


@dataclass
class HeartbeatOutcome:
    cancel: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _end_dead_deployment(session: Session, run: FlowRun, status: DeploymentStatus) -> bool:
    """Mark a run whose infrastructure ended without a final state. Returns True when it was marked Failed."""
    code = "unknown" if status.exit_code is None else str(status.exit_code)
    detail = f": {status.message}" if status.message else ""
    if run.state == StateName.CANCELLING:
        transition(session, run, StateName.CANCELLED, f"cancelled; the deployment exited with code {code}")
        return False
    message = f"process exited with code {code} before reporting a final state{detail}"
    transition(session, run, StateName.FAILED, message, {"exit_code": status.exit_code})
    return True


def process_heartbeat(
    session: Session, agent: Agent, payload: AgentHeartbeat, lease_seconds: float
) -> HeartbeatOutcome:
    # A heartbeat of the process that deregistered (under way at its warm stop) leaves the mark; see touch.
    touch(session, agent, unless_deregistered=payload.instance is not None, instance=payload.instance)
    extend_leases(session, agent, lease_seconds, payload.claims)
    deployments = payload.deployments
    vouch_for(session, agent, [status.flow_run_id for status in deployments if status.alive])
    outcome = HeartbeatOutcome()
    for status in deployments:
        if status.alive:
            continue
        run = session.scalar(select(FlowRun).where(FlowRun.id == status.flow_run_id, FlowRun.agent_id == agent.id))
        if run is None or run.state in FINAL_STATES or run.state in CLAIMABLE_STATES:
            continue
        if status.attempt is not None and status.attempt != run.attempt:
            continue  # an earlier attempt's end, reported as the run's retry was claimed: not this attempt's
        try:
            with session.begin_nested():
                if _end_dead_deployment(session, run, status):
                    outcome.failed.append(run.id)
        except StaleState:
            continue  # the run reported its own final state at this very moment
    to_cancel = session.scalars(
        select(FlowRun.id).where(FlowRun.agent_id == agent.id, FlowRun.state == StateName.CANCELLING.value)
    )
    outcome.cancel = list(to_cancel)
    return outcome


def to_read(agent: Agent) -> AgentRead:
    return AgentRead(
        id=agent.id,
        name=agent.name,
        type=agent.type,
        labels=agent.labels,
        agent_config_id=agent.agent_config_id,
        created=agent.created,
        last_seen=agent.last_seen,
    )


def _explain_agent(run: FlowRun, agent: Agent, stale_after: float) -> AgentExplanation:
    now = utcnow()
    age = (now - agent.last_seen).total_seconds() if agent.last_seen else None
    can_take = agent_can_take(run.labels, agent.labels)
    lacking = missing_labels(run.labels, agent.labels)
    if not can_take and not run.labels:
        reason = f"the run has no labels, and an agent with labels ({', '.join(agent.labels)}) never takes those"
    elif not can_take:
        reason = f"lacks label(s) {', '.join(lacking)}"
    elif agent.deregistered_at is not None:
        reason = "could take it, but it deregistered (stopped)"
    elif age is None or age > stale_after:
        reason = f"could take it, but has not been seen for over {stale_after:g} s (is it running?)"
    else:
        reason = "can take it"
    return AgentExplanation(
        agent_id=agent.id,
        name=agent.name,
        type=agent.type,
        labels=agent.labels,
        last_seen=agent.last_seen,
        seconds_since_seen=age,
        can_take=can_take,
        missing_labels=lacking,
        reason=reason,
    )


def _names(agents: list[AgentExplanation]) -> str:
    return ", ".join(agent.name for agent in agents[:5]) + (f" and {len(agents) - 5} more" if len(agents) > 5 else "")


def _timing(
    run: FlowRun, now: datetime, late: bool, able: list[AgentExplanation], live: list[AgentExplanation]
) -> str | None:
    """What a waiting run's summary says about time: when it is due, or how late it is and why (None: on time)."""
    waited = lateness.seconds_late(run, now)
    if waited < 0:
        due = run.scheduled_start_time.isoformat(timespec="seconds")
        return f"not due until {due} (in {lateness.format_duration(-waited)})"
    if not late:
        return None
    prefix = f"late by {lateness.format_duration(waited)}: "
    if live:
        return prefix + f"live agent(s) {_names(live)} can take it but have not claimed it yet"
    wanted = f"no live agent with labels [{', '.join(run.labels)}]"
    return prefix + wanted + (f"; agent(s) {_names(able)} could take it but were not seen recently" if able else "")


def explain_run(
    session: Session, tenant_id: str, flow_run_id: str, stale_after: float, late_after: float
) -> RunExplanation:
    """Why is (or isn't) this run being picked up? One line per registered agent of the tenant.

    A run due more than ``late_after`` seconds ago and still unclaimed is late (derived, not a state: DESIGN.md §3;
    ``ServerSettings.late_after_seconds``).
    """
    run = get_flow_run(session, tenant_id, flow_run_id)
    every = list_agents(session, tenant_id)
    explained = [_explain_agent(run, agent, stale_after) for agent in every]
    # Stale agents (unseen for agent_stale_seconds, or deregistered) are counted, not listed: a tenant's long-dead
    # agents would otherwise bury the live ones (issue 9).
    stale_ids = {a.id for a in every if not is_live(a, stale_after)}
    now = utcnow()
    late = run.state in CLAIMABLE_STATES and lateness.seconds_late(run, now) > late_after
    able = [a for a in explained if a.can_take]
    live = [a for a in able if a.reason == "can take it"]
    if run.state not in CLAIMABLE_STATES:
        summary = f"the run is {run.state}: it is not waiting for an agent"
    elif not explained:
        summary = "no agent has ever registered in this tenant: start one with `baton agent local start`"
    elif not able:
        wanted = ", ".join(run.labels) or "no labels"
        summary = f"no registered agent can take this run: it needs an agent with labels ⊇ [{wanted}]"
    elif not live:
        names = ", ".join(a.name for a in able[:3]) + (", ..." if len(able) > 3 else "")
        summary = (
            f"no live agent can take it: {len(able)} that could ({names}) not seen for over {stale_after:g} s "
            "or stopped (start one, or check why they stopped)"
        )
    else:
        summary = f"{len(live)} live agent(s) can take it"  # when late, the timing below says so
    timing = _timing(run, now, late, able, live) if run.state in CLAIMABLE_STATES else None
    if timing is not None:
        # Late: the timing says why in its own words, unless no agent ever registered (then the hint follows).
        summary = timing if late and explained else f"{timing}; {summary}"
    if stale_ids and run.state in CLAIMABLE_STATES:
        summary += f"; and {len(stale_ids)} stale agent(s) not seen for over {stale_after:g} s, not listed"
    slot = waiting_for_slot(session, run) if run.state in CLAIMABLE_STATES else None
    if slot is not None:  # a full concurrency limit holds it back whatever the agents
        summary = f"{slot}; {summary}"
    return RunExplanation(
        flow_run_id=run.id,
        state=run.state,
        labels=run.labels,
        scheduled_start_time=run.scheduled_start_time,
        late=late,
        summary=summary,
        agents=[a for a in explained if a.agent_id not in stale_ids],
        stale_agents=len(stale_ids),
        stale_after_seconds=stale_after,
    )


def is_live(agent: Agent, stale_seconds: float, now: datetime | None = None) -> bool:
    """Seen (registered, claimed, heartbeat) within ``stale_seconds`` and not deregistered since."""
    if agent.deregistered_at is not None or agent.last_seen is None:
        return False
    return ((now or utcnow()) - agent.last_seen).total_seconds() <= stale_seconds

"""The fleet view of agents (issue 9): live or stale, the runs each holds, deregistration on a warm stop, pruning.

An agent is *live* while it was seen (registered, claimed or heartbeat) within the server's
``agent_stale_seconds`` and has not deregistered; otherwise it is *stale*. A warm stop deregisters an agent instead
of deleting it, so its runs keep naming it and a restart under the same identity gets the same id back; any later
sign of life (``agents.touch``, ``agents.register_agent``) makes it live again. ``prune`` deletes stale agents that
hold no run; their ended runs keep their history with no agent (``flow_runs.agent_id`` is set NULL).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from baton.schemas.responses import AgentRead
from baton.schemas.states import StateName
from baton.server.database.orm import Agent, FlowRun, utcnow
from baton.server.models.agents import is_live, to_read
from baton.server.models.errors import Conflict, InvalidRequest

# The runs an agent holds: claimed (its lease running) or deployed and not yet final.
CURRENT_STATES = (
    StateName.PENDING.value,
    StateName.SUBMITTED.value,
    StateName.RUNNING.value,
    StateName.CANCELLING.value,
)
MAX_LISTED_RUNS = 20  # run ids per agent in a list answer (the count is exact): bounds the answer's size


def current_runs(session: Session, agent_ids: Sequence[str]) -> dict[str, list[str]]:
    """The ids of the runs each of ``agent_ids`` holds (one query), oldest scheduled first."""
    held: dict[str, list[str]] = defaultdict(list)
    if not agent_ids:
        return held
    rows = session.execute(
        select(FlowRun.agent_id, FlowRun.id)
        .where(FlowRun.agent_id.in_(list(agent_ids)), FlowRun.state.in_(CURRENT_STATES))
        .order_by(FlowRun.scheduled_start_time, FlowRun.id)
    )
    for agent_id, run_id in rows:
        held[str(agent_id)].append(run_id)
    return held


def fleet_reads(session: Session, agents: Sequence[Agent], stale_seconds: float) -> list[AgentRead]:
    """``agents`` with their liveness and current runs, in two queries whatever their number."""
    now = utcnow()
    held = current_runs(session, [agent.id for agent in agents])
    reads = []
    for agent in agents:
        live = is_live(agent, stale_seconds, now)
        runs = held.get(agent.id, [])
        reads.append(
            to_read(agent).model_copy(
                update={
                    "live": live,
                    "stale": not live,
                    "deregistered_at": agent.deregistered_at,
                    "current_run_count": len(runs),
                    "current_runs": runs[:MAX_LISTED_RUNS],
                }
            )
        )
    return reads


def deregister(session: Session, agent: Agent, instance: str | None = None) -> Agent:
    """Mark ``agent`` deregistered (its warm stop ended), by its process ``instance`` (None: not named).

    Raises:
        Conflict: it still holds runs (a warm stop releases its claims and waits for its deployments first).
    """
    # The row first, locked (PostgreSQL; SQLite's writers take turns anyway): a claim in progress, which holds it
    # with the runs it is taking, commits first, and those runs are then seen here (409).
    session.refresh(agent, with_for_update=True)
    held = current_runs(session, [agent.id]).get(agent.id, [])
    if held:
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        raise Conflict(
            f"agent {agent.name!r} still holds {len(held)} run(s) ({shown}): release them or let them end first"
        )
    agent.deregistered_at = utcnow()
    agent.deregistered_by = instance
    session.flush()
    return agent


@dataclass
class PruneOutcome:
    pruned: list[AgentRead]
    older_than_seconds: float


def prune(
    session: Session,
    tenant_id: str,
    older_than_seconds: float | None,
    stale_seconds: float,
    dry_run: bool,
    only: Sequence[str] | None = None,
) -> PruneOutcome:
    """Delete the tenant's agents that are deregistered or unseen for ``older_than_seconds`` and hold no run.

    ``older_than_seconds`` is at least ``stale_seconds`` (a live agent is never pruned: its next call would find
    itself unknown); None means ``stale_seconds``. ``only``: consider these agent ids only.

    Raises:
        InvalidRequest: ``older_than_seconds`` is below ``stale_seconds``.
    """
    older = stale_seconds if older_than_seconds is None else older_than_seconds
    if older < stale_seconds:
        raise InvalidRequest(
            f"older_than_seconds must be at least the server's agent_stale_seconds ({stale_seconds:g}): "
            "a live agent is never pruned"
        )
    cutoff = utcnow() - timedelta(seconds=older)
    holding = select(FlowRun.id).where(FlowRun.agent_id == Agent.id, FlowRun.state.in_(CURRENT_STATES))
    prunable = (
        Agent.tenant_id == tenant_id,
        or_(
            Agent.deregistered_at.is_not(None),
            Agent.last_seen < cutoff,
            Agent.last_seen.is_(None) & (Agent.created < cutoff),
        ),
        ~holding.exists(),
        *(() if only is None else (Agent.id.in_(list(only)),)),
    )
    victims = list(session.scalars(select(Agent).where(*prunable).order_by(Agent.created, Agent.id)))
    reads = fleet_reads(session, victims, stale_seconds)
    if dry_run or not victims:
        return PruneOutcome(reads, older)
    ids = [agent.id for agent in victims]
    # The conditions again: an agent seen (or given a run) since the select above is kept. Its ended runs keep their
    # history without it (flow_runs.agent_id is ON DELETE SET NULL; SQLite connections enforce foreign keys).
    session.execute(delete(Agent).where(Agent.id.in_(ids), *prunable).execution_options(synchronize_session=False))
    kept = set(session.scalars(select(Agent.id).where(Agent.id.in_(ids))))
    return PruneOutcome([read for read in reads if read.id not in kept], older)

"""Claiming runs for agents, and giving back leases that ran out (DESIGN.md §3, §5).

A claim is a server-side transition Scheduled/Retrying -> Pending, written as a compare-and-set, so that with
any number of agents (and server replicas sharing one database) each run is claimed exactly once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, Text, and_, bindparam, cast, exists, func, select, update
from sqlalchemy.orm import Session, defer

from baton.schemas.states import CLAIMABLE_STATES, StateName
from baton.server.database.orm import Agent, Flow, FlowRun, FlowRunLabel, utcnow
from baton.server.models import flows as flow_queries
from baton.server.models import lateness
from baton.server.models.concurrency import ClaimGate
from baton.server.models.errors import StaleState
from baton.server.models.flow_runs import stored_json_problems, transition
from baton.server.models.tenants import RUN_TOKEN_PREFIX, hash_secret, new_secret

_CLAIMABLE = [state.value for state in CLAIMABLE_STATES]

logger = logging.getLogger("baton.server")


@dataclass
class ClaimResult:
    runs: list[tuple[FlowRun, str]] = field(default_factory=list)  # (run, run token)
    flows: list[Flow] = field(default_factory=list)  # the flows of ``runs``
    next_due: datetime | None = None  # earliest matching run not yet due, when nothing was claimed


def label_filter(labelled: bool) -> ColumnElement[bool]:
    """The label rule as SQL: run labels ⊆ agent labels (bind parameter ``labels``, a list, when ``labelled``);
    unlabelled runs only to unlabelled agents."""
    if not labelled:
        return FlowRun.label_count == 0
    foreign_label = exists().where(
        FlowRunLabel.flow_run_id == FlowRun.id, FlowRunLabel.label.not_in(bindparam("labels", expanding=True))
    )
    return and_(FlowRun.label_count > 0, ~foreign_label)


def _matching(labelled: bool) -> ColumnElement[bool]:
    """The runs an agent may claim: its tenant's (bind parameter ``tenant_id``), claimable, labels it covers."""
    return and_(
        FlowRun.tenant_id == bindparam("tenant_id"),
        FlowRun.state.in_(_CLAIMABLE),
        FlowRun.kind == flow_queries.BATON_KIND,  # a Prefect 1 flow's run is Prefect 1's agents' (prefect1_runs)
        label_filter(labelled),
    )


# What a claimed run's answer holds besides its parameters and run configs: ids, names, labels, states, times, the
# run token, its flow's metadata (about 2 KB measured with issue 9's fields; rounded up).
_RUN_OVERHEAD_BYTES = 4096


def _run_size() -> ColumnElement[int]:
    """SQL estimate of a claimed run's bytes in the answer: its parameters and run config (and its flow's, alike)."""
    return (
        2 * func.coalesce(func.length(cast(FlowRun.run_config, Text)), 0)
        + func.coalesce(func.length(cast(FlowRun.parameters, Text)), 0)
        + _RUN_OVERHEAD_BYTES
    )


# Every claim attempt runs one of these (an idle agent's long poll asks for the next due time): built once per
# shape, so that neither the statements nor their cache keys are rebuilt per attempt.
@functools.cache
def _candidates(labelled: bool, skip_locked: bool) -> Select[FlowRun, int]:
    query = (
        select(FlowRun, _run_size())
        .where(_matching(labelled), FlowRun.scheduled_start_time <= bindparam("horizon"))
        .order_by(FlowRun.scheduled_start_time, FlowRun.created)
        .options(defer(FlowRun.parameters), defer(FlowRun.run_config))
        .limit(bindparam("limit"))
    )
    # PostgreSQL: FOR UPDATE SKIP LOCKED hands concurrent claimers disjoint rows, so they neither wait on each
    # other nor lose compare-and-set races.
    return query.with_for_update(skip_locked=True, of=FlowRun) if skip_locked else query


@functools.cache
def _next_due(labelled: bool) -> Select[datetime]:
    return select(func.min(FlowRun.scheduled_start_time)).where(
        _matching(labelled), FlowRun.scheduled_start_time > bindparam("horizon")
    )


def claim_runs(
    session: Session,
    agent: Agent,
    limit: int,
    prefetch_seconds: float,
    lease_seconds: float,
    max_bytes: int = 4 * 1024 * 1024,
) -> ClaimResult:
    """Claim up to ``limit`` due runs for ``agent`` in the caller's transaction.

    Fewer when their estimated answer passes ``max_bytes`` (at least one): the agent claims the rest next time.
    Candidates are read without their heavy columns, which only the claimed runs load.
    """
    now = utcnow()
    horizon = now + timedelta(seconds=prefetch_seconds)
    result = ClaimResult()
    total = 0
    full = False
    # SQLite has one writer at a time; there the compare-and-set in ``transition`` is the guard, and a lost race just
    # means trying the next candidates. PostgreSQL skips rows other claims hold (``_candidates``).
    skip_locked = session.get_bind().dialect.name == "postgresql"
    labelled = bool(agent.labels)
    params: dict[str, Any] = {"tenant_id": agent.tenant_id, "horizon": horizon}
    if labelled:
        params["labels"] = list(agent.labels)
    # Concurrency limits: runs whose flow or label limit is full are left out, or refused and passed over.
    gate = ClaimGate.open(session, agent.tenant_id)
    flows: dict[str, Flow | None] = {}  # of the claimed runs, for the answer
    for _round in range(3):
        wanted = limit - len(result.runs)
        query = _candidates(labelled, skip_locked)
        excluded = gate.excluded()
        if excluded:
            query = query.where(*excluded)
        candidates = session.execute(query, {**params, "limit": wanted if skip_locked else wanted * 2}).all()
        for run, size in candidates:
            if len(result.runs) >= limit or (result.runs and total + int(size) > max_bytes):
                full = True
                break
            # Past its flow's max_lateness: Cancelled, not run. Its flow's or a label's concurrency limit is full:
            # passed over, it waits for a slot.
            # Loaded once for every check and the answer (the session's identity map holds it only while it is
            # referenced: asked for again later, it would be read again).
            flow = session.get(Flow, run.flow_id, options=[defer(Flow.source)])  # not the code: never sent
            if lateness.skip_if_too_late(session, run, flow, now) or not gate.admit(run):
                continue
            token = new_secret(RUN_TOKEN_PREFIX)
            extra = {
                "agent_id": agent.id,
                "lease_expires_at": now + timedelta(seconds=lease_seconds),
                "run_token_hash": hash_secret(token),
            }
            session.refresh(run, ["parameters", "run_config"])  # deferred above: one read of both, not two
            problems = unservable_fields(run, flow)
            try:  # a transition that raises StaleState wrote nothing: no savepoint to roll back
                transition(session, run, StateName.PENDING, f"claimed by agent {agent.name}", None, extra)
            except StaleState:
                continue
            if problems:
                # Not retried: a retry would find the same stored data. The run is ours now (a compare-and-set
                # won under the claim's write lock on SQLite, its row locked on PostgreSQL): this cannot be stale.
                transition(session, run, StateName.FAILED, _unservable_message(problems), retry=False)
                logger.warning("flow run %s failed instead of being claimed: %s", run.id, problems)
                continue
            result.runs.append((run, token))
            flows[run.flow_id] = flow
            total += int(size)
        if full or len(result.runs) >= limit or len(candidates) < (wanted if skip_locked else wanted * 2):
            break
    if result.runs:
        result.flows = [flow for flow in flows.values() if flow is not None]
    else:
        result.next_due = session.scalar(_next_due(labelled), params)
    return result


def unservable_fields(run: FlowRun, flow: Flow | None) -> dict[str, str]:
    """Stored JSON of ``run`` or its ``flow`` that cannot be served: such a run is never handed to an agent (running
    it with those fields left out would be wrong), it fails, and the claim serves the others (issue 8, item 3)."""
    problems = stored_json_problems(run)
    if flow is not None:
        problems.update({f"flow.{name}": why for name, why in flow_queries.stored_json_problems(flow).items()})
    return problems


def _unservable_message(problems: dict[str, str]) -> str:
    fields = "; ".join(f"{name}: {why}" for name, why in sorted(problems.items()))
    return f"the run's stored data cannot be served, so it was not deployed ({fields})"


def extend_leases(session: Session, agent: Agent, lease_seconds: float, claimed: list[str] | None) -> None:
    """An agent that heartbeats is alive: the claims it names (all of its claims if None) keep their lease."""
    query = update(FlowRun).where(FlowRun.agent_id == agent.id, FlowRun.state == StateName.PENDING.value)
    if claimed is not None:
        if not claimed:
            return
        query = query.where(FlowRun.id.in_(claimed))
    session.execute(
        query.values(lease_expires_at=utcnow() + timedelta(seconds=lease_seconds)).execution_options(
            synchronize_session=False
        )
    )


def expire_leases(session: Session, max_returns: int, batch: int = 500) -> list[FlowRun]:
    """Return Pending runs whose lease ran out to Scheduled; after ``max_returns`` returns, fail them.

    Returns the runs put back in the queue (their tenants' waiting agents should be woken).
    """
    now = utcnow()
    query = select(FlowRun).where(FlowRun.state == StateName.PENDING.value, FlowRun.lease_expires_at < now).limit(batch)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)  # replicas' lease services split the work
    expired = session.scalars(query).all()
    requeued: list[FlowRun] = []
    for run in expired:
        try:
            with session.begin_nested():
                if requeue_or_fail(
                    session,
                    run,
                    max_returns,
                    lambda returns: f"lease expired: the agent did not deploy the run (return {returns}/{max_returns})",
                    lambda returns: f"the agent did not deploy the run within its lease {returns} times; giving up",
                ):
                    requeued.append(run)
        except StaleState:
            continue  # the agent reported just now: its report wins
    return requeued


def requeue_or_fail(
    session: Session,
    run: FlowRun,
    max_returns: int,
    requeued_message: Callable[[int], str],
    failed_message: Callable[[int], str],
) -> bool:
    """Put ``run`` back in the queue, counting the return; past ``max_returns`` returns fail it instead.

    Lease expiries and the recovery service share this budget, so a run cannot bounce between them for ever.
    The messages are built from the number of returns, this one included. Returns True when it is back in the queue
    (Scheduled, or Retrying: a failure of a flow with retries left).
    """
    returns = run.lease_returns + 1
    requeue = returns <= max_returns
    state, message = (StateName.SCHEDULED, requeued_message) if requeue else (StateName.FAILED, failed_message)
    transition(session, run, state, message(returns), None, {"lease_returns": returns})
    return run.state in CLAIMABLE_STATES  # a failure with retries left is back in the queue too (Retrying)

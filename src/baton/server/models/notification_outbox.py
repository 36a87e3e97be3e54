"""The outbox's other half: events the periodic service finds, claiming due deliveries, recording attempts, pruning.

Several replicas on one PostgreSQL share the outbox: a delivery is sent by the replica whose conditional UPDATE
took its lease (``claimed_until`` / ``claimed_by``), and nobody else until that lease runs out; the attempt is
recorded only by the lease's holder. Found events (``late``, ``agent-lost``) carry a ``once_key`` under a unique
index per rule, so two replicas, or two ticks, cannot both write one.

Delivery is at least once: a replica that dies after a POST and before recording it leaves the lease to run out,
and the delivery is sent again. Receivers may drop repeats by the ``X-Baton-Delivery`` header (the delivery id).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import String, and_, delete, exists, func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from baton.schemas.notifications import AGENT_LOST, LATE
from baton.schemas.states import CLAIMABLE_STATES
from baton.server.database.orm import (
    Agent,
    Flow,
    FlowRun,
    NotificationAttempt,
    NotificationDelivery,
    NotificationRule,
    Tenant,
    new_id,
)
from baton.server.models.notifications import (
    DELIVERED,
    FAILED,
    PENDING,
    late_text,
    new_delivery,
    newest_first_rank,
    run_payload,
)

MAX_FOUND_PER_RULE = 100  # late runs / lost agents written per rule and tick: the next tick takes the rest
KEPT_PER_RULE = 200  # finished state-change deliveries kept per rule (late/agent-lost ones: by age only)


@dataclass(frozen=True)
class Outgoing:
    """A delivery this replica holds the lease of, with what to send."""

    id: str
    url: str
    payload: dict[str, Any]
    attempts: int
    token: str


@dataclass(frozen=True)
class AttemptResult:
    started: datetime
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None
    delivered: bool = False
    retry: bool = True  # False: the receiver (or the SSRF rule) refused for good; do not try again


@dataclass(frozen=True)
class Backoff:
    max_attempts: int
    base_seconds: float
    max_seconds: float

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the ``attempts``-th failure."""
        return float(min(self.base_seconds * 2 ** (attempts - 1), self.max_seconds))


def _insert_once(session: Session, delivery: NotificationDelivery) -> bool:
    """Insert unless its ``once_key`` exists for the rule (another replica may have just written it)."""
    try:
        with session.begin_nested():
            session.add(delivery)
            session.flush()
    except IntegrityError:
        return False
    return True


def _rules_on(session: Session, event: str) -> Sequence[NotificationRule]:
    return session.scalars(select(NotificationRule).where(NotificationRule.events_key.like(f"%,{event},%"))).all()


def _tenant_names(session: Session, tenant_ids: set[str]) -> dict[str, str]:
    if not tenant_ids:
        return {}
    return dict(session.execute(select(Tenant.id, Tenant.name).where(Tenant.id.in_(tenant_ids))).all())


def find_late_runs(session: Session, now: datetime, retention_seconds: float) -> int:
    """Write a ``late`` event, once per (rule, run), for each claimable run due more than the rule's
    ``late_after_seconds`` ago. Runs due before the retention window are not looked at (their events are pruned)."""
    rules = _rules_on(session, LATE)
    names = _tenant_names(session, {rule.tenant_id for rule in rules})
    floor = now - timedelta(seconds=retention_seconds)
    written = 0
    for rule in rules:
        once_key = literal("late:", String) + FlowRun.id
        query = (
            select(FlowRun, Flow.name)
            .join(Flow, Flow.id == FlowRun.flow_id)
            .where(
                FlowRun.tenant_id == rule.tenant_id,
                FlowRun.state.in_([s.value for s in CLAIMABLE_STATES]),
                FlowRun.scheduled_start_time <= now - timedelta(seconds=rule.late_after_seconds),
                FlowRun.scheduled_start_time > floor,
                ~exists().where(NotificationDelivery.rule_id == rule.id, NotificationDelivery.once_key == once_key),
            )
            .order_by(FlowRun.scheduled_start_time)
            .limit(MAX_FOUND_PER_RULE)
        )
        if rule.flow_name is not None:
            query = query.where(Flow.name == rule.flow_name)
        for run, flow in session.execute(query):
            text = late_text(flow, run, rule.late_after_seconds)
            payload = run_payload(names.get(rule.tenant_id, rule.tenant_id), flow, run, run.state, None, text)
            payload["late_after_seconds"] = rule.late_after_seconds
            written += _insert_once(session, new_delivery(rule, LATE, payload, now, f"late:{run.id}"))
    return written


def find_lost_agents(session: Session, now: datetime, stale_seconds: float, retention_seconds: float) -> int:
    """Write an ``agent-lost`` event for each agent unseen for ``stale_seconds``: once per (rule, agent, last
    seen), so an agent that comes back and goes stale again fires again. A rule's ``flow`` does not apply."""
    rules = _rules_on(session, AGENT_LOST)
    names = _tenant_names(session, {rule.tenant_id for rule in rules})
    seen = func.coalesce(Agent.last_seen, Agent.created)
    written = 0
    for rule in rules:
        agents = session.scalars(
            select(Agent)
            .where(
                Agent.tenant_id == rule.tenant_id,
                # A warm stop deregisters the agent: stopped on purpose, not lost.
                Agent.deregistered_at.is_(None),
                seen <= now - timedelta(seconds=stale_seconds),
                seen > now - timedelta(seconds=retention_seconds),
            )
            .order_by(seen)
        ).all()
        keys = {agent.id: f"agent-lost:{agent.id}:{(agent.last_seen or agent.created).isoformat()}" for agent in agents}
        fired = set(
            session.scalars(
                select(NotificationDelivery.once_key).where(
                    NotificationDelivery.rule_id == rule.id, NotificationDelivery.once_key.in_(list(keys.values()))
                )
            )
        )
        for agent in [a for a in agents if keys[a.id] not in fired][:MAX_FOUND_PER_RULE]:
            last = agent.last_seen or agent.created
            silent = int((now - last).total_seconds())
            payload = {
                "text": f"Baton: agent '{agent.name}' ({agent.type}) lost: not seen for {silent}s",
                "tenant": names.get(rule.tenant_id, rule.tenant_id),
                "tenant_id": rule.tenant_id,
                "agent": {"id": agent.id, "name": agent.name, "type": agent.type, "labels": list(agent.labels)},
                "last_seen": last.isoformat(),
                "message": f"not seen for {silent}s (stale after {stale_seconds:g}s)",
            }
            written += _insert_once(session, new_delivery(rule, AGENT_LOST, payload, now, keys[agent.id]))
    return written


# --- sending -----------------------------------------------------------------------------------------------------


def _claimable(now: datetime) -> Any:
    return and_(
        NotificationDelivery.status == PENDING,
        or_(NotificationDelivery.claimed_until.is_(None), NotificationDelivery.claimed_until < now),
    )


def claim_due(session: Session, now: datetime, limit: int, lease_seconds: float) -> list[Outgoing]:
    """Take the lease of up to ``limit`` due deliveries (conditional UPDATEs: a delivery another replica took
    meanwhile is skipped), and return what to send."""
    candidates = session.scalars(
        select(NotificationDelivery.id)
        .where(_claimable(now), NotificationDelivery.next_attempt_at <= now)
        .order_by(NotificationDelivery.next_attempt_at)
        .limit(limit)
    ).all()
    token = new_id()
    until = now + timedelta(seconds=lease_seconds)
    for delivery_id in candidates:
        session.execute(
            update(NotificationDelivery)
            .where(NotificationDelivery.id == delivery_id, _claimable(now))
            .values(claimed_until=until, claimed_by=token)
            .execution_options(synchronize_session=False)
        )
    rows = session.execute(
        select(NotificationDelivery, NotificationRule.webhook_url)
        .join(NotificationRule, NotificationRule.id == NotificationDelivery.rule_id)
        .where(NotificationDelivery.claimed_by == token)
    )
    return [Outgoing(d.id, url, dict(d.payload), d.attempts, token) for d, url in rows]


def hold(session: Session, delivery: NotificationDelivery, now: datetime, lease_seconds: float) -> Outgoing:
    """Lease a delivery made just now (``baton notify test`` sends it itself, at once)."""
    delivery.claimed_by = new_id()
    delivery.claimed_until = now + timedelta(seconds=lease_seconds)
    session.add(delivery)
    session.flush()
    url = session.scalar(select(NotificationRule.webhook_url).where(NotificationRule.id == delivery.rule_id))
    return Outgoing(delivery.id, url or "", dict(delivery.payload), 0, delivery.claimed_by)


def record(session: Session, outgoing: Outgoing, result: AttemptResult, now: datetime, backoff: Backoff) -> bool:
    """Record one attempt and decide what follows: delivered, given up, or due again after the backoff.

    Only the lease's holder records (a replica whose lease ran out and was taken over records nothing).
    Returns whether it was recorded.
    """
    attempts = outgoing.attempts + 1
    values: dict[str, Any] = {
        "attempts": attempts,
        "claimed_until": None,
        "claimed_by": None,
        "last_status_code": result.status_code,
        "last_error": result.error,
    }
    if result.delivered:
        values.update(status=DELIVERED, delivered_at=now)
    elif not result.retry or attempts >= backoff.max_attempts:
        values.update(status=FAILED)
    else:
        values.update(next_attempt_at=now + timedelta(seconds=backoff.delay(attempts)))
    updated = session.execute(
        update(NotificationDelivery)
        .where(NotificationDelivery.id == outgoing.id, NotificationDelivery.claimed_by == outgoing.token)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if updated.rowcount != 1:  # type: ignore[attr-defined]
        return False
    session.add(
        NotificationAttempt(
            delivery_id=outgoing.id,
            started=result.started,
            duration_ms=result.duration_ms,
            status_code=result.status_code,
            error=result.error,
            response_excerpt=result.excerpt,
        )
    )
    return True


def prune(session: Session, now: datetime, retention_seconds: float, kept_per_rule: int = KEPT_PER_RULE) -> int:
    """Delete finished deliveries older than the retention, and finished state-change deliveries of a rule past
    its newest ``kept_per_rule``. Late and agent-lost events are kept for the whole retention: their rows are
    what keeps them from firing twice, and the finders look no further back than the retention."""
    finished = NotificationDelivery.status.in_([DELIVERED, FAILED])
    old = select(NotificationDelivery.id).where(
        finished, NotificationDelivery.created < now - timedelta(seconds=retention_seconds)
    )
    doomed = list(session.scalars(old.limit(10_000)))
    rank = newest_first_rank()
    ranked = (
        select(NotificationDelivery.id, rank)
        .where(finished, NotificationDelivery.event.not_in([LATE, AGENT_LOST]))
        .subquery()
    )
    doomed += list(session.scalars(select(ranked.c.id).where(ranked.c.rank > kept_per_rule).limit(10_000)))
    if not doomed:
        return 0
    session.execute(delete(NotificationAttempt).where(NotificationAttempt.delivery_id.in_(doomed)))
    session.execute(delete(NotificationDelivery).where(NotificationDelivery.id.in_(doomed)))
    return len(set(doomed))

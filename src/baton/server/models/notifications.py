"""Notification rules, and the outbox rows their events become (docs/design.md, Notifications).

An event is a row of ``notification_deliveries`` written in the transaction of what caused it: a run's state
change (:func:`enqueue_for_transition`, called by ``flow_runs.transition``), or the periodic service's finding
that a run is late or an agent lost (:mod:`baton.server.models.notification_outbox`). So a crash never loses an
event whose cause was committed, and never invents one whose cause was rolled back. Sending is the outbox's.

Usage::

    rule = create_rule(session, tenant_id, payload, allow, max_rules)
    enqueue_for_transition(session, run, StateName.FAILED, "boom")   # inside the transition's transaction
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from baton.schemas.notifications import (
    NotificationAttemptRead,
    NotificationDeliveryRead,
    NotificationRuleCreate,
    NotificationRuleRead,
)
from baton.schemas.states import StateName
from baton.server.database.orm import (
    FlowRun,
    NotificationAttempt,
    NotificationDelivery,
    NotificationRule,
    Tenant,
    utcnow,
)
from baton.server.models import flows
from baton.server.models.errors import Conflict, ObjectNotFound
from baton.server.models.ids import checked_id
from baton.server.webhook_targets import AllowList, check_url, redact

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
MAX_MESSAGE_CHARS = 1000  # of a state message in a notification: a notification is a line, not a log
RECENT_DELIVERIES = 5  # per rule, in `baton notify list`


# --- rules -----------------------------------------------------------------------------------------------------


def create_rule(
    session: Session, tenant_id: str, payload: NotificationRuleCreate, allow: AllowList, max_rules: int
) -> NotificationRule:
    """Add a rule to the tenant.

    Raises:
        UnsafeWebhook: the URL is refused (422; see ``webhook_targets``).
        Conflict: the tenant has ``max_rules`` rules already (409).
    """
    check_url(payload.webhook, allow)
    count = session.scalar(select(func.count()).where(NotificationRule.tenant_id == tenant_id)) or 0
    if count >= max_rules:
        raise Conflict(
            f"this tenant has {count} notification rules, the server's limit "
            "(BATON__SERVER__NOTIFY_MAX_RULES_PER_TENANT): remove one first"
        )
    rule = NotificationRule(
        tenant_id=tenant_id,
        name=payload.name,
        events=list(payload.on),
        events_key="," + ",".join(payload.on) + ",",
        webhook_url=payload.webhook,
        flow_name=payload.flow,
        late_after_seconds=payload.late_after_seconds,
        created=utcnow(),
    )
    session.add(rule)
    session.flush()
    return rule


def get_rule(session: Session, tenant_id: str, rule_id: str) -> NotificationRule:
    rule_id = checked_id("notification rule", rule_id)
    rule = session.scalar(
        select(NotificationRule).where(NotificationRule.tenant_id == tenant_id, NotificationRule.id == rule_id)
    )
    if rule is None:
        raise ObjectNotFound(f"notification rule {rule_id} not found")
    return rule


def list_rules(session: Session, tenant_id: str) -> Sequence[NotificationRule]:
    return session.scalars(
        select(NotificationRule).where(NotificationRule.tenant_id == tenant_id).order_by(NotificationRule.created)
    ).all()


def remove_rule(session: Session, tenant_id: str, rule_id: str) -> NotificationRule:
    """Delete a rule and its deliveries (pending ones are never sent)."""
    rule = get_rule(session, tenant_id, rule_id)
    delivery_ids = select(NotificationDelivery.id).where(NotificationDelivery.rule_id == rule.id)
    session.execute(delete(NotificationAttempt).where(NotificationAttempt.delivery_id.in_(delivery_ids)))
    session.execute(delete(NotificationDelivery).where(NotificationDelivery.rule_id == rule.id))
    session.delete(rule)
    session.flush()
    return rule


# --- events ----------------------------------------------------------------------------------------------------


def _slack_escape(text: str) -> str:
    """Slack reads ``<url|label>`` as a link and ``&`` as an entity: escaped, a run's message cannot add links."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _bounded(message: str | None) -> str | None:
    if message is None or len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 1] + "…"


def new_delivery(
    rule: NotificationRule, event: str, payload: dict[str, Any], now: datetime, once_key: str | None = None
) -> NotificationDelivery:
    body = {**payload, "event": event, "rule_id": rule.id, "rule_name": rule.name, "time": now.isoformat()}
    return NotificationDelivery(
        tenant_id=rule.tenant_id,
        rule_id=rule.id,
        event=event,
        once_key=once_key,
        payload=body,
        status=PENDING,
        attempts=0,
        next_attempt_at=now,
        created=now,
    )


def run_payload(tenant: str, flow: str, run: FlowRun, state: str, message: str | None, text: str) -> dict[str, Any]:
    return {
        "text": text,
        "tenant": tenant,
        "tenant_id": run.tenant_id,
        "flow": flow,
        "flow_run_id": run.id,
        "flow_run_name": run.name,
        "state": state,
        "message": message,
        "scheduled_start_time": run.scheduled_start_time.isoformat(),
    }


def _tenant_name(session: Session, tenant_id: str) -> str:
    return session.scalar(select(Tenant.name).where(Tenant.id == tenant_id)) or tenant_id


# Every state change runs it, on the session's connection (no ORM objects unless a rule matches): built once.
_RULE_EVENTS_OF_TENANT = select(NotificationRule.id, NotificationRule.events).where(
    NotificationRule.tenant_id == bindparam("tenant_id")
)


def enqueue_for_transition(session: Session, run: FlowRun, new_state: StateName, message: str | None) -> None:
    """Write the outbox rows of ``run`` having just moved to ``new_state``, in the caller's transaction.

    One indexed query (the tenant's rules) when nothing matches; the flow and tenant names are read only for a
    matching rule. Called by ``flow_runs.transition`` after its compare-and-set, so ``run.state_version`` is the new
    one: it keys the event, and a state change that rolls back takes its rows with it.
    """
    rows = session.connection().execute(_RULE_EVENTS_OF_TENANT, {"tenant_id": run.tenant_id}).all()
    wanted = [rule_id for rule_id, events in rows if new_state.value in events]
    if not wanted:
        return
    matching = list(session.scalars(select(NotificationRule).where(NotificationRule.id.in_(wanted))))
    flow = flows.name_of_run_flow(session, run) or "?"
    matching = [rule for rule in matching if rule.flow_name in (None, flow)]
    if not matching:
        return
    tenant = _tenant_name(session, run.tenant_id)
    bounded = _bounded(message)
    line = f"Baton: flow run '{flow}/{run.name}' {new_state.value}" + (f": {bounded}" if bounded else "")
    payload = run_payload(tenant, flow, run, new_state.value, bounded, _slack_escape(line))
    now = utcnow()
    for rule in matching:
        once_key = f"state:{run.id}:{run.state_version}"
        session.add(new_delivery(rule, new_state.value, payload, now, once_key))


def test_payload(session: Session, rule: NotificationRule) -> dict[str, Any]:
    label = rule.name or rule.id
    return {
        "text": _slack_escape(f"Baton: test notification of rule '{label}' (events: {', '.join(rule.events)})"),
        "tenant": _tenant_name(session, rule.tenant_id),
        "tenant_id": rule.tenant_id,
        "message": "a test sent by `baton notify test`",
    }


def late_text(flow: str, run: FlowRun, late_after: int) -> str:
    return _slack_escape(
        f"Baton: flow run '{flow}/{run.name}' is late: due {run.scheduled_start_time:%Y-%m-%d %H:%M:%S} UTC, "
        f"still {run.state} more than {late_after}s later"
    )


# --- reads -----------------------------------------------------------------------------------------------------


def _delivery_read(delivery: NotificationDelivery, attempts: list[NotificationAttempt]) -> NotificationDeliveryRead:
    return NotificationDeliveryRead(
        id=delivery.id,
        rule_id=delivery.rule_id,
        event=delivery.event,
        status=delivery.status,
        attempts=delivery.attempts,
        created=delivery.created,
        next_attempt_at=delivery.next_attempt_at if delivery.status == PENDING else None,
        delivered_at=delivery.delivered_at,
        last_status_code=delivery.last_status_code,
        last_error=delivery.last_error,
        text=str((delivery.payload or {}).get("text", "")),
        attempt_log=[
            NotificationAttemptRead(
                started=a.started,
                duration_ms=a.duration_ms,
                status_code=a.status_code,
                error=a.error,
                response_excerpt=a.response_excerpt,
            )
            for a in attempts
        ],
    )


def delivery_reads(session: Session, deliveries: Sequence[NotificationDelivery]) -> list[NotificationDeliveryRead]:
    ids = [d.id for d in deliveries]
    attempts: dict[str, list[NotificationAttempt]] = {i: [] for i in ids}
    if ids:
        rows = session.scalars(
            select(NotificationAttempt).where(NotificationAttempt.delivery_id.in_(ids)).order_by(NotificationAttempt.id)
        )
        for row in rows:
            attempts[row.delivery_id].append(row)
    return [_delivery_read(d, attempts[d.id]) for d in deliveries]


def newest_first_rank() -> Any:
    """SQL: each delivery's place among its rule's deliveries, newest first (1 = newest)."""
    return (
        func.row_number()
        .over(
            partition_by=NotificationDelivery.rule_id,
            order_by=(NotificationDelivery.created.desc(), NotificationDelivery.id.desc()),
        )
        .label("rank")
    )


def recent_deliveries(
    session: Session, rule_ids: list[str], per_rule: int = RECENT_DELIVERIES
) -> dict[str, list[NotificationDeliveryRead]]:
    """The newest ``per_rule`` deliveries of each rule, newest first (one query: a window function)."""
    if not rule_ids:
        return {}
    rank = newest_first_rank()
    ranked = select(NotificationDelivery.id, rank).where(NotificationDelivery.rule_id.in_(rule_ids)).subquery()
    deliveries = session.scalars(
        select(NotificationDelivery)
        .join(ranked, ranked.c.id == NotificationDelivery.id)
        .where(ranked.c.rank <= per_rule)
        .order_by(NotificationDelivery.created.desc(), NotificationDelivery.id.desc())
    ).all()
    by_rule: dict[str, list[NotificationDeliveryRead]] = {i: [] for i in rule_ids}
    for read in delivery_reads(session, deliveries):
        by_rule[read.rule_id].append(read)
    return by_rule


def rule_reads(session: Session, rules: Sequence[NotificationRule]) -> list[NotificationRuleRead]:
    """Rules as answered: the webhook URL redacted for everyone (``webhook_targets.redact``)."""
    recent = recent_deliveries(session, [rule.id for rule in rules])
    return [
        NotificationRuleRead(
            id=rule.id,
            tenant_id=rule.tenant_id,
            name=rule.name,
            on=list(rule.events),
            webhook=redact(rule.webhook_url),
            flow=rule.flow_name,
            late_after_seconds=rule.late_after_seconds,
            created=rule.created,
            recent_deliveries=recent.get(rule.id, []),
        )
        for rule in rules
    ]

"""Notification rules: add, list (with recent deliveries), remove, test (docs/design.md, Notifications)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Request

from baton.schemas.notifications import TEST, NotificationDeliveryRead, NotificationRuleCreate, NotificationRuleRead
from baton.server import shaping
from baton.server.access import Action, allow
from baton.server.api.deps import Db, transaction
from baton.server.database.orm import NotificationDelivery, utcnow
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.models import notification_outbox as outbox
from baton.server.models import notifications
from baton.server.models.errors import ObjectNotFound
from baton.server.models.tenants import Principal
from baton.server.services.notifications import WebhookSender
from baton.server.webhook_targets import AllowList
from baton.settings import ServerSettings

router = APIRouter(prefix="/notifications", tags=["notifications"], route_class=JsonRoute)


def _settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings.server
    return settings


@router.post("", response_model=NotificationRuleRead, status_code=201, responses=error_responses(409))
def add_rule(
    payload: NotificationRuleCreate,
    principal: Annotated[Principal, allow(Action.NOTIFICATION_CREATE)],
    db: Db,
    request: Request,
) -> NotificationRuleRead:
    """Add a rule: POST these events to this webhook. 422 for a URL the server refuses to send to (scheme,
    loopback/private/link-local/multicast address), 409 past the tenant's number of rules."""
    server = _settings(request)
    allow_list = AllowList.parse(server.notify_allow_hosts)
    with transaction(db) as session:
        rule = notifications.create_rule(
            session, principal.tenant_id, payload, allow_list, server.notify_max_rules_per_tenant
        )
        return shaping.notification_rules(session, [rule])[0]


@router.get("", response_model=list[NotificationRuleRead])
def list_rules(principal: Annotated[Principal, allow(Action.NOTIFICATION_LIST)], db: Db) -> list[NotificationRuleRead]:
    """The tenant's rules (at most the server's limit per tenant), each with its newest deliveries."""
    with transaction(db) as session:
        return shaping.notification_rules(session, notifications.list_rules(session, principal.tenant_id))


@router.delete("/{rule_id}", response_model=NotificationRuleRead)
def remove_rule(
    rule_id: str, principal: Annotated[Principal, allow(Action.NOTIFICATION_REMOVE)], db: Db
) -> NotificationRuleRead:
    """Remove a rule; its deliveries, pending ones included, go with it."""
    with transaction(db) as session:
        answer = shaping.notification_rules(session, [notifications.get_rule(session, principal.tenant_id, rule_id)])
        notifications.remove_rule(session, principal.tenant_id, rule_id)
    return answer[0]


@router.post("/{rule_id}/test", response_model=NotificationDeliveryRead)
def test_rule(
    rule_id: str, principal: Annotated[Principal, allow(Action.NOTIFICATION_TEST)], db: Db, request: Request
) -> NotificationDeliveryRead:
    """Send a test event to the rule's webhook now (one attempt, not retried) and answer the recorded delivery."""
    server = _settings(request)
    once = outbox.Backoff(1, server.notify_backoff_seconds, server.notify_max_backoff_seconds)
    now = utcnow()
    with transaction(db) as session:
        rule = notifications.get_rule(session, principal.tenant_id, rule_id)
        delivery = notifications.new_delivery(rule, TEST, notifications.test_payload(session, rule), now)
        outgoing = outbox.hold(session, delivery, now, server.notify_timeout_seconds * 2 + 30)
    sender = WebhookSender(AllowList.parse(server.notify_allow_hosts), server.notify_timeout_seconds)
    try:
        result = sender.send(outgoing)
    finally:
        sender.close()
    with transaction(db) as session:
        outbox.record(session, outgoing, result, utcnow(), once)
        stored = session.get(NotificationDelivery, outgoing.id)
        if stored is None:  # the rule was removed while the test was sent
            raise ObjectNotFound(f"notification rule {rule_id} not found")
        return shaping.notification_delivery(session, stored)

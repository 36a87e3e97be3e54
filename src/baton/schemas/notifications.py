"""Notification rules and deliveries: the request and response bodies of ``/api/notifications``.

Events are the flow-run state names (``Failed``, ``Cancelled``, ``Success``, ``Retrying``, ...; any letter case is
accepted and stored canonically) and two derived events: ``late`` (a claimable run past its start time by the
rule's ``late_after_seconds``) and ``agent-lost`` (an agent unseen for ``agent_stale_seconds``).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, field_validator

from baton.schemas.actions import NAME_FIELD
from baton.schemas.core import MAX_TIMEOUT_SECONDS, StrictModel
from baton.schemas.states import StateName

LATE = "late"
AGENT_LOST = "agent-lost"
TEST = "test"  # the event of `baton notify test`; not one a rule can ask for
DERIVED_EVENTS = (LATE, AGENT_LOST)
EVENTS: tuple[str, ...] = (*(state.value for state in StateName), *DERIVED_EVENTS)
_CANONICAL = {event.lower(): event for event in EVENTS}
MAX_EVENTS = len(EVENTS)


def canonical_event(value: str) -> str:
    """``value`` as stored (``failed`` -> ``Failed``). Raises ValueError naming the events there are."""
    event = _CANONICAL.get(value.strip().lower())
    if event is None:
        shown = repr(value) if len(value) <= 40 else f"{value[:40]!r}…"  # never echo a huge input back
        raise ValueError(f"unknown event {shown}; events are: {', '.join(EVENTS)}")
    return event


class NotificationRuleCreate(StrictModel):
    on: list[str] = Field(min_length=1, max_length=4 * MAX_EVENTS, description=f"events: {', '.join(EVENTS)}")
    webhook: str = Field(min_length=1, max_length=2048, description="http(s) URL the events are POSTed to")
    name: str | None = Field(default=None, max_length=200)
    flow: str | None = Field(default=None, description="only runs of this flow (name); all flows when omitted")
    late_after_seconds: int = Field(default=60, ge=1, le=MAX_TIMEOUT_SECONDS, strict=True)

    @field_validator("on")
    @classmethod
    def _events(cls, value: list[str]) -> list[str]:
        return sorted({canonical_event(event) for event in value}, key=EVENTS.index)

    @field_validator("flow")
    @classmethod
    def _flow(cls, value: str | None) -> str | None:
        if value is not None:
            _FlowName(name=value)
        return value


class _FlowName(BaseModel):
    name: str = NAME_FIELD


class NotificationAttemptRead(BaseModel):
    started: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    response_excerpt: str | None


class NotificationDeliveryRead(BaseModel):
    id: str
    rule_id: str
    event: str
    status: str = Field(description="pending (to be sent or retried), delivered, or failed (given up)")
    attempts: int
    created: datetime
    next_attempt_at: datetime | None = Field(description="when the next attempt is due (pending only)")
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    text: str = Field(description="the notification's one-line text")
    attempt_log: list[NotificationAttemptRead]


class NotificationRuleRead(BaseModel):
    id: str
    tenant_id: str
    name: str | None
    on: list[str]
    webhook: str = Field(description="scheme://host[:port]/… only: the full URL is a secret and is never shown")
    flow: str | None
    late_after_seconds: int
    created: datetime
    recent_deliveries: list[NotificationDeliveryRead] = Field(description="newest first")

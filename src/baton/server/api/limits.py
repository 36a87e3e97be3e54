"""Concurrency limits of labels: `baton limits set|list|delete` (a flow's own limit comes with its registration)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter

from baton.schemas.actions import LabelLimitSet
from baton.schemas.responses import LabelLimitRead
from baton.server.access import Action, allow
from baton.server.api.deps import Db, transaction
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.models import concurrency
from baton.server.models.tenants import Principal

router = APIRouter(prefix="/limits", tags=["limits"], route_class=JsonRoute)


@router.post("", response_model=LabelLimitRead, responses=error_responses(409))
def set_label_limit(
    payload: LabelLimitSet, principal: Annotated[Principal, allow(Action.LIMIT_SET)], db: Db
) -> LabelLimitRead:
    """Create or change the limit of a label: at most N runs carrying it hold a slot (Pending to Cancelling) at
    once in the tenant. Lowering a limit stops new claims only; runs already holding slots go on."""
    with transaction(db) as session:
        return concurrency.set_label_limit(session, principal.tenant_id, payload)


@router.get("", response_model=list[LabelLimitRead])
def list_label_limits(principal: Annotated[Principal, allow(Action.LIMIT_LIST)], db: Db) -> list[LabelLimitRead]:
    """The tenant's label limits by label, each with the runs holding its slots now."""
    with transaction(db) as session:
        return concurrency.list_label_limits(session, principal.tenant_id)


@router.delete("/{label:path}", response_model=LabelLimitRead, responses=error_responses(422))
def delete_label_limit(
    label: str, principal: Annotated[Principal, allow(Action.LIMIT_DELETE)], db: Db
) -> LabelLimitRead:
    """Remove the limit of a label (404 when it has none); answers the limit as it was."""
    with transaction(db) as session:
        return concurrency.delete_label_limit(session, principal.tenant_id, label)

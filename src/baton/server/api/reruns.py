"""``POST /api/flow_runs/{id}/retry``: run a Failed or Cancelled run again as a new run (``runs retry``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Response
from sqlalchemy.exc import IntegrityError

from baton.schemas.responses import FlowRunRead
from baton.server import shaping
from baton.server.access import Action, allow
from baton.server.api.deps import Db, NotifierDep, transaction
from baton.server.api.flow_runs import IDEMPOTENCY_KEY
from baton.server.errors import error_responses
from baton.server.json_body import JsonRoute
from baton.server.models import reruns
from baton.server.models.tenants import Principal

router = APIRouter(prefix="/flow_runs", tags=["flow runs"], route_class=JsonRoute)


@router.post(
    "/{flow_run_id}/retry",
    response_model=FlowRunRead,
    status_code=201,
    responses={
        200: {"model": FlowRunRead, "description": "A repeat: the run made earlier with this Idempotency-Key."},
        **error_responses(404, 409),
    },
)
def retry_flow_run(
    flow_run_id: str,
    principal: Annotated[Principal, allow(Action.FLOW_RUN_RETRY)],
    db: Db,
    notifier: NotifierDep,
    response: Response,
    idempotency_key: Annotated[str | None, IDEMPOTENCY_KEY] = None,
) -> FlowRunRead:
    """A new run of a Failed or Cancelled run's flow version, parameters and labels, due now; its
    ``retried_from`` names this run. 409 when the run is in any other state."""

    def once() -> tuple[FlowRunRead, bool]:
        with transaction(db) as session:
            run, created = reruns.rerun(session, principal.tenant_id, flow_run_id, idempotency_key)
            return shaping.flow_run(session, principal, run), created

    try:
        result, created = once()
    except IntegrityError:
        if idempotency_key is None:
            raise
        result, created = once()  # a concurrent retry with the same key won: this finds its run
    if created:
        notifier.notify_threadsafe(principal.tenant_id)
    else:
        response.status_code = 200
    return result

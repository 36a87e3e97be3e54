"""``runs retry``: run a Failed or Cancelled run again, as a new run that links to it (issue 9, run policies).

The new run has the old one's flow version, parameters, labels and executor, is due now, and names the old one in
``retried_from``. Flow-level retries (``models/retries.py``) are attempts of one run; this is a new run.
"""

from __future__ import annotations

from pydantic import ValidationError
from sqlalchemy.orm import Session

from baton.schemas.actions import FlowRunCreate
from baton.schemas.states import StateName
from baton.server.database.orm import FlowRun
from baton.server.models.errors import Conflict
from baton.server.models.flow_runs import create_flow_run_once, get_flow_run, stored_json_problems

RETRIABLE_STATES = frozenset({StateName.FAILED, StateName.CANCELLED})


def rerun(session: Session, tenant_id: str, flow_run_id: str, idempotency_key: str | None) -> tuple[FlowRun, bool]:
    """Create the new run; return it and whether it is new (False: a repeat of the same Idempotency-Key).

    Raises:
        ObjectNotFound: no such run in this tenant (404).
        Conflict: the run is not Failed or Cancelled, or its stored parameters cannot be copied (409).
        IdempotencyConflict: the key was used for another request (409).
    """
    source = get_flow_run(session, tenant_id, flow_run_id)
    if source.state not in RETRIABLE_STATES:
        raise Conflict(
            f"flow run {source.id} is {source.state}: only a Failed or Cancelled run can be retried "
            "(cancel it first, or wait for it to end)"
        )
    problems = stored_json_problems(source)
    if problems:  # a row written by hand or before input checks: never copied into a new run
        fields = ", ".join(sorted(problems))
        raise Conflict(f"flow run {source.id} cannot be retried: its stored {fields} cannot be served")
    # The run's own executor (``baton run --executor``) is part of what ran: the retry keeps it, not the flow's.
    executor = (source.run_config or {}).get("executor")
    try:
        payload = FlowRunCreate(
            flow_id=source.flow_id, parameters=source.parameters, labels=source.labels, executor=executor
        )
    except ValidationError as exc:
        raise Conflict(
            f"flow run {source.id} cannot be retried: its stored parameters, labels or executor are invalid"
        ) from exc
    return create_flow_run_once(session, tenant_id, payload, idempotency_key, retried_from=source.id)

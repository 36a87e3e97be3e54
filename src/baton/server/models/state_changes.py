"""State changes asked for through the API, and cancellation. Thin wrappers over ``flow_runs.transition``.

Who may ask for which state is decided before these are called (``server.access``).

Each caller gets at most a few attempts: a compare-and-set that loses to a concurrent writer re-reads the run and
validates again against what is now true.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from baton.exceptions import IllegalTransitionError
from baton.schemas.states import CLAIMABLE_STATES, FINAL_STATES, StateName
from baton.server.database.orm import FlowRun
from baton.server.models.errors import InvalidRequest, RevokedToken, StaleState
from baton.server.models.flow_runs import MAX_TRANSITION_ATTEMPTS, get_flow_run, transition
from baton.server.models.flows import PREFECT1_KIND

_S = StateName


def set_state(
    session: Session,
    tenant_id: str,
    flow_run_id: str,
    name: StateName,
    message: str | None,
    data: dict[str, Any] | None,
    held_by: str | None = None,
    *,
    retry: bool = True,
    token_hash: str | None = None,
) -> FlowRun:
    """Move the run to ``name``; with ``held_by``, only while that agent holds it (else StaleState, 409); with
    ``token_hash``, only while that run token is the run's (else RevokedToken, 401).

    ``retry=False``: a Failed asked for is final even when the flow has retries left (marked by hand).
    """
    if name == _S.PENDING:
        raise InvalidRequest("runs become Pending only by being claimed (POST /api/agents/{id}/claim)")
    for _attempt in range(MAX_TRANSITION_ATTEMPTS):
        run = get_flow_run(session, tenant_id, flow_run_id)
        if held_by is not None and run.agent_id != held_by:
            raise StaleState(f"flow run {flow_run_id} was released and claimed again while this request was handled")
        if token_hash is not None and run.run_token_hash != token_hash:
            raise RevokedToken(f"this run token is no longer flow run {flow_run_id}'s: the run ended or was released")
        if name == _S.SCHEDULED and run.state != _S.PENDING:
            raise IllegalTransitionError(run.state, name, "only a claimed, undeployed run can be released")
        try:  # a transition that raises StaleState wrote nothing: no savepoint to roll back
            return transition(session, run, name, message, data, retry=retry)
        except StaleState:
            session.expire(run)
    raise StaleState(f"flow run {flow_run_id} kept changing; try again")


def cancel(session: Session, tenant_id: str, flow_run_id: str) -> FlowRun:
    """Cancel a run: at once when nothing is deployed yet, else ask its agent (Cancelling)."""
    for _attempt in range(MAX_TRANSITION_ATTEMPTS):
        run = get_flow_run(session, tenant_id, flow_run_id)
        if run.state in FINAL_STATES:
            raise IllegalTransitionError(run.state, _S.CANCELLED, f"the run already ended ({run.state})")
        if run.state == _S.CANCELLING:
            return run
        try:  # a transition that raises StaleState wrote nothing: no savepoint to roll back
            # A Prefect 1 agent does not watch what it deployed: a run its flow runner has not started yet ends now
            # (its runner reads Cancelled and stops), as Prefect Server 1 cancelled it.
            not_started = run.state == _S.SUBMITTED and run.kind == PREFECT1_KIND
            if run.state in CLAIMABLE_STATES or run.state == _S.PENDING or not_started:
                return transition(session, run, _S.CANCELLED, "cancelled before it was deployed")
            return transition(session, run, _S.CANCELLING, "cancellation requested")
        except StaleState:
            session.expire(run)
    raise StaleState(f"flow run {flow_run_id} kept changing; try again")

"""Who may move a run to which state, and cancellation. Thin wrappers over ``flow_runs.transition``.

Each caller gets at most a few attempts: a compare-and-set that loses to a concurrent writer re-reads the run and
validates again against what is now true.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from baton.exceptions import IllegalTransitionError
from baton.schemas.core import Role
from baton.schemas.states import CLAIMABLE_STATES, FINAL_STATES, StateName
from baton.server.database.orm import FlowRun
from baton.server.models.errors import Forbidden, InvalidRequest, StaleState
from baton.server.models.flow_runs import MAX_TRANSITION_ATTEMPTS, get_flow_run, transition
from baton.server.models.tenants import Principal, check_runner_owns

_S = StateName
# What each kind of caller may ask for through POST /api/flow_runs/{id}/state.
RUN_TOKEN_STATES = frozenset({_S.RUNNING, _S.SUCCESS, _S.FAILED, _S.CANCELLED})
RUNNER_STATES = frozenset({_S.SUBMITTED, _S.FAILED, _S.SCHEDULED, _S.CANCELLED})
USER_STATES = frozenset({_S.SUCCESS, _S.FAILED, _S.CANCELLED})


def _allowed_states(principal: Principal) -> frozenset[StateName]:
    if principal.is_run_token:
        return RUN_TOKEN_STATES
    if principal.role == Role.ADMIN:
        return RUNNER_STATES | USER_STATES
    if principal.role == Role.RUNNER:
        return RUNNER_STATES
    if principal.role == Role.USER:
        return USER_STATES
    return frozenset()


def set_state(
    session: Session,
    principal: Principal,
    flow_run_id: str,
    name: StateName,
    message: str | None,
    data: dict[str, Any] | None,
) -> FlowRun:
    if name == _S.PENDING:
        raise InvalidRequest("runs become Pending only by being claimed (POST /api/agents/{id}/claim)")
    if name not in _allowed_states(principal):
        raise Forbidden(f"this key may not set state {name.value}")
    for _attempt in range(MAX_TRANSITION_ATTEMPTS):
        run = get_flow_run(session, principal.tenant_id, flow_run_id)
        check_runner_owns(session, principal, run)
        if name == _S.SCHEDULED and run.state != _S.PENDING:
            raise IllegalTransitionError(run.state, name, "only a claimed, undeployed run can be released")
        try:
            with session.begin_nested():
                return transition(session, run, name, message, data)
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
        try:
            with session.begin_nested():
                if run.state in CLAIMABLE_STATES or run.state == _S.PENDING:
                    return transition(session, run, _S.CANCELLED, "cancelled before it was deployed")
                return transition(session, run, _S.CANCELLING, "cancellation requested")
        except StaleState:
            session.expire(run)
    raise StaleState(f"flow run {flow_run_id} kept changing; try again")

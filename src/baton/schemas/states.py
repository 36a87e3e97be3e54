"""Flow-run and task-run states and the flow-run state machine (DESIGN.md §3).

The server validates every transition with :func:`check_transition`; clients use the sets to tell final states.
"""

from __future__ import annotations

from enum import StrEnum


class StateName(StrEnum):
    SCHEDULED = "Scheduled"
    PENDING = "Pending"
    SUBMITTED = "Submitted"
    RUNNING = "Running"
    SUCCESS = "Success"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    RETRYING = "Retrying"
    CANCELLING = "Cancelling"


FINAL_STATES = frozenset({StateName.SUCCESS, StateName.FAILED, StateName.CANCELLED})
CLAIMABLE_STATES = frozenset({StateName.SCHEDULED, StateName.RETRYING})
# Deployed: infrastructure exists that an agent watches and must kill on cancel.
DEPLOYED_STATES = frozenset({StateName.SUBMITTED, StateName.RUNNING, StateName.CANCELLING})

_S = StateName
ALLOWED_TRANSITIONS: dict[StateName, frozenset[StateName]] = {
    _S.SCHEDULED: frozenset({_S.PENDING, _S.CANCELLED}),
    _S.RETRYING: frozenset({_S.PENDING, _S.CANCELLED}),
    # Pending -> Scheduled is a lease returned (expired or released by a warm stop);
    # Pending -> Failed is a deployment error or too many lease returns.
    # -> Retrying: a failed attempt of a flow with retries left (the server turns Failed into it; nobody asks for it).
    _S.PENDING: frozenset({_S.SUBMITTED, _S.SCHEDULED, _S.FAILED, _S.CANCELLED, _S.RETRYING}),
    # Submitted/Running -> Scheduled: the server's recovery service requeues a lost run (no API caller may).
    _S.SUBMITTED: frozenset({_S.RUNNING, _S.FAILED, _S.CANCELLING, _S.CANCELLED, _S.SCHEDULED, _S.RETRYING}),
    _S.RUNNING: frozenset({_S.SUCCESS, _S.FAILED, _S.CANCELLING, _S.CANCELLED, _S.RETRYING, _S.SCHEDULED}),
    # A run that finishes while its cancellation is under way keeps the outcome it really had.
    _S.CANCELLING: frozenset({_S.CANCELLED, _S.FAILED, _S.SUCCESS}),
    _S.SUCCESS: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}


def is_final(state: str) -> bool:
    return state in FINAL_STATES


def check_transition(current: str, requested: str) -> None:
    """Raise IllegalTransitionError unless ``current -> requested`` is allowed."""
    from baton.exceptions import IllegalTransitionError

    try:
        current_state, requested_state = StateName(current), StateName(requested)
    except ValueError as exc:
        raise IllegalTransitionError(current, requested, "unknown state") from exc
    if current_state in FINAL_STATES:
        raise IllegalTransitionError(current, requested, f"the run is already {current} (final)")
    if requested_state not in ALLOWED_TRANSITIONS[current_state]:
        allowed = ", ".join(sorted(ALLOWED_TRANSITIONS[current_state])) or "nothing"
        raise IllegalTransitionError(current, requested, f"from {current} a run may go to {allowed}")


class TaskRunState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RETRYING = "Retrying"
    SUCCESS = "Success"
    FAILED = "Failed"
    CANCELLED = "Cancelled"

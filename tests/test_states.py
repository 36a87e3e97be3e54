"""The flow-run state machine (DESIGN.md §3): every allowed transition passes, everything else is refused."""

from __future__ import annotations

import itertools

import pytest

from baton.exceptions import IllegalTransitionError
from baton.schemas.states import (
    ALLOWED_TRANSITIONS,
    CLAIMABLE_STATES,
    DEPLOYED_STATES,
    FINAL_STATES,
    StateName,
    check_transition,
    is_final,
)

S = StateName
# Written out from DESIGN.md §3 rather than read from the module, so a change to the table must change this too.
EXPECTED_TRANSITIONS: dict[StateName, set[StateName]] = {
    S.SCHEDULED: {S.PENDING, S.CANCELLED},
    S.RETRYING: {S.PENDING, S.CANCELLED},
    # -> Retrying: only the server, turning a failed attempt with retries left into its next one (issue 9).
    S.PENDING: {S.SUBMITTED, S.SCHEDULED, S.FAILED, S.CANCELLED, S.RETRYING},
    # -> Scheduled from Submitted/Running: only the server's recovery service (docs/design.md §7 "Recovery").
    S.SUBMITTED: {S.RUNNING, S.FAILED, S.CANCELLING, S.CANCELLED, S.SCHEDULED, S.RETRYING},
    S.RUNNING: {S.SUCCESS, S.FAILED, S.CANCELLING, S.CANCELLED, S.RETRYING, S.SCHEDULED},
    S.CANCELLING: {S.CANCELLED, S.FAILED, S.SUCCESS},
    S.SUCCESS: set(),
    S.FAILED: set(),
    S.CANCELLED: set(),
}
ALLOWED = sorted((a, b) for a, targets in EXPECTED_TRANSITIONS.items() for b in targets)
ILLEGAL = sorted((a, b) for a, b in itertools.product(StateName, StateName) if b not in EXPECTED_TRANSITIONS[a])


def test_transition_table_matches_the_design() -> None:
    assert {state: set(targets) for state, targets in ALLOWED_TRANSITIONS.items()} == EXPECTED_TRANSITIONS


@pytest.mark.parametrize(("current", "requested"), ALLOWED, ids=[f"{a}->{b}" for a, b in ALLOWED])
def test_allowed_transition_passes(current: StateName, requested: StateName) -> None:
    check_transition(current, requested)  # raises on failure
    check_transition(current.value, requested.value)  # plain strings, as read from the database


@pytest.mark.parametrize(("current", "requested"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_illegal_transition_raises_naming_both_states(current: StateName, requested: StateName) -> None:
    with pytest.raises(IllegalTransitionError) as excinfo:
        check_transition(current, requested)

    message = str(excinfo.value)
    assert f"from {current.value} to {requested.value}" in message
    assert excinfo.value.current == current
    assert excinfo.value.requested == requested


@pytest.mark.parametrize("final", sorted(FINAL_STATES))
def test_final_state_goes_nowhere(final: StateName) -> None:
    for requested in StateName:
        with pytest.raises(IllegalTransitionError, match=rf"already {final.value} \(final\)"):
            check_transition(final, requested)


def test_illegal_transition_lists_the_states_that_are_allowed() -> None:
    with pytest.raises(IllegalTransitionError) as excinfo:
        check_transition(S.SCHEDULED, S.RUNNING)

    assert str(excinfo.value) == (
        "cannot move a flow run from Scheduled to Running: from Scheduled a run may go to Cancelled, Pending"
    )


@pytest.mark.parametrize(("current", "requested"), [("Bogus", "Running"), ("Running", "bogus"), ("running", "Success")])
def test_unknown_state_name_is_an_illegal_transition(current: str, requested: str) -> None:
    with pytest.raises(IllegalTransitionError, match="unknown state") as excinfo:
        check_transition(current, requested)

    assert current in str(excinfo.value)
    assert requested in str(excinfo.value)


def test_state_sets_match_the_design() -> None:
    assert {S.SUCCESS, S.FAILED, S.CANCELLED} == FINAL_STATES
    assert {S.SCHEDULED, S.RETRYING} == CLAIMABLE_STATES
    assert {S.SUBMITTED, S.RUNNING, S.CANCELLING} == DEPLOYED_STATES


@pytest.mark.parametrize("state", list(StateName))
def test_is_final_only_for_final_states(state: StateName) -> None:
    assert is_final(state) is (state in {S.SUCCESS, S.FAILED, S.CANCELLED})
    assert is_final(state.value) is is_final(state)

"""Setting the run's state while the API is down or the agent has not submitted yet (``baton.engine.transitions``).

A scripted API and a fake clock: every call "takes" ``call_seconds`` and every pause moves the clock, so the
budgets are checked on values, never on the real time the test takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from baton.client import Client
from baton.client.transport import ConnectFailed, ConnectionLost
from baton.engine.transitions import FIRST_POLL_SECONDS, POLL_SECONDS, StateSetter
from baton.exceptions import AuthenticationError, ConflictError, ServerUnavailableError
from baton.schemas.states import StateName

# What one try of "set the state" meets: None (set), a state name (409; the run is in that state) or an error.
Answer = str | Exception | None


@dataclass
class Clock:
    now: float = 0.0
    slept: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@dataclass
class ScriptedApi:
    """Answers each ``set_flow_run_state`` with the next scripted answer; the last one repeats."""

    clock: Clock
    answers: list[Answer]
    call_seconds: float = 0.1
    tries: int = 0
    reads: int = 0
    refused_by: str = ""
    names_state: bool = True  # its 409 names the run's state, as servers since issue 12 do

    def change_flow_run_state(
        self,
        flow_run_id: str,
        name: str,
        message: str | None = None,
        wait_seconds: float = 0.0,
        logs: list[dict[str, Any]] | None = None,
    ) -> None:
        self.tries += 1
        self.clock.now += self.call_seconds
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        if answer is not None:
            self.refused_by = answer
            detail = f"cannot move a flow run from {answer} to {name}"
            raise ConflictError(409, detail, answer if self.names_state else None)

    def get_flow_run(self, flow_run_id: str) -> ScriptedApi:
        self.reads += 1
        self.clock.now += self.call_seconds
        return self

    @property
    def state(self) -> str:
        return self.refused_by


def setter(api: ScriptedApi, should_stop: Callable[[], bool] = lambda: False, **budgets: float) -> StateSetter:
    return StateSetter(
        cast(Client, api), "run-1", clock=api.clock, sleep=api.clock.sleep, should_stop=should_stop, **budgets
    )


DOWN = ServerUnavailableError("HTTP 503 database busy")


def test_an_outage_longer_than_the_pending_wait_does_not_use_it_up() -> None:
    # Given an API that answers 503 for about 100 s (each call hangs 10 s), then says Pending twice, then lets
    # the run start: the agent could not post Submitted during the outage either
    clock = Clock()
    api = ScriptedApi(clock, [DOWN] * 8 + ["Pending"] * 2 + [None], call_seconds=10.0)

    # When the engine sets Running with a 60 s wait for Submitted and a 120 s outage budget
    refused_by = setter(api, pending_seconds=60, unavailable_seconds=120).set(StateName.RUNNING)

    # Then it kept trying through both and the run started, although more than both budgets went by
    assert refused_by is None
    assert api.tries == 11
    assert clock.now > 120


def test_a_run_pending_longer_than_the_wait_while_the_api_answers_is_given_up() -> None:
    clock = Clock()
    api = ScriptedApi(clock, ["Pending"], call_seconds=0.0)

    refused_by = setter(api, pending_seconds=60).set(StateName.RUNNING)

    assert refused_by == "Pending"
    assert clock.now == pytest.approx(60)
    # Short pauses first (the agent's Submitted usually follows within milliseconds), doubling up to POLL_SECONDS
    doubling = [FIRST_POLL_SECONDS * 2**n for n in range(5)]
    assert clock.slept[:6] == pytest.approx([*doubling, POLL_SECONDS])
    assert set(clock.slept[5:-1]) == {POLL_SECONDS}
    assert api.tries == len(clock.slept) + 1
    assert api.reads == 0  # each refusal named the state


def test_a_refusal_without_the_state_from_an_older_server_reads_the_run() -> None:
    api = ScriptedApi(Clock(), ["Pending", None], names_state=False)

    assert setter(api).set(StateName.RUNNING) is None
    assert (api.tries, api.reads) == (2, 1)


def test_the_default_wait_for_submitted_outlasts_the_servers_claim_lease() -> None:
    # The lease (BATON__SERVER__CLAIM_LEASE_SECONDS) is 30 s by default: an agent alive but slow to submit must
    # not lose its run to an engine that gave up first.
    clock = Clock()
    api = ScriptedApi(clock, ["Pending"] * 80 + [None], call_seconds=0.0)  # submitted after 40 s

    assert setter(api).set(StateName.RUNNING) is None


def test_an_api_unavailable_for_longer_than_its_budget_raises() -> None:
    clock = Clock()
    api = ScriptedApi(clock, [DOWN], call_seconds=10.0)

    with pytest.raises(ServerUnavailableError, match="503"):
        setter(api, unavailable_seconds=120).set(StateName.RUNNING)
    assert 120 <= clock.now <= 120 + 10


def test_submitted_seen_after_a_refused_running_is_asked_again() -> None:
    # The agent's Submitted landed between the engine's refused Running and its read of the state.
    api = ScriptedApi(Clock(), ["Submitted", None])

    assert setter(api).set(StateName.RUNNING) is None
    assert api.tries == 2


@pytest.mark.parametrize("state", ["Cancelling", "Cancelled", "Failed", "Scheduled", "Running"])
def test_a_state_that_will_not_become_submitted_ends_the_wait_at_once(state: str) -> None:
    # Scheduled: the claim's lease expired (the agent died before submitting); Running: a lost answer.
    clock = Clock()
    api = ScriptedApi(clock, [state])

    assert setter(api).set(StateName.RUNNING) == state
    assert (api.tries, clock.slept) == (1, [])


def test_a_refused_token_ends_the_wait_at_once() -> None:
    clock = Clock()
    api = ScriptedApi(clock, [DOWN, "Pending", AuthenticationError(401, "revoked")])

    with pytest.raises(AuthenticationError):
        setter(api).set(StateName.RUNNING)
    assert api.tries == 3


def test_a_stop_request_ends_the_wait_for_submitted() -> None:
    api = ScriptedApi(Clock(), ["Pending"])

    assert setter(api, should_stop=lambda: api.tries >= 3).set(StateName.RUNNING) == "Pending"
    assert api.tries == 3


def test_final_states_are_not_waited_for() -> None:
    # Only Running waits for the agent: a final state refused by Pending is an answer, not a reason to wait.
    clock = Clock()
    api = ScriptedApi(clock, ["Pending"])

    assert setter(api).set(StateName.FAILED, "boom") == "Pending"
    assert clock.slept == []


def test_a_final_state_whose_answer_was_lost_counts_as_set_when_the_retry_finds_the_token_revoked() -> None:
    # Given a Success the server committed (revoking the run token) before its answer was lost
    lost = ServerUnavailableError("the API at http://api failed: connection reset")
    lost.__cause__ = ConnectionLost("Server disconnected without sending a response.")
    api = ScriptedApi(Clock(), [lost, AuthenticationError(401, "unknown or revoked key")])

    # Then the retry's 401 says the run is final: the Success went through
    assert setter(api).set(StateName.SUCCESS) == StateName.SUCCESS
    assert api.tries == 2


@pytest.mark.parametrize("state", [StateName.SUCCESS, StateName.RUNNING])
def test_a_refused_token_after_a_request_that_never_left_is_no_success(state: StateName) -> None:
    # A connection that was never made cannot have set anything; nor does Running revoke the token.
    never_sent = ServerUnavailableError("cannot reach the API at http://api: connection refused")
    never_sent.__cause__ = ConnectFailed("[Errno 111] Connection refused")
    lost = ServerUnavailableError("read timeout")
    first = never_sent if state == StateName.SUCCESS else lost
    api = ScriptedApi(Clock(), [first, AuthenticationError(401, "unknown or revoked key")])

    with pytest.raises(AuthenticationError):
        setter(api).set(state)

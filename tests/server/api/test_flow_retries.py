"""Flow-level retries (issue 9): a failed attempt of a flow with retries left becomes Retrying, due after the delay,
claimable again as the next attempt; every way of failing a run goes through it; Cancel is never retried.

Runs on SQLite and PostgreSQL (the package's ``api_server``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from baton.client import Client
from baton.exceptions import AuthenticationError
from baton.schemas.responses import FlowRunRead
from server.harness import TenantContext, unique


@dataclass
class Attempt:
    """A run of a flow with retries, claimed by an agent that alone has the run's label."""

    run_id: str
    agent_id: str
    token: str
    label: str


def flow_with_retries(tenant: TenantContext, retries: int, delay: int = 0) -> str:
    name = unique("retried")
    tenant.register_flow(name, retries=retries, retry_delay_seconds=delay)
    return name


def claim(runner: Client, agent_id: str, run_id: str) -> str:
    """Claim ``run_id`` (due now) for the agent; its run token."""
    return TenantContext.claim_one(runner, agent_id, run_id).run_token


def start(tenant: TenantContext, user: Client, runner: Client, flow_name: str) -> Attempt:
    label = unique("only")
    run = user.create_flow_run(flow_name=flow_name, labels=[label])
    agent = runner.register_agent(unique("agent"), "local", [label])
    return Attempt(run.id, agent.id, claim(runner, agent.id, run.id), label)


def to_running(tenant: TenantContext, runner: Client, run_id: str, token: str) -> None:
    runner.set_flow_run_state(run_id, "Submitted", "PID: 1", {"pid": 1})
    tenant.client(token).set_flow_run_state(run_id, "Running")


def names(run: FlowRunRead) -> list[str]:
    return [state.name for state in run.states]


def test_a_failed_attempt_becomes_retrying_due_after_the_delay(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    # Given a Running run of a flow with 2 retries, 60 s apart
    attempt = start(tenant, user, runner, flow_with_retries(tenant, retries=2, delay=60))
    to_running(tenant, runner, attempt.run_id, attempt.token)

    # When its flow-run process reports Failed
    answer = tenant.client(attempt.token).set_flow_run_state(attempt.run_id, "Failed", "boom")

    # Then the run is Retrying, attempt 2, due 60 s after the failure, and nobody holds it
    assert answer.state == "Retrying"
    run = tenant.run(attempt.run_id)
    assert run.attempt == 2
    assert names(run)[-2:] == ["Failed", "Retrying"]
    failed, retrying = run.states[-2:]
    assert failed.message == "boom"
    assert run.scheduled_start_time == failed.timestamp + timedelta(seconds=60)
    due = run.scheduled_start_time.isoformat(timespec="seconds")
    assert retrying.message == f"attempt 1 of 3 failed: boom; retrying at {due} (attempt 2 of 3)"
    assert run.state_message == retrying.message
    assert run.agent_id is None
    assert run.deployment is None
    # and the delay holds: an agent asking now does not get it
    assert runner.claim(attempt.agent_id).runs == []


def test_the_token_of_attempt_1_is_refused_on_attempt_2(tenant: TenantContext, user: Client, runner: Client) -> None:
    attempt = start(tenant, user, runner, flow_with_retries(tenant, retries=1))
    to_running(tenant, runner, attempt.run_id, attempt.token)
    old = tenant.client(attempt.token)
    old.set_flow_run_state(attempt.run_id, "Failed", "boom")

    # The retry is claimable at once (no delay): attempt 2 gets a token of its own
    new_token = claim(runner, attempt.agent_id, attempt.run_id)
    assert new_token != attempt.token
    assert tenant.run(attempt.run_id).state == "Pending"

    # The old token can neither read nor report on attempt 2
    with pytest.raises(AuthenticationError):
        old.get_flow_run(attempt.run_id)
    with pytest.raises(AuthenticationError):
        old.set_flow_run_state(attempt.run_id, "Success")
    # while the new one can
    runner.set_flow_run_state(attempt.run_id, "Submitted", "PID: 2", {"pid": 2})
    tenant.client(new_token).set_flow_run_state(attempt.run_id, "Running")
    assert tenant.client(new_token).set_flow_run_state(attempt.run_id, "Success").state == "Success"
    assert tenant.run(attempt.run_id).attempt == 2


def test_the_last_attempt_fails_for_good_with_every_attempt_in_the_history(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    attempt = start(tenant, user, runner, flow_with_retries(tenant, retries=2))
    token = attempt.token
    for number in (1, 2, 3):
        to_running(tenant, runner, attempt.run_id, token)
        answer = tenant.client(token).set_flow_run_state(attempt.run_id, "Failed", f"boom {number}")
        assert answer.attempt == min(number + 1, 3)
        if number < 3:
            assert answer.state == "Retrying"
            token = claim(runner, attempt.agent_id, attempt.run_id)

    run = tenant.run(attempt.run_id)
    assert run.state == "Failed"
    assert run.state_message == "boom 3"
    assert run.end_time is not None
    failures = [state.message for state in run.states if state.name == "Failed"]
    assert failures == ["boom 1", "boom 2", "boom 3"]
    retrying = [state.message or "" for state in run.states if state.name == "Retrying"]
    assert [message.split(";")[0] for message in retrying] == [
        "attempt 1 of 3 failed: boom 1",
        "attempt 2 of 3 failed: boom 2",
    ]
    assert names(run).count("Pending") == 3


def test_a_deployment_failure_is_retried(tenant: TenantContext, user: Client, runner: Client) -> None:
    attempt = start(tenant, user, runner, flow_with_retries(tenant, retries=1))

    answer = runner.set_flow_run_state(attempt.run_id, "Failed", "image not found")

    assert answer.state == "Retrying"
    assert names(tenant.run(attempt.run_id))[-3:] == ["Pending", "Failed", "Retrying"]


def test_a_deployment_that_died_without_a_final_state_is_retried(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    attempt = start(tenant, user, runner, flow_with_retries(tenant, retries=1))
    to_running(tenant, runner, attempt.run_id, attempt.token)

    answer = runner.agent_heartbeat(
        attempt.agent_id, [{"flow_run_id": attempt.run_id, "alive": False, "exit_code": 137}]
    )

    assert answer.failed == [attempt.run_id]
    run = tenant.run(attempt.run_id)
    assert run.state == "Retrying"
    failed = run.states[-2]
    assert failed.name == "Failed"
    assert failed.data == {"exit_code": 137}
    assert "process exited with code 137" in (run.state_message or "")


def test_a_flow_without_retries_fails_at_once(tenant: TenantContext, user: Client, runner: Client) -> None:
    attempt = start(tenant, user, runner, flow_with_retries(tenant, retries=0))
    assert runner.set_flow_run_state(attempt.run_id, "Failed", "boom").state == "Failed"
    assert tenant.run(attempt.run_id).attempt == 1


def test_a_failure_marked_by_hand_with_a_user_key_is_final(tenant: TenantContext, user: Client, runner: Client) -> None:
    attempt = start(tenant, user, runner, flow_with_retries(tenant, retries=3))
    to_running(tenant, runner, attempt.run_id, attempt.token)
    assert user.set_flow_run_state(attempt.run_id, "Failed", "marked by hand").state == "Failed"


def test_a_run_being_cancelled_is_never_retried(tenant: TenantContext, user: Client, runner: Client) -> None:
    # Given a Running run of a flow with retries, being cancelled
    attempt = start(tenant, user, runner, flow_with_retries(tenant, retries=3))
    to_running(tenant, runner, attempt.run_id, attempt.token)
    assert user.cancel_flow_run(attempt.run_id).state == "Cancelling"

    # When its process fails on the way out, then the run is Failed for good
    answer = tenant.client(attempt.token).set_flow_run_state(attempt.run_id, "Failed", "killed")
    assert answer.state == "Failed"
    assert "Retrying" not in names(tenant.run(attempt.run_id))


def test_a_retrying_run_can_be_cancelled(tenant: TenantContext, user: Client, runner: Client) -> None:
    attempt = start(tenant, user, runner, flow_with_retries(tenant, retries=3, delay=3600))
    runner.set_flow_run_state(attempt.run_id, "Failed", "boom")
    assert user.cancel_flow_run(attempt.run_id).state == "Cancelled"
    assert runner.claim(attempt.agent_id).runs == []


def test_nobody_may_ask_for_retrying(tenant: TenantContext, user: Client, runner: Client) -> None:
    attempt = start(tenant, user, runner, flow_with_retries(tenant, retries=1))
    for key in (tenant.key("admin"), tenant.key("user"), tenant.key("runner"), attempt.token):
        response = tenant.raw(key).post(f"/api/flow_runs/{attempt.run_id}/state", json={"name": "Retrying"})
        assert response.status_code == 403, response.text
    assert tenant.run(attempt.run_id).state == "Pending"


def test_run_policies_are_part_of_the_flow(tenant: TenantContext, admin: Client) -> None:
    name = unique("policy")
    first = tenant.register_flow(name)
    assert (first.retries, first.retry_delay_seconds, first.max_lateness_seconds) == (0, 0, None)
    assert tenant.register_flow(name).version == first.version  # unchanged: the same version
    second = tenant.register_flow(name, retries=2, retry_delay_seconds=30, max_lateness_seconds=3600)
    assert second.version == first.version + 1
    assert (second.retries, second.retry_delay_seconds, second.max_lateness_seconds) == (2, 30, 3600)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("retries", -1),
        ("retries", 101),
        ("retries", True),
        ("retries", "2"),
        ("retries", 1.5),
        ("retry_delay_seconds", -1),
        ("retry_delay_seconds", 10**12),
        ("retry_delay_seconds", False),
        ("max_lateness_seconds", 0),
        ("max_lateness_seconds", "1h"),
    ],
)
def test_bad_run_policies_are_refused(tenant: TenantContext, field: str, value: object) -> None:
    payload = {"name": "bad", "entrypoint": "hello", "source": "x = 1", field: value}
    response = tenant.raw(tenant.key("admin")).post("/api/flows", json=payload)
    assert response.status_code == 422, response.text
    assert field in response.text


def test_an_earlier_attempts_end_reported_late_does_not_end_the_next_attempt(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    # Given a run whose first attempt failed and whose second attempt is Running
    attempt = start(tenant, user, runner, flow_with_retries(tenant, retries=1))
    assert runner.set_flow_run_state(attempt.run_id, "Failed", "boom").state == "Retrying"
    token = claim(runner, attempt.agent_id, attempt.run_id)
    to_running(tenant, runner, attempt.run_id, token)
    assert tenant.run(attempt.run_id).attempt == 2
    dead = {"flow_run_id": attempt.run_id, "alive": False, "exit_code": 1}

    # When the agent's heartbeat, sent as the retry was claimed, reports the first attempt's process as ended
    answer = runner.agent_heartbeat(attempt.agent_id, [{**dead, "attempt": 1}])

    # Then the second attempt goes on; a report naming the second attempt does end it
    assert answer.failed == []
    assert tenant.run(attempt.run_id).state == "Running"
    assert runner.agent_heartbeat(attempt.agent_id, [{**dead, "attempt": 2}]).failed == [attempt.run_id]

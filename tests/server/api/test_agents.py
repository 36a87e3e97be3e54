"""Agents over the API: registration, who may claim, heartbeats (dead deployments, cancels) and release."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from baton.client import Client
from baton.exceptions import AuthenticationError, ConflictError, NotFoundError, PermissionDeniedError
from baton.schemas.responses import AgentRead, ClaimedRun, FlowRead, FlowRunRead
from server.harness import TenantContext

# --- registration -----------------------------------------------------------------------------------------


def test_same_name_type_and_labels_is_the_same_agent(runner: Client) -> None:
    first = runner.register_agent("edge", "docker", ["b", "a"], agent_config_id="cfg-1")

    again = runner.register_agent("edge", "docker", ["a", "b", "a"])
    other_labels = runner.register_agent("edge", "docker", ["a"])
    other_type = runner.register_agent("edge", "local", ["a", "b"])

    assert (first.labels, first.agent_config_id, first.type) == (["a", "b"], "cfg-1", "docker")
    assert again.id == first.id
    assert len({first.id, other_labels.id, other_type.id}) == 3
    assert {a.id for a in runner.list_agents()} == {first.id, other_labels.id, other_type.id}


def test_registration_is_201_and_records_last_seen(tenant: TenantContext) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)

    response = tenant.raw(tenant.key("runner")).post("/api/agents", json={"name": "a", "type": "local"})

    assert response.status_code == 201
    body = response.json()
    assert body["labels"] == []
    assert datetime.fromisoformat(body["last_seen"]) >= before


@pytest.mark.parametrize("role", ["user", "read"])
def test_user_and_read_keys_cannot_act_as_agents(tenant: TenantContext, agent: AgentRead, role: str) -> None:
    client = tenant.client(tenant.key(role))

    with pytest.raises(PermissionDeniedError, match=f"role \\({role}\\)"):
        client.register_agent("sneaky", "local", [])
    with pytest.raises(PermissionDeniedError, match=f"role \\({role}\\)"):
        client.claim(agent.id)
    with pytest.raises(PermissionDeniedError):
        client.agent_heartbeat(agent.id, [])


def test_user_key_cannot_claim_runs(tenant: TenantContext, agent: AgentRead, run: FlowRunRead) -> None:
    with pytest.raises(PermissionDeniedError) as excinfo:
        tenant.client(tenant.key("user")).claim(agent.id)

    assert excinfo.value.status_code == 403
    assert tenant.run(run.id).state == "Scheduled"


def test_runner_key_cannot_use_an_agent_registered_with_another_key(
    tenant: TenantContext, agent: AgentRead, run: FlowRunRead
) -> None:
    other_runner = tenant.client(tenant.new_key("runner"))

    with pytest.raises(PermissionDeniedError, match="this agent was registered with another key"):
        other_runner.claim(agent.id)
    with pytest.raises(PermissionDeniedError, match="this agent was registered with another key"):
        other_runner.agent_heartbeat(agent.id, [])
    assert tenant.run(run.id).state == "Scheduled"


def test_admin_key_cannot_drive_an_agent_registered_with_another_key(
    tenant: TenantContext, admin: Client, agent: AgentRead, run: FlowRunRead
) -> None:
    # An agent's identity is bound to its key (issue 8, item 5): an admin key is another key too.
    with pytest.raises(PermissionDeniedError, match="this agent was registered with another key"):
        admin.claim(agent.id)
    dead = [{"flow_run_id": run.id, "alive": False, "exit_code": 1}]
    with pytest.raises(PermissionDeniedError, match="this agent was registered with another key"):
        admin.agent_heartbeat(agent.id, dead)
    assert tenant.run(run.id).state == "Scheduled"


def test_unknown_agent_is_404(runner: Client) -> None:
    with pytest.raises(NotFoundError, match="agent nope not found"):
        runner.claim("nope")
    with pytest.raises(NotFoundError, match="agent nope not found"):
        runner.agent_heartbeat("nope", [])


# --- claims ------------------------------------------------------------------------------------------------


def test_claim_moves_the_run_to_pending_with_a_run_token(
    tenant: TenantContext, claimed: ClaimedRun, agent: AgentRead, flow: FlowRead
) -> None:
    run = tenant.run(claimed.flow_run.id)

    assert claimed.run_token.startswith("batr_")
    assert (claimed.flow.id, claimed.flow.name) == (flow.id, "hello")
    assert (claimed.flow_run.state, claimed.flow_run.agent_id) == ("Pending", agent.id)
    assert (run.state, run.state_message, run.agent_id) == ("Pending", "claimed by agent agent-1", agent.id)
    assert [s.name for s in run.states] == ["Scheduled", "Pending"]


def test_claim_takes_at_most_limit_runs_earliest_first(
    runner: Client, agent: AgentRead, user: Client, flow: FlowRead
) -> None:
    now = datetime.now(UTC)
    runs = [
        user.create_flow_run(flow_name="hello", scheduled_start_time=now - timedelta(minutes=m)).id
        for m in (1, 5, 3, 2, 4)
    ]
    earliest_first = [runs[1], runs[4], runs[2], runs[3], runs[0]]

    first = runner.claim(agent.id, limit=3)
    second = runner.claim(agent.id, limit=3)
    third = runner.claim(agent.id, limit=3)

    assert [c.flow_run.id for c in first.runs] == earliest_first[:3]
    assert [c.flow_run.id for c in second.runs] == earliest_first[3:]
    assert third.runs == []
    assert len({c.run_token for c in [*first.runs, *second.runs]}) == 5


def test_claimed_run_is_not_claimed_again(runner: Client, agent: AgentRead, claimed: ClaimedRun) -> None:
    other = runner.register_agent("agent-2", "local", [])

    assert runner.claim(agent.id, limit=10).runs == []
    assert runner.claim(other.id, limit=10).runs == []


def test_claim_and_heartbeat_update_last_seen(runner: Client, agent: AgentRead) -> None:
    assert agent.last_seen is not None
    time.sleep(0.01)
    runner.claim(agent.id)
    (after_claim,) = runner.list_agents()
    time.sleep(0.01)
    runner.agent_heartbeat(agent.id, [])
    (after_heartbeat,) = runner.list_agents()

    assert after_claim.last_seen is not None
    assert after_heartbeat.last_seen is not None
    assert agent.last_seen < after_claim.last_seen < after_heartbeat.last_seen


# --- release -------------------------------------------------------------------------------------------------


def test_released_run_is_claimable_again_and_its_token_dies(
    tenant: TenantContext, runner: Client, claimed: ClaimedRun
) -> None:
    # Given a claimed run that its agent gives back (a warm stop before deploying)
    run_id = claimed.flow_run.id
    released = runner.set_flow_run_state(run_id, "Scheduled", "agent stopping")

    # Then it is Scheduled with no agent, its token no longer works, and another agent can claim it
    assert (released.state, released.agent_id, released.state_message) == ("Scheduled", None, "agent stopping")
    with pytest.raises(AuthenticationError):
        tenant.client(claimed.run_token).get_flow_run(run_id)
    other = runner.register_agent("agent-2", "local", [])
    reclaimed = TenantContext.claim_one(runner, other.id, run_id)
    assert reclaimed.run_token != claimed.run_token
    assert [s.name for s in tenant.run(run_id).states] == ["Scheduled", "Pending", "Scheduled", "Pending"]
    assert tenant.run(run_id).agent_id == other.id


def test_deployed_run_cannot_be_released(tenant: TenantContext) -> None:
    staged = tenant.stage("Submitted")

    with pytest.raises(ConflictError, match="only a claimed, undeployed run can be released"):
        tenant.client(tenant.key("runner")).set_flow_run_state(staged.id, "Scheduled")


# --- heartbeats ------------------------------------------------------------------------------------------


def dead(run_id: str, exit_code: int | None = 137, message: str | None = None) -> list[dict[str, object]]:
    return [{"flow_run_id": run_id, "alive": False, "exit_code": exit_code, "message": message}]


@pytest.mark.parametrize("source", ["Pending", "Submitted", "Running"])
def test_deployment_that_exited_without_a_final_state_fails_its_run(tenant: TenantContext, source: str) -> None:
    staged = tenant.stage(source)
    runner = tenant.client(tenant.key("runner"))
    assert staged.agent_id is not None

    answer = runner.agent_heartbeat(staged.agent_id, dead(staged.id))

    run = tenant.run(staged.id)
    assert answer.failed == [staged.id]
    assert answer.cancel == []
    assert run.state == "Failed"
    assert run.state_message == "process exited with code 137 before reporting a final state"
    assert run.states[-1].data == {"exit_code": 137}


def test_dead_deployment_message_carries_unknown_code_and_detail(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")
    assert staged.agent_id is not None

    tenant.client(tenant.key("runner")).agent_heartbeat(staged.agent_id, dead(staged.id, None, "OOMKilled"))

    message = tenant.run(staged.id).state_message
    assert message == "process exited with code unknown before reporting a final state: OOMKilled"


def test_cancelling_run_whose_deployment_exited_is_cancelled(tenant: TenantContext) -> None:
    staged = tenant.stage("Cancelling")
    assert staged.agent_id is not None

    answer = tenant.client(tenant.key("runner")).agent_heartbeat(staged.agent_id, dead(staged.id))

    run = tenant.run(staged.id)
    assert (answer.failed, answer.cancel) == ([], [])
    assert run.state == "Cancelled"
    assert "137" in (run.state_message or "")


def test_live_deployment_changes_nothing(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")
    assert staged.agent_id is not None

    answer = tenant.client(tenant.key("runner")).agent_heartbeat(
        staged.agent_id, [{"flow_run_id": staged.id, "alive": True}]
    )

    assert (answer.failed, answer.cancel) == ([], [])
    assert tenant.run(staged.id).state == "Running"


@pytest.mark.parametrize("final", ["Success", "Failed"])
def test_dead_deployment_of_a_final_run_changes_nothing(tenant: TenantContext, final: str) -> None:
    staged = tenant.stage(final)
    assert staged.agent_id is not None
    history = len(tenant.run(staged.id).states)

    answer = tenant.client(tenant.key("runner")).agent_heartbeat(staged.agent_id, dead(staged.id))

    assert answer.failed == []
    run = tenant.run(staged.id)
    assert (run.state, len(run.states)) == (final, history)


def test_agent_cannot_fail_another_agents_run(tenant: TenantContext, runner: Client) -> None:
    staged = tenant.stage("Running", runner=runner)
    bystander = runner.register_agent("bystander", "local", [])

    answer = runner.agent_heartbeat(bystander.id, dead(staged.id))

    assert answer.failed == []
    assert tenant.run(staged.id).state == "Running"


def test_heartbeat_lists_only_this_agents_cancelling_runs(tenant: TenantContext, user: Client) -> None:
    mine, theirs = tenant.stage("Running"), tenant.stage("Running")
    user.cancel_flow_run(mine.id)
    user.cancel_flow_run(theirs.id)
    runner = tenant.client(tenant.key("runner"))
    assert mine.agent_id is not None and theirs.agent_id is not None

    assert runner.agent_heartbeat(mine.agent_id, []).cancel == [mine.id]
    assert runner.agent_heartbeat(theirs.agent_id, []).cancel == [theirs.id]

"""`GET /api/flow_runs/{id}/explain`: which agents could take a run, and why not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from baton.client import Client
from baton.schemas.responses import FlowRunRead
from server.harness import TenantContext

# --- explain -----------------------------------------------------------------------------------------------


def test_explain_lists_every_agent_and_why(tenant: TenantContext, user: Client, runner: Client) -> None:
    # Given a run that needs gpu and three agents
    tenant.register_flow("hello")
    run = user.create_flow_run(flow_name="hello", labels=["gpu"])
    able = runner.register_agent("able", "local", ["gpu", "linux"])
    lacking = runner.register_agent("lacking", "local", ["linux"])
    bare = runner.register_agent("bare", "docker", [])

    # When
    explanation = user.explain_flow_run(run.id)

    # Then
    assert (explanation.flow_run_id, explanation.state, explanation.labels) == (run.id, "Scheduled", ["gpu"])
    assert explanation.summary == "1 live agent(s) can take it"
    by_name = {a.name: a for a in explanation.agents}
    assert set(by_name) == {"able", "lacking", "bare"}
    assert (by_name["able"].agent_id, by_name["able"].labels) == (able.id, ["gpu", "linux"])
    assert (by_name["able"].can_take, by_name["able"].missing_labels) == (True, [])
    assert by_name["able"].reason == "can take it"
    assert (by_name["lacking"].agent_id, by_name["lacking"].can_take) == (lacking.id, False)
    assert by_name["lacking"].missing_labels == ["gpu"]
    assert by_name["lacking"].reason == "lacks label(s) gpu"
    assert (by_name["bare"].agent_id, by_name["bare"].type) == (bare.id, "docker")
    assert (by_name["bare"].can_take, by_name["bare"].missing_labels) == (False, ["gpu"])
    for agent in explanation.agents:
        assert agent.last_seen is not None
        assert agent.seconds_since_seen is not None
        assert agent.seconds_since_seen >= 0


def test_explain_summary_names_the_missing_label(tenant: TenantContext, user: Client, runner: Client) -> None:
    tenant.register_flow("hello")
    run = user.create_flow_run(flow_name="hello", labels=["gpu", "linux"])
    runner.register_agent("linux-only", "local", ["linux"])

    explanation = user.explain_flow_run(run.id)

    assert "no registered agent can take this run" in explanation.summary
    assert "gpu" in explanation.summary
    assert explanation.agents[0].missing_labels == ["gpu"]


def test_explain_says_labelled_agents_never_take_unlabelled_runs(
    user: Client, runner: Client, run: FlowRunRead
) -> None:
    runner.register_agent("labelled", "local", ["dev"])

    explanation = user.explain_flow_run(run.id)

    (agent,) = explanation.agents
    assert (agent.can_take, agent.missing_labels) == (False, [])
    assert "never takes" in agent.reason
    assert "dev" in agent.reason
    assert "no labels" in explanation.summary


def test_explain_without_agents_says_to_start_one(user: Client, run: FlowRunRead) -> None:
    explanation = user.explain_flow_run(run.id)

    assert explanation.agents == []
    assert explanation.summary.startswith("no agent has ever registered in this tenant")


def test_explain_of_a_run_not_waiting(user: Client, run: FlowRunRead) -> None:
    user.cancel_flow_run(run.id)

    assert user.explain_flow_run(run.id).summary == "the run is Cancelled: it is not waiting for an agent"


def test_explain_marks_runs_overdue_as_late(tenant: TenantContext, user: Client, runner: Client) -> None:
    tenant.register_flow("hello")
    runner.register_agent("busy", "local", ["x"])
    past = datetime.now(UTC) - timedelta(minutes=5)
    overdue = user.create_flow_run(flow_name="hello", labels=["x"], scheduled_start_time=past)
    future = user.create_flow_run(flow_name="hello", labels=["x"], scheduled_start_time=past + timedelta(hours=1))

    assert user.explain_flow_run(overdue.id).late is True
    assert user.explain_flow_run(overdue.id).summary.startswith("late by 5m")  # issue 9: says how late, and why
    assert user.explain_flow_run(future.id).late is False

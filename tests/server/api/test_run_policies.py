"""`runs retry`, late runs and max_lateness over the API (issue 9, run policies), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.exceptions import ConflictError, NotFoundError, PermissionDeniedError
from baton.server.database.orm import Agent, FlowRun, utcnow
from baton.server.models.claims import claim_runs
from server.harness import TenantContext, unique

# --- runs retry ----------------------------------------------------------------------------------------------


def failed_run(tenant: TenantContext, user: Client, runner: Client) -> str:
    """A run of flow ``hello`` with parameters and a label of its own, claimed and then Failed by its agent."""
    tenant.register_flow("hello")
    label = unique("only")
    run = user.create_flow_run(flow_name="hello", labels=[label], parameters={"name": "Ada"})
    agent = runner.register_agent(unique("agent"), "local", [label])
    TenantContext.claim_one(runner, agent.id, run.id)
    runner.set_flow_run_state(run.id, "Failed", "image not found")
    return run.id


def test_retry_makes_a_new_run_with_the_same_flow_version_parameters_and_labels(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    old_id = failed_run(tenant, user, runner)
    old = tenant.run(old_id)
    tenant.register_flow("hello", description="a newer version")  # retries keep the old version

    new = user.retry_flow_run(old_id)

    assert new.id != old_id
    assert new.retried_from == old_id
    assert (new.flow_id, new.flow_version, new.labels) == (old.flow_id, old.flow_version, old.labels)
    assert tenant.run(new.id).parameters == {"name": "Ada"}
    assert (new.state, new.attempt, new.agent_id) == ("Scheduled", 1, None)
    assert new.scheduled_start_time >= old.created
    assert tenant.run(old_id).state == "Failed"  # the old run is left as it was
    assert tenant.run(old_id).retried_from is None


def test_a_cancelled_run_can_be_retried(tenant: TenantContext, admin: Client) -> None:
    staged = tenant.stage("Cancelled")
    assert admin.retry_flow_run(staged.id).retried_from == staged.id


@pytest.mark.parametrize("state", ["Scheduled", "Pending", "Running", "Success", "Cancelling"])
def test_only_failed_or_cancelled_runs_can_be_retried(tenant: TenantContext, user: Client, state: str) -> None:
    staged = tenant.stage(state)
    with pytest.raises(ConflictError) as refused:
        user.retry_flow_run(staged.id)
    assert f"is {state}: only a Failed or Cancelled run can be retried" in str(refused.value)


def test_a_run_whose_stored_parameters_cannot_be_served_is_not_copied(
    tenant: TenantContext, user: Client, runner: Client, api_database: sessionmaker[Session]
) -> None:
    old_id = failed_run(tenant, user, runner)
    with api_database() as session, session.begin():
        session.execute(update(FlowRun).where(FlowRun.id == old_id).values(parameters=["not", "an", "object"]))

    with pytest.raises(ConflictError, match="cannot be retried: its stored parameters cannot be served"):
        user.retry_flow_run(old_id)


def test_retry_keeps_the_runs_own_executor(tenant: TenantContext, user: Client, runner: Client) -> None:
    tenant.register_flow("hello")
    label = unique("only")
    run = user.create_flow_run(flow_name="hello", labels=[label], executor="thread:3")
    agent = runner.register_agent(unique("agent"), "local", [label])
    TenantContext.claim_one(runner, agent.id, run.id)
    runner.set_flow_run_state(run.id, "Failed", "boom")

    new = user.retry_flow_run(run.id)

    assert tenant.run(new.id).run_config.executor == "thread:3"
    plain = user.retry_flow_run(failed_run(tenant, user, runner))
    assert tenant.run(plain.id).run_config.executor is None


def test_retry_with_an_idempotency_key_makes_one_run(tenant: TenantContext, user: Client, runner: Client) -> None:
    old_id = failed_run(tenant, user, runner)
    key = unique("key")
    http = tenant.raw(tenant.key("user"))

    first = http.post(f"/api/flow_runs/{old_id}/retry", headers={"Idempotency-Key": key})
    again = http.post(f"/api/flow_runs/{old_id}/retry", headers={"Idempotency-Key": key})

    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    # the same key for another request is refused
    other_id = failed_run(tenant, user, runner)
    clash = http.post(f"/api/flow_runs/{other_id}/retry", headers={"Idempotency-Key": key})
    assert clash.status_code == 409, clash.text


def test_read_runner_and_token_may_not_retry(tenant: TenantContext, user: Client, runner: Client) -> None:
    old_id = failed_run(tenant, user, runner)
    for role in ("read", "runner"):
        with pytest.raises(PermissionDeniedError):
            tenant.client(tenant.key(role)).retry_flow_run(old_id)
    staged = tenant.stage("Running")
    with pytest.raises(PermissionDeniedError):
        tenant.client(staged.token or "").retry_flow_run(staged.id)


def test_another_tenants_run_is_not_found(
    tenant: TenantContext, other_tenant: TenantContext, user: Client, runner: Client
) -> None:
    old_id = failed_run(tenant, user, runner)
    with pytest.raises(NotFoundError):
        other_tenant.admin.retry_flow_run(old_id)
    with pytest.raises(NotFoundError):
        user.retry_flow_run("not-a-run-id")


# --- late runs -----------------------------------------------------------------------------------------------


def test_late_filter_lists_only_claimable_runs_past_their_start(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    tenant.register_flow("hello")
    label = unique("nobody")
    past = datetime.now(UTC) - timedelta(minutes=10)
    late = user.create_flow_run(flow_name="hello", labels=[label], scheduled_start_time=past)
    future = user.create_flow_run(flow_name="hello", labels=[label], scheduled_start_time=past + timedelta(hours=1))
    cancelled = user.create_flow_run(flow_name="hello", labels=[label], scheduled_start_time=past)
    user.cancel_flow_run(cancelled.id)
    running = tenant.stage("Running")

    listed = {run.id for run in user.list_flow_runs(late=True, limit=1000)}

    assert late.id in listed
    assert not listed & {future.id, cancelled.id, running.id}
    response = tenant.raw(tenant.key("read")).get("/api/flow_runs", params={"late": "maybe"})
    assert response.status_code == 422


def test_explain_says_when_a_future_run_is_due(tenant: TenantContext, user: Client) -> None:
    tenant.register_flow("hello")
    due = datetime.now(UTC) + timedelta(hours=2, minutes=30)
    run = user.create_flow_run(flow_name="hello", labels=[unique("x")], scheduled_start_time=due)

    summary = user.explain_flow_run(run.id).summary

    expected = tenant.run(run.id).scheduled_start_time.isoformat(timespec="seconds")
    assert summary.startswith(f"not due until {expected} (in 2h 2")  # 2h 29m or 2h 30m, as the clock turns
    assert "(in 2h" in summary


def test_explain_says_how_late_a_run_is_and_that_no_live_agent_has_its_labels(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    tenant.register_flow("hello")
    label = unique("gpu")
    past = datetime.now(UTC) - timedelta(hours=3, minutes=2, seconds=5)
    run = user.create_flow_run(flow_name="hello", labels=[label], scheduled_start_time=past)
    runner.register_agent(unique("cpu"), "local", [unique("cpu")])

    explanation = user.explain_flow_run(run.id)

    assert explanation.late is True
    assert explanation.summary == f"late by 3h 02m: no live agent with labels [{label}]"


def test_explain_of_a_late_run_in_a_tenant_without_agents_keeps_the_hint(
    other_tenant: TenantContext,
) -> None:
    other_tenant.register_flow("hello")
    past = datetime.now(UTC) - timedelta(minutes=2)
    run = other_tenant.admin.create_flow_run(flow_name="hello", scheduled_start_time=past)

    summary = other_tenant.admin.explain_flow_run(run.id).summary

    # (2m, or 2m 01s on a slow machine)
    assert re.match(r"late by 2m( 0\ds)?: no live agent with labels \[\]; no agent has ever registered", summary)


def test_explain_of_a_late_run_names_live_agents_that_could_take_it(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    tenant.register_flow("hello")
    label = unique("x")
    past = datetime.now(UTC) - timedelta(minutes=7, seconds=1)
    run = user.create_flow_run(flow_name="hello", labels=[label], scheduled_start_time=past)
    name = unique("busy")
    runner.register_agent(name, "local", [label])

    summary = user.explain_flow_run(run.id).summary

    expected = rf"late by 7m 0\ds: live agent\(s\) {name} can take it but have not claimed it yet"
    assert re.fullmatch(expected, summary), summary


# --- max_lateness ----------------------------------------------------------------------------------------------


def test_a_run_later_than_its_flows_max_lateness_is_skipped_not_claimed(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    name = unique("punctual")
    tenant.register_flow(name, max_lateness_seconds=60)
    label = unique("only")
    past = datetime.now(UTC) - timedelta(hours=2)
    late = user.create_flow_run(flow_name=name, labels=[label], scheduled_start_time=past)
    on_time = user.create_flow_run(flow_name=name, labels=[label])
    agent = runner.register_agent(unique("agent"), "local", [label])

    claimed = runner.claim(agent.id, limit=5).runs

    # Whether the claim or the lateness sweep got to it first, the agent never gets it
    assert [c.flow_run.id for c in claimed] == [on_time.id]
    skipped = tenant.run(late.id)
    assert skipped.state == "Cancelled"
    assert skipped.state_message == "skipped: 2h late, past the flow's max_lateness of 1m"


def test_the_claim_itself_skips_a_run_past_max_lateness(
    tenant: TenantContext, user: Client, runner: Client, api_database: sessionmaker[Session]
) -> None:
    name = unique("punctual")
    tenant.register_flow(name, max_lateness_seconds=3600)
    label = unique("only")
    run = user.create_flow_run(flow_name=name, labels=[label])
    agent_id = runner.register_agent(unique("agent"), "local", [label]).id

    # In one transaction (so that the server's sweep cannot see it first): the run becomes 3h late, then a claim
    with api_database() as session, session.begin():
        late = utcnow() - timedelta(hours=3, seconds=1)
        session.execute(update(FlowRun).where(FlowRun.id == run.id).values(scheduled_start_time=late))
        agent = session.get(Agent, agent_id)
        assert agent is not None
        result = claim_runs(session, agent, limit=1, prefetch_seconds=0, lease_seconds=30)
        assert result.runs == []

    skipped = tenant.run(run.id)
    assert skipped.state == "Cancelled"
    assert skipped.state_message == "skipped: 3h late, past the flow's max_lateness of 1h"
    assert [state.name for state in skipped.states] == ["Scheduled", "Cancelled"]

"""Run tokens (scoped to one run, revoked at its final state) and tenant isolation of flow runs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from baton.client import Client
from baton.exceptions import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
)
from baton.schemas.responses import ClaimedRun, FlowRead, FlowRunRead
from server.harness import TenantContext

# --- run tokens --------------------------------------------------------------------------------------------


def test_run_token_works_only_for_its_own_run(
    tenant: TenantContext, claimed: ClaimedRun, user: Client, flow: FlowRead
) -> None:
    other_run = user.create_flow_run(flow_name="hello")
    token = tenant.client(claimed.run_token)

    assert token.get_flow_run(claimed.flow_run.id).id == claimed.flow_run.id
    calls: list[Callable[[], object]] = [
        lambda: token.get_flow_run(other_run.id),
        lambda: token.set_flow_run_state(other_run.id, "Cancelled"),
        lambda: token.flow_run_heartbeat(other_run.id),
        lambda: token.get_logs(other_run.id),
        lambda: token.write_logs(other_run.id, [{"timestamp": "2030-01-01T00:00:00Z", "message": "x"}]),
        lambda: token.create_task_run(other_run.id, "greet"),
        lambda: token.list_task_runs(other_run.id),
    ]
    for call in calls:
        with pytest.raises(NotFoundError, match=f"{other_run.id} not found"):
            call()
    assert tenant.run(other_run.id).state == "Scheduled"


def test_run_token_cannot_list_create_or_cancel_runs(
    tenant: TenantContext, claimed: ClaimedRun, flow: FlowRead
) -> None:
    token = tenant.client(claimed.run_token)

    with pytest.raises(PermissionDeniedError, match="a run token may only act on its own flow run"):
        token.list_flow_runs()
    with pytest.raises(PermissionDeniedError, match="a run token may only act on its own flow run"):
        token.create_flow_run(flow_name="hello")
    with pytest.raises(PermissionDeniedError):
        token.cancel_flow_run(claimed.flow_run.id)
    with pytest.raises(PermissionDeniedError):
        token.list_agents()
    with pytest.raises(PermissionDeniedError):  # it lists every agent of the tenant (issue 8, item 12)
        token.explain_flow_run(claimed.flow_run.id)


def test_run_token_stops_working_once_the_run_is_final(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")
    token = tenant.client(staged.token or "")
    token.set_flow_run_state(staged.id, "Failed", "boom")

    for call in (
        lambda: token.get_flow_run(staged.id),
        token.whoami,
        lambda: token.write_logs(staged.id, [{"timestamp": "2030-01-01T00:00:00Z", "message": "late"}]),
    ):
        with pytest.raises(AuthenticationError, match="invalid, revoked or expired") as excinfo:
            call()
        assert excinfo.value.status_code == 401


@pytest.mark.parametrize("end", ["cancel", "heartbeat"])
def test_run_token_is_revoked_however_the_run_ends(tenant: TenantContext, user: Client, end: str) -> None:
    staged = tenant.stage("Submitted")
    runner = tenant.client(tenant.key("runner"))
    assert staged.agent_id is not None and staged.token is not None
    tenant.client(staged.token).whoami()

    if end == "cancel":
        user.cancel_flow_run(staged.id)
        runner.set_flow_run_state(staged.id, "Cancelled")
    else:
        runner.agent_heartbeat(staged.agent_id, [{"flow_run_id": staged.id, "alive": False, "exit_code": 1}])

    with pytest.raises(AuthenticationError):
        tenant.client(staged.token).whoami()


def test_flow_run_heartbeat_answers_with_the_runs_state(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")

    assert tenant.client(staged.token or "").flow_run_heartbeat(staged.id).state == "Running"


# --- tenant isolation --------------------------------------------------------------------------------------


def test_other_tenant_gets_404_for_every_route_of_a_run(
    tenant: TenantContext, other_tenant: TenantContext, claimed: ClaimedRun
) -> None:
    run_id = claimed.flow_run.id
    task_run = tenant.client(claimed.run_token).create_task_run(run_id, "greet")
    other = other_tenant.admin

    calls: list[Callable[[], object]] = [
        lambda: other.get_flow_run(run_id),
        lambda: other.set_flow_run_state(run_id, "Failed"),
        lambda: other.cancel_flow_run(run_id),
        lambda: other.explain_flow_run(run_id),
        lambda: other.flow_run_heartbeat(run_id),
        lambda: other.get_logs(run_id),
        lambda: other.write_logs(run_id, [{"timestamp": "2030-01-01T00:00:00Z", "message": "x"}]),
        lambda: other.create_task_run(run_id, "greet"),
        lambda: other.list_task_runs(run_id),
        lambda: other.set_task_run_state(task_run.id, "Failed"),
        lambda: other.get_flow(claimed.flow.id),
        lambda: other.claim(claimed.flow_run.agent_id or ""),
        lambda: other.agent_heartbeat(claimed.flow_run.agent_id or "", []),
    ]
    for call in calls:
        with pytest.raises(NotFoundError):
            call()
    assert other.list_flow_runs() == []
    assert other.list_agents() == []
    assert tenant.run(run_id).state == "Pending"


def test_other_tenants_agent_never_claims_this_tenants_runs(other_tenant: TenantContext, run: FlowRunRead) -> None:
    stranger = other_tenant.client(other_tenant.key("runner"))
    agent = stranger.register_agent("agent-1", "local", [])

    assert stranger.claim(agent.id, limit=10).runs == []

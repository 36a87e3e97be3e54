"""Flow-level retries through the server's own services (a lease that ran out, a lost run), and the lateness sweep.

The retry tests run a server of their own (1 s leases and heartbeat timeout, no outage grace, services every
0.2 s, no lease returns before failing) on SQLite; the sweep, whose SQL differs by dialect, is called directly with
an injected clock on the package's SQLite and PostgreSQL servers.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.exceptions import AuthenticationError
from baton.server.database.connection import create_database_engine, create_session_factory
from baton.server.services.lateness import LatenessService
from server.harness import TenantContext, unique
from server.services.fakes import wait_for_state
from support import ServerProcess


@pytest.fixture(scope="module")
def policy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("policy-server"),
        BATON__SERVER__CLAIM_LEASE_SECONDS="1",
        BATON__SERVER__MAX_LEASE_RETURNS="0",
        BATON__SERVER__RUN_HEARTBEAT_TIMEOUT_SECONDS="1",
        BATON__SERVER__OUTAGE_GRACE_MARGIN_SECONDS="0",
        BATON__SERVER__SERVICES_INTERVAL_SECONDS="0.2",
        BATON__SERVER__LATE_AFTER_SECONDS="600",
    ).start()
    yield server
    server.stop()


@pytest.fixture
def policy_tenant(policy_server: ServerProcess) -> Iterator[TenantContext]:
    engine = create_database_engine(policy_server.database_url, 2)
    context = TenantContext.create(policy_server, create_session_factory(engine))
    yield context
    context.close()
    engine.dispose()


def _claimed(tenant: TenantContext, flow: str) -> tuple[str, str, str, Client]:
    """A run of ``flow`` claimed by an agent that alone has its label: (run id, agent id, run token, runner)."""
    runner = tenant.client(tenant.key("runner"))
    label = unique("only")
    run = tenant.client(tenant.key("user")).create_flow_run(flow_name=flow, labels=[label])
    agent = runner.register_agent(unique("agent"), "local", [label])
    return run.id, agent.id, TenantContext.claim_one(runner, agent.id, run.id).run_token, runner


def test_a_claim_whose_lease_ran_out_is_retried_and_then_fails(policy_tenant: TenantContext) -> None:
    flow = unique("leased")
    policy_tenant.register_flow(flow, retries=1)
    run_id, agent_id, token, runner = _claimed(policy_tenant, flow)

    # The agent never deploys it: the lease service fails attempt 1, which is retried
    retrying = wait_for_state(policy_tenant, run_id, "Retrying")
    assert retrying.attempt == 2
    assert retrying.states[-2].name == "Failed"
    assert "did not deploy the run within its lease" in (retrying.states[-2].message or "")
    assert (retrying.state_message or "").startswith("attempt 1 of 2 failed: the agent did not deploy")
    with pytest.raises(AuthenticationError):
        policy_tenant.client(token).get_flow_run(run_id)

    # Attempt 2 (a fresh lease-return budget) meets the same fate, and that is the last one
    claimed = runner.claim(agent_id, wait_seconds=5).runs
    assert [c.flow_run.id for c in claimed] == [run_id]
    failed = wait_for_state(policy_tenant, run_id, "Failed")
    assert failed.attempt == 2
    assert [s.name for s in failed.states].count("Failed") == 2


def test_a_lost_running_run_is_retried(policy_tenant: TenantContext) -> None:
    flow = unique("lost")
    policy_tenant.register_flow(flow, retries=2, retry_delay_seconds=3600)
    run_id, _agent_id, token, runner = _claimed(policy_tenant, flow)
    runner.set_flow_run_state(run_id, "Submitted", "PID: 1", {"pid": 1})
    policy_tenant.client(token).set_flow_run_state(run_id, "Running")

    # Neither the process nor the agent says anything more: the recovery service fails it, and it is retried
    retrying = wait_for_state(policy_tenant, run_id, "Retrying")
    failed = retrying.states[-2]
    assert failed.name == "Failed"
    assert (failed.message or "").startswith("lost: no sign of life")
    assert retrying.attempt == 2
    assert retrying.scheduled_start_time == failed.timestamp + timedelta(hours=1)
    assert retrying.agent_id is None


def test_late_after_seconds_sets_when_a_run_counts_as_late(policy_tenant: TenantContext) -> None:
    # The server calls a run late 600 s after it was due
    policy_tenant.register_flow("hello")
    user = policy_tenant.client(policy_tenant.key("user"))
    now = datetime.now(UTC)
    label = [unique("nobody")]
    recent = user.create_flow_run(flow_name="hello", labels=label, scheduled_start_time=now - timedelta(minutes=5))
    old = user.create_flow_run(flow_name="hello", labels=label, scheduled_start_time=now - timedelta(minutes=15))

    assert {run.id for run in user.list_flow_runs(late=True)} >= {old.id}
    assert recent.id not in {run.id for run in user.list_flow_runs(late=True)}
    assert user.explain_flow_run(recent.id).late is False
    assert user.explain_flow_run(old.id).late is True


# --- the lateness sweep (SQLite and PostgreSQL) -----------------------------------------------------------


def test_the_sweep_skips_runs_past_max_lateness_and_leaves_the_others(
    tenant: TenantContext, user: Client, api_database: sessionmaker[Session]
) -> None:
    strict, lenient, free = unique("strict"), unique("lenient"), unique("free")
    tenant.register_flow(strict, max_lateness_seconds=3600)
    tenant.register_flow(lenient, max_lateness_seconds=4 * 3600)
    tenant.register_flow(free)
    label = [unique("nobody")]
    runs = {name: user.create_flow_run(flow_name=name, labels=label) for name in (strict, lenient, free)}
    due = runs[strict].scheduled_start_time

    # An hour less a second later: nothing is past its max_lateness yet
    # (counts are of every tenant: other tests' runs may be swept too, so each run's state is what is checked)
    LatenessService(api_database, now=lambda: due + timedelta(minutes=59, seconds=59)).sweep()
    assert tenant.run(runs[strict].id).state == "Scheduled"

    # Three hours and two minutes later: only the strict flow's run is skipped
    LatenessService(api_database, now=lambda: due + timedelta(hours=3, minutes=2)).sweep()
    skipped = tenant.run(runs[strict].id)
    assert skipped.state == "Cancelled"
    assert skipped.state_message == "skipped: 3h 02m late, past the flow's max_lateness of 1h"
    assert tenant.run(runs[lenient].id).state == "Scheduled"
    assert tenant.run(runs[free].id).state == "Scheduled"


def test_a_retrying_run_is_late_from_its_retry_due_time(
    tenant: TenantContext, user: Client, runner: Client, api_database: sessionmaker[Session]
) -> None:
    flow = unique("retry-late")
    tenant.register_flow(flow, retries=1, retry_delay_seconds=3600, max_lateness_seconds=600)
    label = unique("only")
    run = user.create_flow_run(flow_name=flow, labels=[label])
    agent = runner.register_agent(unique("agent"), "local", [label])
    TenantContext.claim_one(runner, agent.id, run.id)
    retrying = runner.set_flow_run_state(run.id, "Failed", "boom")
    assert retrying.state == "Retrying"
    due = retrying.scheduled_start_time
    assert due - run.created > timedelta(minutes=59)

    # Long after the run was created, but within 10 minutes of its retry's due time: kept
    LatenessService(api_database, now=lambda: due + timedelta(minutes=10)).sweep()
    assert tenant.run(run.id).state == "Retrying"

    LatenessService(api_database, now=lambda: due + timedelta(minutes=11)).sweep()
    skipped = tenant.run(run.id)
    assert skipped.state == "Cancelled"
    assert skipped.state_message == "skipped: 11m late, past the flow's max_lateness of 10m"

"""Lease expiry: a claimed run its agent never deploys goes back to Scheduled, and fails after too many returns.

These tests run a server of their own with a 1 s lease, checked every 0.2 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.exceptions import AuthenticationError
from baton.schemas.responses import AgentRead, FlowRunRead
from baton.server.database.connection import create_database_engine, create_session_factory
from baton.server.services.leases import LeaseExpiryService
from server.harness import TenantContext
from server.services.fakes import CountingFactory, FakeClock, wait_for_state
from support import ServerProcess

LEASE_SECONDS = 1.0


@pytest.fixture(scope="module")
def lease_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("lease-server"),
        BATON__SERVER__CLAIM_LEASE_SECONDS=str(LEASE_SECONDS),
        BATON__SERVER__SERVICES_INTERVAL_SECONDS="0.2",
    ).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def lease_database(lease_server: ServerProcess) -> Iterator[sessionmaker[Session]]:
    engine = create_database_engine(f"sqlite:///{lease_server.home}/baton.db", 2)
    yield create_session_factory(engine)
    engine.dispose()


@pytest.fixture
def tenant(lease_server: ServerProcess, lease_database: sessionmaker[Session]) -> Iterator[TenantContext]:
    context = TenantContext.create(lease_server, lease_database)
    yield context
    context.close()


def test_unsubmitted_claim_returns_to_scheduled_and_fails_after_three_returns(
    tenant: TenantContext, runner: Client, agent: AgentRead, run: FlowRunRead
) -> None:
    # Given a run that agents claim and never deploy, three times over
    token = TenantContext.claim_one(runner, agent.id, run.id).run_token
    for returns in (1, 2, 3):
        # Then each lease expiry puts it back in the queue, counting the returns
        returned = wait_for_state(tenant, run.id, "Scheduled")
        assert returned.state_message == f"lease expired: the agent did not deploy the run (return {returns}/3)"
        assert returned.agent_id is None
        with pytest.raises(AuthenticationError):
            tenant.client(token).get_flow_run(run.id)
        # (a waiting claim is woken by the return)
        claimed = runner.claim(agent.id, wait_seconds=10).runs
        assert [c.flow_run.id for c in claimed] == [run.id]
        token = claimed[0].run_token

    # When the fourth lease expires, then the run fails for good
    failed = wait_for_state(tenant, run.id, "Failed")
    assert failed.state_message == "the agent did not deploy the run within its lease 4 times; giving up"
    assert [s.name for s in failed.states] == ["Scheduled", *(["Pending", "Scheduled"] * 3), "Pending", "Failed"]
    assert runner.claim(agent.id, limit=10).runs == []


def test_heartbeat_extends_the_leases_of_its_agents_pending_runs(
    tenant: TenantContext, runner: Client, agent: AgentRead, run: FlowRunRead
) -> None:
    # Given a claimed run whose agent keeps heartbeating for more than twice the lease
    TenantContext.claim_one(runner, agent.id, run.id)
    until = time.monotonic() + 2.5 * LEASE_SECONDS
    while time.monotonic() < until:
        runner.agent_heartbeat(agent.id, [])
        time.sleep(0.2)

        # Then the run stays claimed
        assert tenant.run(run.id).state == "Pending"

    # And once the heartbeats stop, the lease runs out
    returned = wait_for_state(tenant, run.id, "Scheduled")
    assert returned.state_message == "lease expired: the agent did not deploy the run (return 1/3)"


def test_heartbeat_extends_only_the_claims_it_names(
    tenant: TenantContext, runner: Client, agent: AgentRead, user: Client, run: FlowRunRead
) -> None:
    # Given two runs claimed by one agent, whose heartbeats name only the first (it never heard of the second:
    # the claim's answer was lost, or an earlier process of the agent made it)
    other = user.create_flow_run(flow_name="hello")
    claimed = {c.flow_run.id for c in runner.claim(agent.id, limit=2).runs}
    assert claimed == {run.id, other.id}
    until = time.monotonic() + 2.5 * LEASE_SECONDS
    while time.monotonic() < until:
        runner.agent_heartbeat(agent.id, [], claims=[run.id])
        time.sleep(0.2)

    # Then the named claim is still held and the other went back to the queue
    assert tenant.run(run.id).state == "Pending"
    assert wait_for_state(tenant, other.id, "Scheduled").agent_id is None


def test_submitted_run_has_no_lease(tenant: TenantContext, runner: Client, agent: AgentRead, run: FlowRunRead) -> None:
    TenantContext.claim_one(runner, agent.id, run.id)
    runner.set_flow_run_state(run.id, "Submitted", "PID: 1")

    time.sleep(2 * LEASE_SECONDS)  # a Pending run would have been returned by now

    assert tenant.run(run.id).state == "Submitted"


def test_released_run_does_not_count_as_a_lease_return(
    tenant: TenantContext, runner: Client, agent: AgentRead, run: FlowRunRead
) -> None:
    TenantContext.claim_one(runner, agent.id, run.id)
    runner.set_flow_run_state(run.id, "Scheduled", "released")
    TenantContext.claim_one(runner, agent.id, run.id)

    returned = wait_for_state(tenant, run.id, "Scheduled")

    assert returned.state_message == "lease expired: the agent did not deploy the run (return 1/3)"


def test_lease_expiry_waits_one_lease_after_the_server_starts() -> None:
    # Given a lease service just started, with 30 s leases (grace: one lease + an agent's longest backoff)
    clock, factory = FakeClock(), CountingFactory()
    service = LeaseExpiryService(sessionmaker(), None, 3, grace_seconds=60.0, clock=clock)  # type: ignore[arg-type]
    service._factory = factory  # type: ignore[assignment]

    # When it ticks within the first lease, then it leaves every claim alone: agents may still report them
    for elapsed in (0.0, 59.9):
        clock.now = 1000.0 + elapsed
        service.run_once()
    assert factory.opened == 0

    # And afterwards it expires leases as usual
    clock.now = 1060.0
    with pytest.raises(RuntimeError, match="opened the database"):
        service.run_once()
    assert factory.opened == 1

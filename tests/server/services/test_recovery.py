"""The recovery service: deployed runs whose agent and flow-run process both went silent are ended or requeued.

Most tests run the service's passes themselves, in this process, against a real server's database (SQLite and
PostgreSQL) with a wall clock moved ahead instead of waiting: the server's own service waits an hour there, so it
never acts on their runs (their passes judge with a 600 s timeout). The requeue tests keep the server's own service
at work, with a 2 s timeout checked every 0.2 s, in real time: the wiring of the service into the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import cast

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from baton.exceptions import AuthenticationError
from baton.server.database.connection import create_database_engine, create_session_factory, transaction
from baton.server.database.orm import FlowRun, utcnow
from baton.server.models.lost_runs import RecoveryPolicy
from baton.server.notifier import RunNotifier
from baton.server.services.recovery import RecoveryService
from server.harness import Staged, TenantContext
from server.services.fakes import CountingFactory, FakeClock, wait_for_state
from support import ServerProcess

TIMEOUT_SECONDS = 2.0  # the requeue server's own service, in real time
# The passes run here judge silence with this timeout against a moved wall clock: long, so that a slow machine's
# real seconds between staging a run and a pass never count.
POLICY_TIMEOUT_SECONDS = 600.0


def _start(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, timeout: float, **env: str
) -> ServerProcess:
    if request.param == "postgresql":
        env["BATON__SERVER__DATABASE_URL"] = request.getfixturevalue("postgres_cluster").create_database()
    return ServerProcess(
        tmp_path_factory.mktemp(f"recovery-{request.param}"),
        BATON__SERVER__RUN_HEARTBEAT_TIMEOUT_SECONDS=str(timeout),
        BATON__SERVER__SERVICES_INTERVAL_SECONDS="0.2",
        **env,
    ).start()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def recovery_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory, request, 3600.0)  # its own service leaves the tests' runs alone
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def requeue_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory, request, TIMEOUT_SECONDS, BATON__SERVER__RESCHEDULE_LOST_RUNS="true")
    yield server
    server.stop()


@dataclass
class Notified:
    """Stands in for the notifier: the tenants whose waiting agents the service woke."""

    tenants: list[str] = field(default_factory=list)

    def notify_threadsafe(self, tenant_id: str) -> None:
        self.tenants.append(tenant_id)


@dataclass
class Recovery:
    """A tenant on the recovery server, and passes of a recovery service at a chosen wall clock."""

    tenant: TenantContext
    sessions: sessionmaker[Session]

    def pass_at(self, seconds_from_now: float, reschedule_running: bool = False) -> Notified:
        """One pass of the service, as if ``seconds_from_now`` had gone by (past its start-up grace)."""
        notified = Notified()
        policy = RecoveryPolicy(POLICY_TIMEOUT_SECONDS, reschedule_running=reschedule_running, max_returns=3)
        clock = FakeClock()
        later = utcnow() + timedelta(seconds=seconds_from_now)
        service = RecoveryService(self.sessions, cast(RunNotifier, notified), policy, 0.0, clock, lambda: later)
        clock.now += POLICY_TIMEOUT_SECONDS  # past the grace after its start
        service.run_once()
        return notified

    def backdate(self, run_id: str, seconds: float) -> None:
        """Make the run's last sign of life ``seconds`` older: a silence that has lasted that long already."""
        with transaction(self.sessions) as session:
            run = session.get_one(FlowRun, run_id)
            assert run.heartbeat_at is not None
            run.heartbeat_at = run.heartbeat_at - timedelta(seconds=seconds)


def _tenant(server: ServerProcess) -> Iterator[tuple[TenantContext, sessionmaker[Session]]]:
    engine = create_database_engine(server.database_url, 2)
    sessions = create_session_factory(engine)
    context = TenantContext.create(server, sessions)
    yield context, sessions
    context.close()
    engine.dispose()


@pytest.fixture
def recovery(recovery_server: ServerProcess) -> Iterator[Recovery]:
    for tenant, sessions in _tenant(recovery_server):
        yield Recovery(tenant, sessions)


@pytest.fixture
def requeue_tenant(requeue_server: ServerProcess) -> Iterator[TenantContext]:
    for tenant, _sessions in _tenant(requeue_server):
        yield tenant


LATER = 3 * POLICY_TIMEOUT_SECONDS  # a pass this far ahead finds a run silent since it was staged lost
SOON = POLICY_TIMEOUT_SECONDS / 2  # and one this far ahead does not


# --- lost runs ---------------------------------------------------------------------------------------------


def test_lost_running_run_is_failed_and_its_token_revoked(recovery: Recovery) -> None:
    # Given a Running run whose agent and flow-run process then both fall silent
    tenant = recovery.tenant
    staged = tenant.stage("Running")
    # Not before the timeout
    recovery.pass_at(SOON)
    assert tenant.run(staged.id).state == "Running"

    # Then the recovery service fails it, saying why, and wakes the tenant's agents (a slot may be free)
    assert tenant.id in recovery.pass_at(LATER).tenants  # (other tests' runs may be recovered too)
    failed = tenant.run(staged.id)
    assert failed.state == "Failed"
    assert failed.state_message is not None
    assert failed.state_message.startswith("lost: no sign of life from its flow-run process or its agent for ")
    assert "(agent agent-" in failed.state_message
    assert "server.reschedule_lost_runs" in failed.state_message
    assert [s.name for s in failed.states] == ["Scheduled", "Pending", "Submitted", "Running", "Failed"]
    # And the flow-run process, were it alive after all, can no longer write to the run
    with pytest.raises(AuthenticationError):
        tenant.client(staged.token or "").get_flow_run(staged.id)


def test_lost_submitted_run_goes_back_to_the_queue_for_another_agent(recovery: Recovery) -> None:
    # Given a Submitted run whose agent died before the process reported Running
    tenant = recovery.tenant
    staged = tenant.stage("Submitted")

    # Then it is Scheduled again, its claim and deployment cleared
    recovery.pass_at(LATER)
    requeued = tenant.run(staged.id)
    assert requeued.state == "Scheduled"
    assert requeued.state_message is not None
    assert requeued.state_message.endswith("back in the queue (return 1/3)")
    assert (requeued.agent_id, requeued.deployment) == (None, None)
    # And another agent with the run's labels takes it and can report it deployed
    runner = tenant.client(tenant.new_key("runner"))
    other = runner.register_agent("rescuer", "local", requeued.labels)
    claimed = TenantContext.claim_one(runner, other.id, staged.id)
    assert runner.set_flow_run_state(staged.id, "Submitted", "PID: 99", {"pid": 99}).state == "Submitted"
    assert tenant.client(claimed.run_token).set_flow_run_state(staged.id, "Running").state == "Running"


def test_lost_cancelling_run_is_cancelled(recovery: Recovery) -> None:
    staged = recovery.tenant.stage("Cancelling")

    recovery.pass_at(LATER)

    cancelled = recovery.tenant.run(staged.id)
    assert cancelled.state == "Cancelled"
    assert cancelled.state_message is not None
    assert cancelled.state_message.startswith("cancelled; lost: no sign of life")


def test_a_heartbeat_of_the_process_keeps_its_run_though_its_agent_died(recovery: Recovery) -> None:
    # Given a Running run silent for long, whose agent is gone, and whose flow-run process then sends a heartbeat
    tenant = recovery.tenant
    staged = tenant.stage("Running")
    recovery.backdate(staged.id, 10 * POLICY_TIMEOUT_SECONDS)
    token = tenant.client(staged.token or "")
    token.flow_run_heartbeat(staged.id)

    # Then it is not lost until a whole timeout after that heartbeat, and the run finishes normally
    recovery.pass_at(SOON)
    assert tenant.run(staged.id).state == "Running"
    assert token.set_flow_run_state(staged.id, "Success").state == "Success"


def test_an_agent_reporting_the_deployment_alive_vouches_for_its_run(recovery: Recovery) -> None:
    # Given a Running run whose process has been silent for long, but whose agent heartbeats, reporting it alive
    tenant = recovery.tenant
    runner = tenant.client(tenant.key("runner"))
    staged = tenant.stage("Running", runner)
    recovery.backdate(staged.id, 10 * POLICY_TIMEOUT_SECONDS)
    runner.agent_heartbeat(staged.agent_id or "", [{"flow_run_id": staged.id, "alive": True}])

    # Then the server leaves the verdict to the agent: still Running
    recovery.pass_at(SOON)
    assert tenant.run(staged.id).state == "Running"
    # And once the agent stops reporting it, a timeout later it is lost
    recovery.pass_at(LATER)
    assert tenant.run(staged.id).state == "Failed"


def test_run_its_live_agent_no_longer_knows_is_lost(recovery: Recovery) -> None:
    # Given a Running run whose agent heartbeats but does not report it (the agent was restarted under the same
    # identity and the old process died with its deployment), and whose process has been silent for long
    tenant = recovery.tenant
    runner = tenant.client(tenant.key("runner"))
    staged = tenant.stage("Running", runner)
    recovery.backdate(staged.id, 10 * POLICY_TIMEOUT_SECONDS)
    runner.agent_heartbeat(staged.agent_id or "", [])

    # Then nothing vouches for it any more: it is lost, though its agent is alive
    recovery.pass_at(SOON)
    failed = tenant.run(staged.id)
    assert failed.state == "Failed"
    assert failed.state_message is not None
    assert failed.state_message.startswith("lost: no sign of life")


def test_run_lost_again_and_again_fails_after_three_returns(recovery: Recovery) -> None:
    # Given a run lost after each deployment, three times
    tenant = recovery.tenant
    staged: Staged = tenant.stage("Submitted")
    for returns in (1, 2, 3):
        recovery.pass_at(LATER)
        requeued = tenant.run(staged.id)
        assert requeued.state == "Scheduled"
        assert requeued.state_message is not None
        assert requeued.state_message.endswith(f"(return {returns}/3)")
        runner = tenant.client(tenant.new_key("runner"))
        agent = runner.register_agent(f"doomed-{returns}", "local", requeued.labels)
        TenantContext.claim_one(runner, agent.id, staged.id)
        runner.set_flow_run_state(staged.id, "Submitted", "PID: 1", {"pid": 1})

    # Then the fourth loss fails it for good
    recovery.pass_at(LATER)
    failed = tenant.run(staged.id)
    assert failed.state == "Failed"
    assert failed.state_message is not None
    assert failed.state_message.endswith("it was put back in the queue 3 times already: giving up")


def test_lost_running_run_is_requeued_when_the_policy_says_so(recovery: Recovery) -> None:
    staged = recovery.tenant.stage("Running")

    recovery.pass_at(LATER, reschedule_running=True)

    requeued = recovery.tenant.run(staged.id)
    assert requeued.state_message is not None
    assert requeued.state_message.endswith("back in the queue (return 1/3)")
    assert [s.name for s in requeued.states] == ["Scheduled", "Pending", "Submitted", "Running", "Scheduled"]


def test_the_servers_own_service_requeues_a_lost_run_in_real_time(requeue_tenant: TenantContext) -> None:
    # The wiring: the server runs the service every 0.2 s with its settings (timeout, policy), and it acts
    staged = requeue_tenant.stage("Running")

    requeued = wait_for_state(requeue_tenant, staged.id, "Scheduled")

    assert requeued.state_message is not None
    assert requeued.state_message.endswith("back in the queue (return 1/3)")
    assert [s.name for s in requeued.states] == ["Scheduled", "Pending", "Submitted", "Running", "Scheduled"]


# --- the grace after a start --------------------------------------------------------------------------------


def test_recovery_waits_one_timeout_and_a_clients_longest_backoff_after_a_start_or_a_database_failure() -> None:
    # Given a service just started, with a 45 s heartbeat timeout (grace: 45 s + an agent's 30 s longest backoff)
    clock, factory = FakeClock(), CountingFactory()
    policy = RecoveryPolicy(run_heartbeat_timeout_seconds=45, reschedule_running=False, max_returns=3)
    service = RecoveryService(sessionmaker(), None, policy, 30.0, clock)  # type: ignore[arg-type]
    service._factory = factory  # type: ignore[assignment]

    # When it ticks within the grace, then it does not look at the database at all
    for elapsed in (0.0, 10.0, 74.9):
        clock.now = 1000.0 + elapsed
        service.run_once()
    assert factory.opened == 0

    # And once the grace has passed, it does
    clock.now = 1075.0
    with pytest.raises(RuntimeError, match="opened the database"):
        service.run_once()
    assert factory.opened == 1


def test_recovery_waits_again_after_the_database_could_not_be_reached() -> None:
    # Given a service past its start-up grace whose look at the database fails (nobody could report meanwhile)
    clock = FakeClock()
    policy = RecoveryPolicy(run_heartbeat_timeout_seconds=30, reschedule_running=False, max_returns=3)
    service = RecoveryService(sessionmaker(), None, policy, 30.0, clock)  # type: ignore[arg-type]

    def unreachable() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    service._factory = unreachable  # type: ignore[assignment]
    clock.now = 1060.0
    with pytest.raises(OperationalError):
        service.run_once()

    # Then it judges nothing until a whole grace has passed again from that failure
    factory = CountingFactory()
    service._factory = factory  # type: ignore[assignment]
    clock.now = 1060.0 + 59.9
    service.run_once()
    assert factory.opened == 0
    clock.now = 1060.0 + 60.0
    with pytest.raises(RuntimeError, match="opened the database"):
        service.run_once()

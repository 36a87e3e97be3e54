"""The recovery service: deployed runs whose agent and flow-run process both went silent are ended or requeued.

These tests run servers of their own with a 2 s timeout, checked every 0.2 s, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from baton.exceptions import AuthenticationError
from baton.server.database.connection import create_database_engine, create_session_factory
from baton.server.models.lost_runs import RecoveryPolicy
from baton.server.services.recovery import RecoveryService
from server.harness import Staged, TenantContext
from server.services.fakes import CountingFactory, FakeClock, wait_for_state
from support import ServerProcess

TIMEOUT_SECONDS = 2.0


def _start(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, **env: str) -> ServerProcess:
    if request.param == "postgresql":
        env["BATON__SERVER__DATABASE_URL"] = request.getfixturevalue("postgres_cluster").create_database()
    return ServerProcess(
        tmp_path_factory.mktemp(f"recovery-{request.param}"),
        BATON__SERVER__RUN_HEARTBEAT_TIMEOUT_SECONDS=str(TIMEOUT_SECONDS),
        BATON__SERVER__SERVICES_INTERVAL_SECONDS="0.2",
        **env,
    ).start()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def recovery_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory, request)
    yield server
    server.stop()


@pytest.fixture(scope="module", params=["sqlite"])
def requeue_server(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    server = _start(tmp_path_factory, request, BATON__SERVER__RESCHEDULE_LOST_RUNS="true")
    yield server
    server.stop()


def _tenant(server: ServerProcess) -> Iterator[TenantContext]:
    engine = create_database_engine(server.database_url, 2)
    context = TenantContext.create(server, create_session_factory(engine))
    yield context
    context.close()
    engine.dispose()


@pytest.fixture
def tenant(recovery_server: ServerProcess) -> Iterator[TenantContext]:
    yield from _tenant(recovery_server)


@pytest.fixture
def requeue_tenant(requeue_server: ServerProcess) -> Iterator[TenantContext]:
    yield from _tenant(requeue_server)


def keep_calling(call: object, seconds: float) -> None:
    """Call ``call()`` every 0.2 s for ``seconds``: a sign of life the recovery service must respect."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        call()  # type: ignore[operator]
        time.sleep(0.2)


# --- lost runs ---------------------------------------------------------------------------------------------


def test_lost_running_run_is_failed_and_its_token_revoked(tenant: TenantContext) -> None:
    # Given a Running run whose agent and flow-run process then both fall silent
    staged = tenant.stage("Running")

    # Then the recovery service fails it, saying why
    failed = wait_for_state(tenant, staged.id, "Failed")
    assert failed.state_message is not None
    assert failed.state_message.startswith("lost: no sign of life from its flow-run process or its agent for ")
    assert "(agent agent-" in failed.state_message
    assert "server.reschedule_lost_runs" in failed.state_message
    assert [s.name for s in failed.states] == ["Scheduled", "Pending", "Submitted", "Running", "Failed"]
    # And the flow-run process, were it alive after all, can no longer write to the run
    with pytest.raises(AuthenticationError):
        tenant.client(staged.token or "").get_flow_run(staged.id)


def test_lost_submitted_run_goes_back_to_the_queue_for_another_agent(tenant: TenantContext) -> None:
    # Given a Submitted run whose agent died before the process reported Running
    staged = tenant.stage("Submitted")

    # Then it is Scheduled again, its claim and deployment cleared
    requeued = wait_for_state(tenant, staged.id, "Scheduled")
    assert requeued.state_message is not None
    assert requeued.state_message.endswith("back in the queue (return 1/3)")
    assert (requeued.agent_id, requeued.deployment) == (None, None)
    # And another agent with the run's labels takes it and can report it deployed
    runner = tenant.client(tenant.new_key("runner"))
    other = runner.register_agent("rescuer", "local", requeued.labels)
    claimed = TenantContext.claim_one(runner, other.id, staged.id)
    assert runner.set_flow_run_state(staged.id, "Submitted", "PID: 99", {"pid": 99}).state == "Submitted"
    assert tenant.client(claimed.run_token).set_flow_run_state(staged.id, "Running").state == "Running"


def test_lost_cancelling_run_is_cancelled(tenant: TenantContext) -> None:
    staged = tenant.stage("Cancelling")

    cancelled = wait_for_state(tenant, staged.id, "Cancelled")

    assert cancelled.state_message is not None
    assert cancelled.state_message.startswith("cancelled; lost: no sign of life")


def test_run_whose_process_keeps_heartbeating_is_left_alone_though_its_agent_died(tenant: TenantContext) -> None:
    # Given a Running run whose agent is silent but whose flow-run process keeps sending heartbeats
    staged = tenant.stage("Running")
    token = tenant.client(staged.token or "")

    keep_calling(lambda: token.flow_run_heartbeat(staged.id), 3 * TIMEOUT_SECONDS)

    # Then it is still Running, and finishes normally
    assert tenant.run(staged.id).state == "Running"
    assert token.set_flow_run_state(staged.id, "Success").state == "Success"


def test_run_whose_agent_reports_it_alive_is_left_to_the_agent(tenant: TenantContext) -> None:
    # Given a Running run whose process is silent but whose agent heartbeats, reporting the deployment alive
    runner = tenant.client(tenant.key("runner"))
    staged = tenant.stage("Running", runner)
    alive = [{"flow_run_id": staged.id, "alive": True}]

    keep_calling(lambda: runner.agent_heartbeat(staged.agent_id or "", alive), 3 * TIMEOUT_SECONDS)

    # Then the server leaves the verdict to the agent: still Running
    assert tenant.run(staged.id).state == "Running"


def test_run_its_live_agent_no_longer_knows_is_lost(tenant: TenantContext) -> None:
    # Given a Running run whose agent heartbeats but does not report it (the agent was restarted under the same
    # identity and the old process died with its deployment), and whose process is silent
    runner = tenant.client(tenant.key("runner"))
    staged = tenant.stage("Running", runner)

    keep_calling(lambda: runner.agent_heartbeat(staged.agent_id or "", []), 2 * TIMEOUT_SECONDS)

    # Then nothing vouches for it any more: it is lost, though its agent is alive
    failed = wait_for_state(tenant, staged.id, "Failed")
    assert failed.state_message is not None
    assert failed.state_message.startswith("lost: no sign of life")


def test_run_lost_again_and_again_fails_after_three_returns(tenant: TenantContext) -> None:
    # Given a run lost after each deployment, three times
    staged: Staged = tenant.stage("Submitted")
    for returns in (1, 2, 3):
        requeued = wait_for_state(tenant, staged.id, "Scheduled")
        assert requeued.state_message is not None
        assert requeued.state_message.endswith(f"(return {returns}/3)")
        runner = tenant.client(tenant.new_key("runner"))
        agent = runner.register_agent(f"doomed-{returns}", "local", requeued.labels)
        TenantContext.claim_one(runner, agent.id, staged.id)
        runner.set_flow_run_state(staged.id, "Submitted", "PID: 1", {"pid": 1})

    # Then the fourth loss fails it for good
    failed = wait_for_state(tenant, staged.id, "Failed")
    assert failed.state_message is not None
    assert failed.state_message.endswith("it was put back in the queue 3 times already: giving up")


def test_lost_running_run_is_requeued_when_the_policy_says_so(requeue_tenant: TenantContext) -> None:
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

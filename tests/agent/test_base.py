"""The agent's loop, driven by the in-memory driver against the in-memory API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable

import pytest

from baton.agent.runs import Deployment
from baton.agent.testing import FakeDeployment, InMemoryAgent
from baton.exceptions import ConfigurationError, ConflictError, PermissionDeniedError, ServerUnavailableError
from baton.schemas.core import Role
from baton.schemas.responses import ClaimedRun
from baton.settings import BatonSettings

from .conftest import AGENT_KEY, AgentThread
from .fake_api import FakeApi

MakeAgent = Callable[..., InMemoryAgent]
RunInThread = Callable[[InMemoryAgent], AgentThread]


def test_claimed_run_is_deployed_then_submitted_with_the_deployment_identity(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = api.add_run()
    agent = make_agent()
    running = run_in_thread(agent)

    api.wait_for_state(run_id, "Submitted")
    assert api.last_state(run_id) == ("Submitted", "Fake ID: 1", {"fake_id": 1})
    assert api.agents["agent-" + agent.name]["type"] == "memory"

    agent.stop()
    agent.finish(run_id, exit_code=0)
    running.join()


def test_run_env_carries_the_run_token_never_the_agent_key(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given an agent --env, and a run config env that tries to override a BATON_ variable
    run_id = api.add_run(
        labels=["dev"], env={"SHARED": "from-run-config", "BATON__API__KEY": "stolen", "ONLY_RUN": "r"}
    )
    agent = make_agent(labels=["dev"], env={"SHARED": "from-agent", "ONLY_AGENT": "a"}, no_cloud_logs=True)
    running = run_in_thread(agent)

    [deployment] = agent.wait_for_deployments(1)
    env = deployment.env
    assert env["BATON__API__KEY"] == f"run-token-{run_id}"
    assert AGENT_KEY not in env.values()
    assert env["SHARED"] == "from-run-config"
    assert env["ONLY_AGENT"] == "a"
    assert env["ONLY_RUN"] == "r"
    assert env["BATON__API__URL"] == "http://127.0.0.1:9"
    assert env["BATON_FLOW_RUN_ID"] == run_id
    assert env["BATON_FLOW_ID"] == "flow-1"
    assert env["BATON_TENANT_ID"] == "tenant-1"
    assert json.loads(env["BATON__AGENT__LABELS"]) == ["dev"]
    assert env["BATON__LOGGING__SEND_TO_API"] == "false"
    agent.stop(cold=True)
    running.join()


def test_deployment_error_fails_the_run_with_its_message(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = api.add_run()
    agent = make_agent(deploy_error=lambda claimed: "image not found: nope:latest")
    running = run_in_thread(agent)

    api.wait_for_state(run_id, "Failed")
    assert api.last_state(run_id)[1] == "image not found: nope:latest"
    assert agent.status.deployment_failures == 1
    agent.stop()
    running.join()


def test_agent_with_labels_never_takes_unlabelled_run(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    unlabelled = api.add_run()
    labelled = api.add_run(labels=["dev"])
    agent = make_agent(labels=["dev", "staging"])
    running = run_in_thread(agent)

    api.wait_for_state(labelled, "Submitted")
    time.sleep(0.3)
    assert api.state(unlabelled) == "Scheduled"
    agent.stop(cold=True)
    running.join()


def test_limit_bounds_runs_deployed_at_once_and_claims_nothing_while_full(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_ids = [api.add_run() for _ in range(5)]
    agent = make_agent(limit=2)
    running = run_in_thread(agent)

    first_two = agent.wait_for_deployments(2)
    time.sleep(0.4)  # several poll waits: with both slots busy the agent must not claim
    assert len(agent.deployments) == 2
    assert all(claim["limit"] <= 2 for claim in api.claims)
    claims_while_full = len(api.claims)
    time.sleep(0.3)
    assert len(api.claims) == claims_while_full
    assert [api.state(run_id) for run_id in run_ids].count("Scheduled") == 3

    # When one run ends, a slot frees and exactly one more run is claimed
    agent.finish(first_two[0].flow_run_id)
    agent.wait_for_deployments(3)
    assert api.claims[-1]["limit"] == 1
    time.sleep(0.3)
    assert len(agent.deployments) == 3
    agent.stop(cold=True)
    running.join()


def test_max_polls_zero_registers_and_makes_no_claim(api: FakeApi, make_agent: MakeAgent) -> None:
    api.add_run()
    agent = make_agent(max_polls=0)
    agent.start()
    assert [name for name, _ in api.calls] == ["whoami", "register_agent"]


def test_max_polls_exits_after_n_claims_once_runs_are_submitted(api: FakeApi, make_agent: MakeAgent) -> None:
    run_ids = [api.add_run() for _ in range(2)]
    agent = make_agent(max_polls=2, deploy_seconds=0.2)

    agent.start()  # returns by itself

    assert len(api.claims) == 2
    assert [api.state(run_id) for run_id in run_ids] == ["Submitted", "Submitted"]
    assert not any(deployment.killed for deployment in agent.deployments.values())


def test_ended_deployment_is_reported_and_the_server_fails_a_run_without_final_state(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = api.add_run()
    agent = make_agent()
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Submitted")

    agent.finish(run_id, exit_code=137)

    api.wait_for_state(run_id, "Failed")
    assert "exited with code 137" in (api.last_state(run_id)[1] or "")
    api.wait_for(lambda: agent.status.active_runs == 0)
    agent.stop()
    running.join()


def test_heartbeat_reports_live_deployments(api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread) -> None:
    run_id = api.add_run()
    agent = make_agent()
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Submitted")
    api.wait_for(
        lambda: any(hb == [{"flow_run_id": run_id, "alive": True, "exit_code": None}] for hb in api.heartbeats)
    )
    agent.stop(cold=True)
    running.join()


def test_cancel_asked_by_the_server_kills_the_deployment_then_sets_cancelled(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = api.add_run()
    agent = make_agent()
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Submitted")

    api.cancel(run_id)

    api.wait_for_state(run_id, "Cancelled")
    assert agent.deployments[run_id].killed
    # The killed deployment is not reported as dead (the server would mark it Failed first).
    assert not any(item["flow_run_id"] == run_id and not item["alive"] for hb in api.heartbeats for item in hb)
    agent.stop()
    running.join()


def test_run_cancelled_while_deploying_refuses_submitted_and_its_deployment_is_killed(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = api.add_run()
    agent = make_agent(deploy_seconds=0.5)
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Pending")

    api.cancel(run_id)  # Pending -> Cancelled while the deploy is under way

    agent.wait_for(lambda: run_id in agent.deployments and agent.deployments[run_id].killed)
    assert api.state(run_id) == "Cancelled"
    api.wait_for(lambda: agent.status.active_runs == 0)
    agent.stop()
    running.join()


def test_warm_stop_claims_no_more_and_waits_for_running_deployments(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = api.add_run()
    agent = make_agent()
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Submitted")

    agent.stop()
    time.sleep(0.5)
    later = api.add_run()
    time.sleep(0.3)
    assert running.alive, "a warm stop waits for running deployments"
    assert api.state(later) == "Scheduled"
    assert not agent.deployments[run_id].killed

    agent.finish(run_id, exit_code=0)
    running.join()
    # Its end was reported before the agent left.
    assert any(item == {"flow_run_id": run_id, "alive": False, "exit_code": 0} for hb in api.heartbeats for item in hb)


def test_warm_stop_releases_runs_claimed_but_not_deployed(
    api: FakeApi, settings_with_long_poll: None, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    agent = make_agent()
    running = run_in_thread(agent)
    api.wait_for(lambda: len(api.claims) >= 1)  # a long poll is waiting on the server

    agent.stop()
    time.sleep(0.1)
    run_id = api.add_run()  # the waiting claim returns it after the stop

    running.join()
    assert api.state(run_id) == "Scheduled"
    assert api.last_state(run_id)[1] == f"released by agent {agent.name} on shutdown"
    assert agent.deployments == {}


@pytest.fixture
def settings_with_long_poll(settings: object) -> None:
    settings.agent.poll_wait_seconds = 3.0  # type: ignore[attr-defined]


def test_second_stop_is_a_cold_stop_that_kills_and_fails_running_deployments(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = api.add_run()
    agent = make_agent()
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Submitted")

    agent.stop()
    agent.stop()

    running.join()
    assert agent.deployments[run_id].killed
    assert agent.deployments[run_id].kill_grace_seconds == agent.cold_kill_grace_seconds
    assert api.last_state(run_id)[:2] == ("Failed", "the agent stopped (cold stop) and killed the flow process")


def test_transient_api_errors_are_retried(api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread) -> None:
    api.fail_next("claim", *[ServerUnavailableError("HTTP 503") for _ in range(3)])
    api.fail_next("set_flow_run_state", ServerUnavailableError("connection reset"))
    run_id = api.add_run()
    agent = make_agent()
    running = run_in_thread(agent)

    api.wait_for_state(run_id, "Submitted")
    assert agent.status.api_errors == 4
    agent.stop(cold=True)
    running.join()


def test_too_many_errors_in_a_row_end_the_agent_naming_one_example_of_each(api: FakeApi, make_agent: MakeAgent) -> None:
    refused = ServerUnavailableError("cannot reach the API: connection refused")
    refused.__cause__ = ConnectionRefusedError()
    api.fail_next("claim", refused, *[ServerUnavailableError("HTTP 502 bad gateway") for _ in range(10)])
    agent = make_agent()

    with pytest.raises(ServerUnavailableError) as caught:
        agent.start()

    message = str(caught.value)
    assert "5 API calls (poll) failed in a row" in message
    assert "connection refused" in message
    assert "HTTP 502" in message


def test_a_refused_request_in_a_loop_is_a_bug_and_ends_the_agent(api: FakeApi, make_agent: MakeAgent) -> None:
    api.fail_next("claim", PermissionDeniedError(403, "role read may not claim"))
    with pytest.raises(PermissionDeniedError):
        make_agent().start()


@pytest.mark.parametrize(
    ("tenant_id", "role", "wanted", "expected"),
    [
        ("", Role.RUNNER, None, "belongs to no tenant"),
        ("tenant-1", Role.READ, None, "role runner"),
        ("tenant-1", None, None, "run token"),
        ("tenant-1", Role.RUNNER, "tenant-2", "does not match"),
    ],
)
def test_startup_refuses_keys_that_cannot_run_an_agent(
    make_agent: MakeAgent, tenant_id: str, role: Role | None, wanted: str | None, expected: str
) -> None:
    agent = make_agent(client=FakeApi(tenant_id=tenant_id, role=role), tenant_id=wanted)
    with pytest.raises(ConfigurationError, match=expected):
        agent.start()


def test_poke_cuts_a_backoff_short(api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread) -> None:
    api.fail_next("claim", ServerUnavailableError("HTTP 503"))
    agent = make_agent()
    agent.policy.backoff.base_seconds = agent.policy.backoff.max_seconds = 30.0
    run_id = api.add_run()
    running = run_in_thread(agent)
    api.wait_for(lambda: len([c for c in api.calls if c[0] == "claim"]) >= 1)
    time.sleep(0.2)

    agent.poke()

    api.wait_for_state(run_id, "Submitted", timeout=5)
    agent.stop(cold=True)
    running.join()


def test_a_burst_of_runs_meeting_a_short_outage_does_not_end_the_agent(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given more runs failing their Submitted call at once than max_consecutive_errors (5)
    run_ids = [api.add_run() for _ in range(10)]
    api.fail_next("set_flow_run_state", *[ServerUnavailableError("HTTP 503") for _ in range(10)])
    agent = make_agent()
    running = run_in_thread(agent)

    # Then each run retries on its own count, and all are Submitted
    for run_id in run_ids:
        api.wait_for_state(run_id, "Submitted")
    assert running.alive
    agent.stop(cold=True)
    running.join()


def test_cold_stop_during_a_deploy_kills_what_the_deploy_started(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = api.add_run()
    agent = make_agent(deploy_seconds=0.5)
    running = run_in_thread(agent)
    api.wait_for(lambda: any(run.deploy_task for run in agent.registry.all()))  # the deploy is under way

    agent.stop(cold=True)

    running.join()
    assert agent.deployments[run_id].killed
    assert api.state(run_id) == "Failed"


def test_a_submitted_whose_answer_was_lost_keeps_the_run_when_its_retry_is_refused(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given a Submitted that the server commits, but whose answer is lost (a read timeout): the retry gets 409
    api.fail_after("set_flow_run_state", ServerUnavailableError("read timeout"))
    run_id = api.add_run()
    agent = make_agent()
    running = run_in_thread(agent)

    # Then the agent asks the server, sees the run Submitted for itself, and keeps it
    api.wait_for(lambda: agent.status.deployments == 1)
    assert api.state(run_id) == "Submitted"
    assert not agent.deployments[run_id].killed
    active = agent.registry.get(run_id)
    assert active is not None and active.submitted
    alive = {"flow_run_id": run_id, "alive": True, "exit_code": None}
    api.wait_for(lambda: any(alive in heartbeat for heartbeat in api.heartbeats))
    agent.finish(run_id, exit_code=0)
    api.wait_for_state(run_id, "Failed")  # the server heard of its end: "exited with code 0 before a final state"
    agent.stop()
    running.join()


def test_a_transient_error_then_a_refusal_leaves_the_agent_healthy_and_forgets_the_run(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given a run cancelled while it deploys, whose Submitted first meets a 503, then (retried) a 409
    api.fail_next("set_flow_run_state", ServerUnavailableError("HTTP 503"))
    run_id = api.add_run()
    agent = make_agent(deploy_seconds=0.5)
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Pending")
    api.cancel(run_id)

    agent.wait_for(lambda: run_id in agent.deployments and agent.deployments[run_id].killed)
    api.wait_for(lambda: agent.status.active_runs == 0)

    # Then the failure streak ended with the answer, and nothing is kept of the forgotten run
    assert agent.status.api_errors == 1
    assert agent.status.failing == {}
    assert agent.policy.consecutive(f"run {run_id}") == 0
    assert agent.status.health()[0] == 200
    assert api.state(run_id) == "Cancelled"
    agent.stop()
    running.join()


def test_cold_stop_releases_what_the_claim_in_flight_returns(
    api: FakeApi, settings_with_long_poll: None, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    agent = make_agent()
    running = run_in_thread(agent)
    api.wait_for(lambda: api.claims_waiting == 1)  # a long poll is waiting on the server

    agent.stop(cold=True)
    running.join()
    assert api.claims_waiting == 1  # the agent did not wait the long poll out
    run_id = api.add_run()  # the waiting claim returns it after the agent left

    released = ("Scheduled", f"released by agent {agent.name} on shutdown", None)
    api.wait_for(lambda: api.runs[run_id].history[-1] == released)
    assert [state for state, _, _ in api.runs[run_id].history] == ["Scheduled", "Pending", "Scheduled"]


def test_warm_stop_of_an_idle_agent_does_not_wait_out_the_long_poll(
    api: FakeApi, settings: BatonSettings, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    settings.agent.poll_wait_seconds = 30.0
    agent = make_agent()
    running = run_in_thread(agent)
    api.wait_for(lambda: api.claims_waiting == 1)

    agent.stop()

    running.join(timeout=5)  # far less than the 30 s long poll
    assert api.claims_waiting == 1
    run_id = api.add_run()
    released = ("Scheduled", f"released by agent {agent.name} on shutdown", None)
    api.wait_for(lambda: api.runs[run_id].history[-1] == released)


class EngineLikeAgent(InMemoryAgent):
    """Its flow runs act like the engine: on SIGTERM they report Cancelled themselves (with their run token)."""

    engine_api: FakeApi

    async def kill(self, deployment: Deployment, grace_seconds: float) -> None:
        fake: FakeDeployment = deployment.handle
        with contextlib.suppress(ConflictError):  # the run is final already: its token no longer works
            self.engine_api.set_flow_run_state(fake.flow_run_id, "Cancelled", "the flow run was cancelled (SIGTERM)")
        await super().kill(deployment, grace_seconds)


def test_cold_stop_fails_the_run_before_killing_so_the_engine_cannot_end_it_cancelled(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = api.add_run()
    agent = make_agent(cls=EngineLikeAgent)
    assert isinstance(agent, EngineLikeAgent)
    agent.engine_api = api
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Submitted")

    agent.stop(cold=True)

    running.join()
    assert agent.deployments[run_id].killed
    assert api.last_state(run_id)[:2] == ("Failed", "the agent stopped (cold stop) and killed the flow process")


class GatedFirstDeploy(InMemoryAgent):
    """The first deploy of each run waits for ``gate``: slow enough for the run's lease to expire."""

    gate: threading.Event

    async def deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Deployment:
        if claimed.run_token == f"run-token-{claimed.flow_run.id}":
            await asyncio.to_thread(self.gate.wait, 10)
        return await super().deploy(claimed, env)


def test_a_run_claimed_again_during_a_slow_deploy_runs_once_with_the_new_claim(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given a run whose first deploy is so slow that its lease expires and this agent claims it again
    run_id = api.add_run()
    agent = make_agent(cls=GatedFirstDeploy)
    assert isinstance(agent, GatedFirstDeploy)
    agent.gate = threading.Event()
    running = run_in_thread(agent)
    api.wait_for(lambda: any(run.deploy_task for run in agent.registry.all()))
    api.expire_lease(run_id)

    # When the new claim is deployed and Submitted, and only then the old deploy returns
    api.wait_for_state(run_id, "Submitted")
    agent.gate.set()
    agent.wait_for(lambda: len(agent.history) == 2 and agent.history[1].killed)

    # Then the old deployment is stopped without touching the run, and the new one is the run's
    new, old = agent.history
    assert (new.env["BATON__API__KEY"], new.killed) == (f"run-token-{run_id}-2", False)
    assert old.env["BATON__API__KEY"] == f"run-token-{run_id}"
    assert api.last_state(run_id) == ("Submitted", f"Fake ID: {new.fake_id}", {"fake_id": new.fake_id})
    active = agent.registry.get(run_id)
    assert active is not None and active.submitted and active.claimed.run_token == f"run-token-{run_id}-2"
    alive = {"flow_run_id": run_id, "alive": True, "exit_code": None}
    api.wait_for(lambda: any(alive in heartbeat for heartbeat in api.heartbeats))
    agent.stop(cold=True)
    running.join()


def test_a_fatal_error_during_a_deploy_detaches_what_the_deploy_started(api: FakeApi, make_agent: MakeAgent) -> None:
    # Given a deploy under way (in a thread, like Popen) when the next claim is refused
    api.fail_next("claim", None, PermissionDeniedError(403, "role read may not claim"))
    api.add_run()
    agent = make_agent(deploy_seconds=0.5, deploy_in_thread=True)

    with pytest.raises(PermissionDeniedError):
        agent.start()

    # Then the agent waited for the deploy and let its deployment go on alone, rather than orphaning it
    [deployment] = agent.history
    assert deployment.detached
    assert not deployment.killed

"""The agent's loop, driven by the in-memory driver against the real API server in process (``app_api``)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import pytest

from baton.agent.driver import Deployment
from baton.agent.testing import FakeDeployment, InMemoryAgent, InMemoryDriver
from baton.client import Client
from baton.exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConflictError,
    PermissionDeniedError,
    ServerUnavailableError,
)
from baton.schemas.core import Role
from baton.schemas.responses import ClaimedRun
from baton.settings import BatonSettings

from .app_api import AppApi
from .conftest import AgentThread
from .fake_api import FakeApi

MakeAgent = Callable[..., InMemoryAgent]
RunInThread = Callable[[InMemoryAgent], AgentThread]


def test_claimed_run_is_deployed_then_submitted_with_the_deployment_identity(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent()
    running = run_in_thread(agent)

    app_api.wait_for_state(run_id, "Submitted")
    assert app_api.last_state(run_id) == ("Submitted", "Fake ID: 1", {"fake_id": 1})
    assert app_api.agent(agent.agent_id).type == "memory"

    agent.stop()
    agent.finish(run_id, exit_code=0)
    running.join()


def test_run_env_carries_the_run_token_never_the_agent_key(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given an agent --env, and a run config env that tries to override a BATON_ variable
    run_id = app_api.add_run(
        labels=["dev"], env={"SHARED": "from-run-config", "BATON__API__KEY": "stolen", "ONLY_RUN": "r"}
    )
    agent = make_app_agent(labels=["dev"], env={"SHARED": "from-agent", "ONLY_AGENT": "a"}, no_cloud_logs=True)
    running = run_in_thread(agent)

    [deployment] = agent.wait_for_deployments(1)
    env = deployment.env
    assert env["BATON__API__KEY"] == deployment.claimed.run_token
    assert app_api.runner_key not in env.values()
    # The server knows that key as this run's token: it reads and reports this run only
    with Client(app_api.api_url, env["BATON__API__KEY"]) as run_client:
        who = run_client.whoami()
    assert (who.role, who.flow_run_id) == (None, run_id)
    assert env["SHARED"] == "from-run-config"
    assert env["ONLY_AGENT"] == "a"
    assert env["ONLY_RUN"] == "r"
    assert env["BATON__API__URL"] == app_api.api_url
    assert env["BATON_FLOW_RUN_ID"] == run_id
    assert env["BATON_FLOW_ID"] == app_api.run(run_id).flow_id
    assert env["BATON_TENANT_ID"] == app_api.tenant_id
    assert json.loads(env["BATON__AGENT__LABELS"]) == ["dev"]
    assert env["BATON__LOGGING__SEND_TO_API"] == "false"
    agent.stop(cold=True)
    running.join()


def test_deployment_error_fails_the_run_with_its_message(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent(deploy_error=lambda claimed: "image not found: nope:latest")
    running = run_in_thread(agent)

    app_api.wait_for_state(run_id, "Failed")
    assert app_api.last_state(run_id)[1] == "image not found: nope:latest"
    assert agent.status.deployment_failures == 1
    agent.stop()
    running.join()


def test_agent_with_labels_never_takes_unlabelled_run(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    unlabelled = app_api.add_run()
    labelled = app_api.add_run(labels=["dev"])
    agent = make_app_agent(labels=["dev", "staging"])
    running = run_in_thread(agent)

    app_api.wait_for_state(labelled, "Submitted")
    time.sleep(0.3)
    assert app_api.state(unlabelled) == "Scheduled"
    agent.stop(cold=True)
    running.join()


def test_limit_bounds_runs_deployed_at_once_and_claims_nothing_while_full(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_ids = [app_api.add_run() for _ in range(5)]
    agent = make_app_agent(limit=2)
    running = run_in_thread(agent)

    first_two = agent.wait_for_deployments(2)
    time.sleep(0.4)  # several poll waits: with both slots busy the agent must not claim
    assert len(agent.deployments) == 2
    assert all(claim["limit"] <= 2 for claim in app_api.claims)
    claims_while_full = len(app_api.claims)
    time.sleep(0.3)
    assert len(app_api.claims) == claims_while_full
    assert [app_api.state(run_id) for run_id in run_ids].count("Scheduled") == 3

    # When one run ends, a slot frees and exactly one more run is claimed
    agent.finish(first_two[0].flow_run_id)
    agent.wait_for_deployments(3)
    assert app_api.claims[-1]["limit"] == 1
    time.sleep(0.3)
    assert len(agent.deployments) == 3
    agent.stop(cold=True)
    running.join()


def test_max_polls_zero_registers_and_makes_no_claim(app_api: AppApi, make_app_agent: MakeAgent) -> None:
    app_api.add_run()
    agent = make_app_agent(max_polls=0)
    agent.start()
    assert [name for name, _ in app_api.calls] == ["whoami", "register_agent"]


def test_max_polls_exits_after_n_claims_once_runs_are_submitted(app_api: AppApi, make_app_agent: MakeAgent) -> None:
    run_ids = [app_api.add_run() for _ in range(2)]
    agent = make_app_agent(max_polls=2, deploy_seconds=0.2)

    agent.start()  # returns by itself

    assert len(app_api.claims) == 2
    assert [app_api.state(run_id) for run_id in run_ids] == ["Submitted", "Submitted"]
    assert not any(deployment.killed for deployment in agent.deployments.values())


def test_ended_deployment_is_reported_and_the_server_fails_a_run_without_final_state(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    agent.finish(run_id, exit_code=137)

    app_api.wait_for_state(run_id, "Failed")
    assert "exited with code 137" in (app_api.last_state(run_id)[1] or "")
    app_api.wait_for(lambda: agent.status.active_runs == 0)
    agent.stop()
    running.join()


def test_heartbeat_reports_live_deployments(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")
    app_api.wait_for(
        lambda: any(
            hb == [{"flow_run_id": run_id, "alive": True, "exit_code": None, "attempt": 1}] for hb in app_api.heartbeats
        )
    )
    agent.stop(cold=True)
    running.join()


def test_cancel_asked_by_the_server_kills_the_deployment_then_sets_cancelled(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    app_api.cancel(run_id)

    app_api.wait_for_state(run_id, "Cancelled")
    assert agent.deployments[run_id].killed
    # The agent's Cancelled ends the run, and the killed deployment is not reported as dead: the server would then
    # end the run itself ("cancelled; the deployment exited with code 143"), racing the agent's own state.
    assert app_api.last_state(run_id)[:2] == ("Cancelled", f"cancelled: agent {agent.name} stopped its deployment")
    assert not any(item["flow_run_id"] == run_id and not item["alive"] for hb in app_api.heartbeats for item in hb)
    agent.stop()
    running.join()


def test_run_cancelled_while_deploying_refuses_submitted_and_its_deployment_is_killed(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent(deploy_seconds=0.5)
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Pending")

    app_api.cancel(run_id)  # Pending -> Cancelled while the deploy is under way

    agent.wait_for(lambda: run_id in agent.deployments and agent.deployments[run_id].killed)
    assert app_api.state(run_id) == "Cancelled"
    app_api.wait_for(lambda: agent.status.active_runs == 0)
    agent.stop()
    running.join()


def test_warm_stop_claims_no_more_and_waits_for_running_deployments(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    agent.stop()
    time.sleep(0.5)
    later = app_api.add_run()
    time.sleep(0.3)
    assert running.alive, "a warm stop waits for running deployments"
    assert app_api.state(later) == "Scheduled"
    assert not agent.deployments[run_id].killed

    agent.finish(run_id, exit_code=0)
    running.join()
    # Its end was reported before the agent left.
    assert any(
        item == {"flow_run_id": run_id, "alive": False, "exit_code": 0, "attempt": 1}
        for hb in app_api.heartbeats
        for item in hb
    )


def test_warm_stop_releases_runs_claimed_but_not_deployed_then_deregisters(
    app_api: AppApi, settings_with_long_poll: None, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given an agent whose first deregistration is refused, as when its poll has just claimed a run (409)
    app_api.fail_next("deregister_agent", ConflictError(409, "agent still holds 1 run(s)"))
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for(lambda: len(app_api.claims) >= 1)  # a long poll is waiting on the server

    # When it stops warmly and a run arrives for the poll still waiting
    agent.stop()
    time.sleep(0.1)
    run_id = app_api.add_run()  # the waiting claim returns it after the stop

    # Then the run goes back to the queue, and the agent deregisters once it is released
    running.join()
    assert app_api.state(run_id) == "Scheduled"
    assert app_api.last_state(run_id)[1] == f"released by agent {agent.name} on shutdown"
    assert agent.deployments == {}
    assert [method for method, _ in app_api.calls if method == "deregister_agent"] == ["deregister_agent"] * 2
    assert app_api.admin.list_agents()[0].deregistered_at is not None


@pytest.fixture
def settings_with_long_poll(settings: object) -> None:
    settings.agent.poll_wait_seconds = 3.0  # type: ignore[attr-defined]


def test_second_stop_is_a_cold_stop_that_kills_and_fails_running_deployments(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    agent.stop()
    agent.stop()

    running.join()
    assert agent.deployments[run_id].killed
    assert agent.deployments[run_id].kill_grace_seconds == agent.cold_kill_grace_seconds
    assert app_api.last_state(run_id)[:2] == ("Failed", "the agent stopped (cold stop) and killed the flow process")


def test_transient_api_errors_are_retried(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    app_api.fail_next("claim", *[ServerUnavailableError("HTTP 503") for _ in range(3)])
    app_api.fail_next("set_flow_run_state", ServerUnavailableError("connection reset"))
    run_id = app_api.add_run()
    agent = make_app_agent()
    running = run_in_thread(agent)

    app_api.wait_for_state(run_id, "Submitted")
    assert agent.status.api_errors == 4
    agent.stop(cold=True)
    running.join()


def test_too_many_errors_in_a_row_end_the_agent_naming_one_example_of_each(
    app_api: AppApi, make_app_agent: MakeAgent
) -> None:
    refused = ServerUnavailableError("cannot reach the API: connection refused")
    refused.__cause__ = ConnectionRefusedError()
    app_api.fail_next("claim", refused, *[ServerUnavailableError("HTTP 502 bad gateway") for _ in range(10)])
    agent = make_app_agent()

    with pytest.raises(ServerUnavailableError) as caught:
        agent.start()

    message = str(caught.value)
    assert "5 API calls (poll) failed in a row" in message
    assert "connection refused" in message
    assert "HTTP 502" in message


def test_a_refused_request_in_a_loop_is_a_bug_and_ends_the_agent(app_api: AppApi, make_app_agent: MakeAgent) -> None:
    app_api.fail_next("claim", PermissionDeniedError(403, "role read may not claim"))
    with pytest.raises(PermissionDeniedError):
        make_app_agent().start()


def _run_token(app_api: AppApi) -> str:
    """A real run token: a run claimed by an agent registered for the purpose."""
    app_api.add_run()
    agent_id = app_api.register_agent("token-maker", "memory", []).id
    [claimed] = app_api.claim(agent_id).runs
    return claimed.run_token


@pytest.mark.parametrize(
    ("key", "wanted", "expected"),
    [
        ("read", None, "role runner"),
        ("run token", None, "run token"),
        ("runner", "tenant-2", "does not match"),
    ],
)
def test_startup_refuses_keys_that_cannot_run_an_agent(
    app_api: AppApi, make_app_agent: MakeAgent, key: str, wanted: str | None, expected: str
) -> None:
    if key == "read":
        client = app_api.with_key(app_api.new_key("read"))
    elif key == "run token":
        client = app_api.with_key(_run_token(app_api))
    else:
        client = app_api
    agent = make_app_agent(client=client, tenant_id=wanted)
    with pytest.raises(ConfigurationError, match=expected):
        agent.start()
    assert [method for method, _ in client.calls] == ["whoami"]


def test_startup_refuses_a_key_of_no_tenant(make_agent: MakeAgent) -> None:
    # On FakeApi: every key of the real server belongs to a tenant, so no server answers this whoami.
    agent = make_agent(client=FakeApi(tenant_id="", role=Role.RUNNER))
    with pytest.raises(ConfigurationError, match="belongs to no tenant"):
        agent.start()


def test_poke_cuts_a_backoff_short(app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread) -> None:
    app_api.fail_next("claim", ServerUnavailableError("HTTP 503"))
    agent = make_app_agent()
    agent.policy.backoff.base_seconds = agent.policy.backoff.max_seconds = 30.0
    run_id = app_api.add_run()
    running = run_in_thread(agent)
    app_api.wait_for(lambda: len([c for c in app_api.calls if c[0] == "claim"]) >= 1)
    time.sleep(0.2)

    agent.poke()

    app_api.wait_for_state(run_id, "Submitted", timeout=5)
    agent.stop(cold=True)
    running.join()


def test_a_burst_of_runs_meeting_a_short_outage_does_not_end_the_agent(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given more runs failing their Submitted call at once than max_consecutive_errors (5)
    run_ids = [app_api.add_run() for _ in range(10)]
    app_api.fail_next("set_flow_run_state", *[ServerUnavailableError("HTTP 503") for _ in range(10)])
    agent = make_app_agent()
    running = run_in_thread(agent)

    # Then each run retries on its own count, and all are Submitted
    for run_id in run_ids:
        app_api.wait_for_state(run_id, "Submitted")
    assert running.alive
    agent.stop(cold=True)
    running.join()


def test_cold_stop_during_a_deploy_kills_what_the_deploy_started(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent(deploy_seconds=0.5)
    running = run_in_thread(agent)
    app_api.wait_for(lambda: any(run.deploy_task for run in agent.registry.all()))  # the deploy is under way

    agent.stop(cold=True)

    running.join()
    assert agent.deployments[run_id].killed
    assert app_api.state(run_id) == "Failed"


def test_a_submitted_whose_answer_was_lost_keeps_the_run_when_its_retry_is_refused(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given a Submitted that the server commits, but whose answer is lost (a read timeout): the retry gets 409
    app_api.fail_after("set_flow_run_state", ServerUnavailableError("read timeout"))
    run_id = app_api.add_run()
    agent = make_app_agent()
    running = run_in_thread(agent)

    # Then the agent asks the server, sees the run Submitted for itself, and keeps it
    app_api.wait_for(lambda: agent.status.deployments == 1)
    assert app_api.state(run_id) == "Submitted"
    assert not agent.deployments[run_id].killed
    active = agent.registry.get(run_id)
    assert active is not None and active.submitted
    alive = {"flow_run_id": run_id, "alive": True, "exit_code": None, "attempt": 1}
    app_api.wait_for(lambda: any(alive in heartbeat for heartbeat in app_api.heartbeats))
    agent.finish(run_id, exit_code=0)
    app_api.wait_for_state(run_id, "Failed")  # the server heard of its end: "exited with code 0 before a final state"
    agent.stop()
    running.join()


def test_a_transient_error_then_a_refusal_leaves_the_agent_healthy_and_forgets_the_run(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given a run cancelled while it deploys, whose Submitted first meets a 503, then (retried) a 409
    app_api.fail_next("set_flow_run_state", ServerUnavailableError("HTTP 503"))
    run_id = app_api.add_run()
    agent = make_app_agent(deploy_seconds=0.5)
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Pending")
    app_api.cancel(run_id)

    agent.wait_for(lambda: run_id in agent.deployments and agent.deployments[run_id].killed)
    app_api.wait_for(lambda: agent.status.active_runs == 0)

    # Then the failure streak ended with the answer, and nothing is kept of the forgotten run
    assert agent.status.api_errors == 1
    assert agent.status.failing == {}
    assert agent.policy.consecutive(f"run {run_id}") == 0
    assert agent.status.health()[0] == 200
    assert app_api.state(run_id) == "Cancelled"
    agent.stop()
    running.join()


def test_cold_stop_releases_what_the_claim_in_flight_returns(
    app_api: AppApi, settings_with_long_poll: None, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for(lambda: app_api.claims_waiting == 1)  # a long poll is waiting on the server

    agent.stop(cold=True)
    running.join()
    assert app_api.claims_waiting == 1  # the agent did not wait the long poll out
    run_id = app_api.add_run()  # the waiting claim returns it after the agent left

    released = ("Scheduled", f"released by agent {agent.name} on shutdown", None)
    app_api.wait_for(lambda: app_api.last_state(run_id) == released)
    assert [state for state, _, _ in app_api.history(run_id)] == ["Scheduled", "Pending", "Scheduled"]


def test_warm_stop_of_an_idle_agent_does_not_wait_out_the_long_poll(
    app_api: AppApi, settings: BatonSettings, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    settings.agent.poll_wait_seconds = 30.0
    agent = make_app_agent()
    running = run_in_thread(agent)
    # (its claim is sent: the server may not have begun it yet, and must still see it as this process's, which
    # deregisters, rather than a restarted agent's)
    app_api.wait_for(lambda: app_api.claims_waiting == 1)

    agent.stop()

    running.join(timeout=5)  # far less than the 30 s long poll
    # Its deregistration ended the poll on the server, which claims nothing after it: a run created now stays put
    app_api.wait_for(lambda: app_api.claims_waiting == 0)
    assert [method for method, _ in app_api.calls if method == "deregister_agent"] == ["deregister_agent"]
    run_id = app_api.add_run()
    time.sleep(0.2)
    assert app_api.last_state(run_id)[0] == "Scheduled" and app_api.state(run_id) == "Scheduled"


def test_a_heartbeat_under_way_at_a_warm_stop_ends_before_the_deregistration(
    app_api: AppApi, settings: BatonSettings, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # A heartbeat is a sign of life: one that reached the server after the deregistration made the agent live again,
    # and its waiting poll then waited out its 30 s (cancelling the heartbeat loop had cancelled the future that the
    # stop waited on, while its thread still sent the request).
    settings.agent.poll_wait_seconds = 30.0
    settings.agent.heartbeat_interval_seconds = 0.05
    gate = app_api.hold("agent_heartbeat")
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for(lambda: app_api.claims_waiting == 1 and ("agent_heartbeat" in dict(app_api.calls)))

    agent.stop()
    release = threading.Timer(0.3, gate.set)  # the heartbeat reaches the server well after the stop began
    release.start()
    running.join(timeout=5)
    release.join()

    app_api.wait_for(lambda: app_api.claims_waiting == 0, timeout=5)  # its poll ended at the deregistration
    # and the heartbeat, held until after the stop began, reached the server before the deregistration
    assert app_api.admin.list_agents()[0].deregistered_at is not None


class EngineLikeDriver(InMemoryDriver):
    """Its flow runs act like the engine: on SIGTERM they report Cancelled themselves, with their run token."""

    def __init__(self, api_url: str) -> None:
        super().__init__()
        self.api_url = api_url
        self.refusals: list[BaseException] = []  # what the server answered the flow runs' Cancelled

    async def kill(self, deployment: Deployment, grace_seconds: float) -> None:
        fake: FakeDeployment = deployment.handle
        with Client(self.api_url, fake.claimed.run_token) as engine:
            try:
                message = "the flow run was cancelled (SIGTERM)"
                await asyncio.to_thread(engine.set_flow_run_state, fake.flow_run_id, "Cancelled", message)
            except (AuthenticationError, ConflictError) as exc:  # the run is final already
                self.refusals.append(exc)
        await super().kill(deployment, grace_seconds)


def test_cold_stop_fails_the_run_before_killing_so_the_engine_cannot_end_it_cancelled(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    driver = EngineLikeDriver(app_api.api_url)
    agent = make_app_agent(driver=driver)
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    agent.stop(cold=True)

    running.join()
    assert agent.deployments[run_id].killed
    assert app_api.last_state(run_id)[:2] == ("Failed", "the agent stopped (cold stop) and killed the flow process")
    # The real server ends a run token with its run: the engine's late Cancelled is refused as unauthenticated
    [refusal] = driver.refusals
    assert isinstance(refusal, AuthenticationError)


class GatedFirstDeploy(InMemoryDriver):
    """The first deploy of each run waits for ``gate``: slow enough for the run's lease to expire."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self._deployed: set[str] = set()

    async def deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Deployment:
        if claimed.flow_run.id not in self._deployed:
            self._deployed.add(claimed.flow_run.id)
            await asyncio.to_thread(self.gate.wait, 10)
        return await super().deploy(claimed, env)


def test_a_run_claimed_again_during_a_slow_deploy_runs_once_with_the_new_claim(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given a run whose first deploy is so slow that its lease expires and this agent claims it again
    run_id = app_api.add_run()
    driver = GatedFirstDeploy()
    agent = make_app_agent(driver=driver)
    running = run_in_thread(agent)
    app_api.wait_for(lambda: any(run.deploy_task for run in agent.registry.all()))
    app_api.expire_lease(run_id)

    # When the new claim is deployed and Submitted, and only then the old deploy returns
    app_api.wait_for_state(run_id, "Submitted")
    driver.gate.set()
    agent.wait_for(lambda: len(agent.history) == 2 and agent.history[1].killed)

    # Then the old deployment is stopped without touching the run, and the new one is the run's
    new, old = agent.history
    assert (new.env["BATON__API__KEY"], new.killed) == (new.claimed.run_token, False)
    assert old.env["BATON__API__KEY"] == old.claimed.run_token != new.claimed.run_token
    assert app_api.last_state(run_id) == ("Submitted", f"Fake ID: {new.fake_id}", {"fake_id": new.fake_id})
    active = agent.registry.get(run_id)
    assert active is not None and active.submitted and active.claimed.run_token == new.claimed.run_token
    # The new claim replaced the run's token on the server: the old deployment's token no longer works
    with Client(app_api.api_url, old.claimed.run_token) as stale, pytest.raises(AuthenticationError):
        stale.get_flow_run(run_id)
    alive = {"flow_run_id": run_id, "alive": True, "exit_code": None, "attempt": 1}
    app_api.wait_for(lambda: any(alive in heartbeat for heartbeat in app_api.heartbeats))
    agent.stop(cold=True)
    running.join()


def test_a_fatal_error_during_a_deploy_detaches_what_the_deploy_started(
    app_api: AppApi, make_app_agent: MakeAgent
) -> None:
    # Given a deploy under way (in a thread, like Popen) when the next claim is refused
    app_api.fail_next("claim", None, PermissionDeniedError(403, "role read may not claim"))
    app_api.add_run()
    agent = make_app_agent(deploy_seconds=0.5, deploy_in_thread=True)

    with pytest.raises(PermissionDeniedError):
        agent.start()

    # Then the agent waited for the deploy and let its deployment go on alone, rather than orphaning it
    [deployment] = agent.history
    assert deployment.detached
    assert not deployment.killed

"""The base-class behaviour the Docker agent relies on, with the in-memory driver against the real API server in
process: a platform that goes away (no claims, unhealthy, claimed runs released, recovery without restart) and end
messages passed to the heartbeat."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from baton.agent.driver import Deployment, Ended
from baton.agent.testing import InMemoryAgent, InMemoryDriver
from baton.backoff import Backoff
from baton.schemas.responses import ClaimedRun
from baton.settings import BatonSettings

from .app_api import AppApi
from .conftest import AgentThread

MakeAgent = Callable[..., InMemoryAgent]
RunInThread = Callable[[Any], AgentThread]
MakeFlaky = Callable[..., "FlakyPlatformAgent"]


class FlakyPlatform(InMemoryDriver):
    """An in-memory driver whose platform a test takes away (``down``) and gives back."""

    down: str | None = None
    end_message: str | None = None

    def problem(self) -> str | None:
        return self.down

    async def inspect(self, deployment: Deployment) -> int | Ended | None:
        exit_code = await super().inspect(deployment)
        if exit_code is None or self.end_message is None:
            return exit_code
        return Ended(exit_code if isinstance(exit_code, int) else None, self.end_message)


class FlakyPlatformAgent(InMemoryAgent):
    """An in-memory agent on a :class:`FlakyPlatform`: ``agent.problem`` takes it away, None gives it back."""

    driver: FlakyPlatform

    @property
    def problem(self) -> str | None:
        return self.driver.down

    @problem.setter
    def problem(self, value: str | None) -> None:
        self.driver.down = value

    @property
    def end_message(self) -> str | None:
        return self.driver.end_message

    @end_message.setter
    def end_message(self, value: str | None) -> None:
        self.driver.end_message = value


@pytest.fixture
def flaky_agent(app_settings: BatonSettings, app_api: AppApi) -> MakeFlaky:
    def _make(**options: Any) -> FlakyPlatformAgent:
        options.setdefault("settings", app_settings)
        options.setdefault("client", app_api)
        driver = FlakyPlatform(**{name: options.pop(name) for name in ("deploy_error",) if name in options})
        agent = FlakyPlatformAgent(driver=driver, **options)
        agent.policy.backoff = Backoff(base_seconds=0.01, max_seconds=0.05)
        return agent

    return _make


def test_no_claims_while_the_platform_has_a_problem_and_claims_again_once_it_is_back(
    app_api: AppApi, flaky_agent: MakeFlaky, run_in_thread: RunInThread
) -> None:
    agent = flaky_agent()
    agent.problem = "the Docker daemon does not answer"
    run_id = app_api.add_run()
    running = run_in_thread(agent)
    app_api.wait_for(lambda: "register_agent" in [method for method, _ in app_api.calls])

    time.sleep(0.6)
    assert app_api.claims == []
    assert app_api.state(run_id) == "Scheduled"
    assert agent.status.unhealthy_reason() == "the Docker daemon does not answer"

    agent.problem = None
    agent.poke()

    app_api.wait_for_state(run_id, "Submitted")
    assert agent.status.unhealthy_reason() is None
    agent.stop(cold=True)
    running.join()


def test_a_run_claimed_as_the_platform_goes_away_is_released_not_deployed(
    app_api: AppApi, flaky_agent: MakeFlaky, run_in_thread: RunInThread
) -> None:
    # Given a claim waiting on the server
    gate = app_api.hold("claim")
    agent = flaky_agent()
    running = run_in_thread(agent)
    app_api.wait_for(lambda: "claim" in [method for method, _ in app_api.calls])
    run_id = app_api.add_run()

    # When the platform goes away before the claim returns the run
    agent.problem = "the Docker daemon does not answer"
    gate.set()

    # Then the run goes back to Scheduled for another agent, and nothing was deployed
    app_api.wait_for(lambda: len(app_api.history(run_id)) >= 3)
    assert app_api.last_state(run_id)[:2] == (
        "Scheduled",
        f"released by agent {agent.name} without deploying it: the Docker daemon does not answer",
    )
    assert agent.deployments == {}
    assert agent.status.deployment_failures == 0
    agent.stop(cold=True)
    running.join()


def test_a_deploy_that_fails_because_the_platform_went_away_releases_the_run(
    app_api: AppApi, flaky_agent: MakeFlaky, run_in_thread: RunInThread
) -> None:
    holder: dict[str, FlakyPlatformAgent] = {}

    def platform_lost(claimed: ClaimedRun) -> str:
        holder["agent"].problem = "the Docker daemon does not answer"
        return "connection refused"

    run_id = app_api.add_run()
    agent = flaky_agent(deploy_error=platform_lost)
    holder["agent"] = agent
    running = run_in_thread(agent)

    # Then the run is released, not failed. Its first three states are read, not its latest: the poll loop's next
    # claim, sent before the deploy failed, may take the released run at once (to release it again).
    app_api.wait_for(lambda: len(app_api.history(run_id)) >= 3)
    (scheduled, _, _), (claimed, _, _), (released, message, _) = app_api.history(run_id)[:3]
    assert (scheduled, claimed, released) == ("Scheduled", "Pending", "Scheduled")
    assert "without deploying it" in (message or "")
    agent.stop(cold=True)
    running.join()


def test_a_deploy_error_with_the_platform_fine_still_fails_the_run(
    app_api: AppApi, flaky_agent: MakeFlaky, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = flaky_agent(deploy_error=lambda claimed: "image x is not present locally")
    running = run_in_thread(agent)

    app_api.wait_for_state(run_id, "Failed")
    assert app_api.last_state(run_id)[1] == "image x is not present locally"
    agent.stop(cold=True)
    running.join()


def test_the_message_of_an_ended_deployment_goes_into_the_heartbeat(
    app_api: AppApi, flaky_agent: MakeFlaky, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = flaky_agent()
    agent.end_message = "container c was OOM-killed; last log lines:\nallocating"
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    agent.finish(run_id, exit_code=137)

    app_api.wait_for_state(run_id, "Failed")
    ended = {"flow_run_id": run_id, "alive": False, "exit_code": 137, "message": agent.end_message, "attempt": 1}
    assert any(item == ended for heartbeat in app_api.heartbeats for item in heartbeat)
    agent.stop()
    running.join()


def test_an_unknown_exit_code_is_reported_as_none(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    class Vanishing(InMemoryDriver):
        async def inspect(self, deployment: Deployment) -> int | Ended | None:
            fake = deployment.handle
            return None if fake.exit_code is None else Ended(None, "the container was removed")

    run_id = app_api.add_run()
    agent = make_app_agent(driver=Vanishing())
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    agent.finish(run_id, exit_code=1)

    app_api.wait_for_state(run_id, "Failed")
    ended = {
        "flow_run_id": run_id,
        "alive": False,
        "exit_code": None,
        "message": "the container was removed",
        "attempt": 1,
    }
    assert any(item == ended for heartbeat in app_api.heartbeats for item in heartbeat)
    agent.stop()
    running.join()

"""The base-class behaviour the Docker agent relies on, with the in-memory driver: a platform that goes away (no
claims, unhealthy, claimed runs released, recovery without restart) and end messages passed to the heartbeat."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from baton.agent.runs import Deployment, Ended
from baton.agent.testing import InMemoryAgent
from baton.schemas.responses import ClaimedRun

from .conftest import AgentThread
from .fake_api import FakeApi

MakeAgent = Callable[..., InMemoryAgent]
RunInThread = Callable[[Any], AgentThread]
MakeFlaky = Callable[..., "FlakyPlatformAgent"]


class FlakyPlatformAgent(InMemoryAgent):
    """An in-memory agent whose platform a test takes away (``problem``) and gives back."""

    problem: str | None = None
    end_message: str | None = None

    def platform_problem(self) -> str | None:
        return self.problem

    async def inspect(self, deployment: Deployment) -> int | Ended | None:
        exit_code = await super().inspect(deployment)
        if exit_code is None or self.end_message is None:
            return exit_code
        return Ended(exit_code if isinstance(exit_code, int) else None, self.end_message)


@pytest.fixture
def flaky_agent(make_agent: MakeAgent) -> MakeFlaky:
    def _make(**options: Any) -> FlakyPlatformAgent:
        return cast(FlakyPlatformAgent, make_agent(FlakyPlatformAgent, **options))

    return _make


def test_no_claims_while_the_platform_has_a_problem_and_claims_again_once_it_is_back(
    api: FakeApi, flaky_agent: MakeFlaky, run_in_thread: RunInThread
) -> None:
    agent = flaky_agent()
    agent.problem = "the Docker daemon does not answer"
    run_id = api.add_run()
    running = run_in_thread(agent)
    api.wait_for(lambda: "register_agent" in [method for method, _ in api.calls])

    time.sleep(0.6)
    assert api.claims == []
    assert api.state(run_id) == "Scheduled"
    assert agent.status.unhealthy_reason() == "the Docker daemon does not answer"

    agent.problem = None
    agent.poke()

    api.wait_for_state(run_id, "Submitted")
    assert agent.status.unhealthy_reason() is None
    agent.stop(cold=True)
    running.join()


def test_a_run_claimed_as_the_platform_goes_away_is_released_not_deployed(
    api: FakeApi, flaky_agent: MakeFlaky, run_in_thread: RunInThread
) -> None:
    # Given a claim waiting on the server
    gate = api.hold("claim")
    agent = flaky_agent()
    running = run_in_thread(agent)
    api.wait_for(lambda: "claim" in [method for method, _ in api.calls])
    run_id = api.add_run()

    # When the platform goes away before the claim returns the run
    agent.problem = "the Docker daemon does not answer"
    gate.set()

    # Then the run goes back to Scheduled for another agent, and nothing was deployed
    api.wait_for(lambda: len(api.runs[run_id].history) >= 3)
    assert api.last_state(run_id)[:2] == (
        "Scheduled",
        f"released by agent {agent.name} without deploying it: the Docker daemon does not answer",
    )
    assert agent.deployments == {}
    assert agent.status.deployment_failures == 0
    agent.stop(cold=True)
    running.join()


def test_a_deploy_that_fails_because_the_platform_went_away_releases_the_run(
    api: FakeApi, flaky_agent: MakeFlaky, run_in_thread: RunInThread
) -> None:
    holder: dict[str, FlakyPlatformAgent] = {}

    def platform_lost(claimed: ClaimedRun) -> str:
        holder["agent"].problem = "the Docker daemon does not answer"
        return "connection refused"

    run_id = api.add_run()
    agent = flaky_agent(deploy_error=platform_lost)
    holder["agent"] = agent
    running = run_in_thread(agent)

    api.wait_for(lambda: api.state(run_id) == "Scheduled" and len(api.runs[run_id].history) >= 3)
    assert "without deploying it" in (api.last_state(run_id)[1] or "")
    agent.stop(cold=True)
    running.join()


def test_a_deploy_error_with_the_platform_fine_still_fails_the_run(
    api: FakeApi, flaky_agent: MakeFlaky, run_in_thread: RunInThread
) -> None:
    run_id = api.add_run()
    agent = flaky_agent(deploy_error=lambda claimed: "image x is not present locally")
    running = run_in_thread(agent)

    api.wait_for_state(run_id, "Failed")
    assert api.last_state(run_id)[1] == "image x is not present locally"
    agent.stop(cold=True)
    running.join()


def test_the_message_of_an_ended_deployment_goes_into_the_heartbeat(
    api: FakeApi, flaky_agent: MakeFlaky, run_in_thread: RunInThread
) -> None:
    run_id = api.add_run()
    agent = flaky_agent()
    agent.end_message = "container c was OOM-killed; last log lines:\nallocating"
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Submitted")

    agent.finish(run_id, exit_code=137)

    api.wait_for_state(run_id, "Failed")
    ended = {"flow_run_id": run_id, "alive": False, "exit_code": 137, "message": agent.end_message}
    assert any(item == ended for heartbeat in api.heartbeats for item in heartbeat)
    agent.stop()
    running.join()


def test_an_unknown_exit_code_is_reported_as_none(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    class VanishingAgent(InMemoryAgent):
        async def inspect(self, deployment: Deployment) -> int | Ended | None:
            fake = deployment.handle
            return None if fake.exit_code is None else Ended(None, "the container was removed")

    run_id = api.add_run()
    agent = make_agent(VanishingAgent)
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Submitted")

    agent.finish(run_id, exit_code=1)

    api.wait_for_state(run_id, "Failed")
    ended = {"flow_run_id": run_id, "alive": False, "exit_code": None, "message": "the container was removed"}
    assert any(item == ended for heartbeat in api.heartbeats for item in heartbeat)
    agent.stop()
    running.join()

"""Flow-run timeouts: the rule (the shorter limit, counted from the deployment's start) and the agent enforcing it
through its driver's kill, on an injected clock: no test waits out a timeout. Against the real API server in
process: the flow's ``timeout_seconds`` comes from its registration, through the claim."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from baton.agent.driver import Deployment
from baton.agent.runs import ActiveRun, Phase
from baton.agent.testing import InMemoryAgent
from baton.agent.timeouts import effective_timeout, overdue

from .app_api import AppApi
from .conftest import AgentThread

MakeAgent = Callable[..., InMemoryAgent]
RunInThread = Callable[[InMemoryAgent], AgentThread]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("flow_timeout", "agent_timeout", "limit"),
    [(None, None, None), (60, None, 60), (None, 30, 30), (60, 30, 30), (10, 30, 10)],
)
def test_the_limit_is_the_shorter_of_the_flows_and_the_agents(
    flow_timeout: int | None, agent_timeout: int | None, limit: int | None
) -> None:
    assert effective_timeout(flow_timeout, agent_timeout) == limit


def add_run(app_api: AppApi, flow_timeout: int | None) -> str:
    """A run of a flow registered with ``@flow(timeout_seconds=flow_timeout)``."""
    return app_api.add_run(flow={"timeout_seconds": flow_timeout})


def _deployed_run(app_api: AppApi, **fields: Any) -> ActiveRun:
    add_run(app_api, flow_timeout=None)
    agent_id = app_api.register_agent("timeouts", "memory", []).id
    [claimed] = app_api.claim(agent_id).runs
    run = ActiveRun(claimed)
    run.deployed(Deployment("PID: 1"), at=100.0)
    run.confirm_submitted()
    for name, value in {"timeout_seconds": 5, **fields}.items():
        setattr(run, name, value)
    return run


def test_a_run_is_overdue_once_it_has_run_its_limit_from_its_deployment(app_api: AppApi) -> None:
    run = _deployed_run(app_api)
    assert overdue(run, now=104.9) is None
    assert overdue(run, now=105.0) == 5


@pytest.mark.parametrize(
    "fields",
    [
        {"timeout_seconds": None},  # no limit
        {"submitted": False},  # its Submitted is not confirmed yet: the launch task owns its state
        {"phase": Phase.KILLING},  # being stopped already (a cancel, a previous tick)
        {"phase": Phase.ENDED},
    ],
)
def test_a_run_without_limit_or_not_running_under_the_agent_is_never_overdue(
    app_api: AppApi, fields: dict[str, Any]
) -> None:
    assert overdue(_deployed_run(app_api, **fields), now=10_000.0) is None


def test_the_agent_kills_a_run_past_its_flows_timeout_and_fails_it(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given a flow with timeout_seconds=30 and an agent with a longer --run-timeout, on a clock the test moves
    clock = FakeClock()
    run_id = add_run(app_api, flow_timeout=30)
    agent = make_app_agent(run_timeout_seconds=3600)
    agent.clock = clock
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")
    [deployment] = agent.wait_for_deployments(1)

    # When just under the limit has passed, nothing happens; when the limit has, the run is killed
    clock.now += 29
    agent.deployments_changed()
    clock.now += 1
    agent.deployments_changed()

    # Then the driver's kill stopped the deployment and the run is Failed "timed out after 30 s"
    app_api.wait_for_state(run_id, "Failed")
    assert app_api.last_state(run_id)[1] == "timed out after 30 s"
    agent.wait_for(lambda: deployment.killed)
    agent.stop()
    running.join()


def test_the_agents_run_timeout_applies_when_shorter(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    clock = FakeClock()
    run_id = add_run(app_api, flow_timeout=3600)
    agent = make_app_agent(run_timeout_seconds=7)
    agent.clock = clock
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    clock.now += 7
    agent.deployments_changed()

    app_api.wait_for_state(run_id, "Failed")
    assert app_api.last_state(run_id)[1] == "timed out after 7 s"
    agent.stop()
    running.join()


def test_a_run_that_ends_within_its_limit_is_left_alone(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    clock = FakeClock()
    run_id = add_run(app_api, flow_timeout=30)
    agent = make_app_agent()
    agent.clock = clock
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")
    [deployment] = agent.wait_for_deployments(1)

    # It ends after 10 s; later the clock passes the limit
    clock.now += 10
    agent.finish(run_id, exit_code=0)
    agent.wait_for(lambda: run_id not in agent.registry or agent.registry.get(run_id).phase is Phase.ENDED)
    clock.now += 100
    agent.deployments_changed()
    agent.stop()
    running.join()

    assert not deployment.killed
    assert "timed out" not in (app_api.last_state(run_id)[1] or "")

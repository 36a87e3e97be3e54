"""Issue 9: an agent deregisters at the end of a warm stop (after releasing its claims and seeing its deployments
end), and only then: not on a cold stop, nor after --max-polls. A server that cannot be reached does not change the
exit. (A real local agent process against a real server: tests/cli/test_cli_operations.py.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from baton.agent.testing import InMemoryAgent
from baton.exceptions import ServerUnavailableError
from baton.settings import BatonSettings

from .conftest import AgentThread
from .fake_api import FakeApi

MakeAgent = Callable[..., InMemoryAgent]
RunInThread = Callable[[InMemoryAgent], AgentThread]


def deregistrations(api: FakeApi) -> list[Any]:
    return [args for method, args in api.calls if method == "deregister_agent"]


def test_a_warm_stop_deregisters_after_the_deployments_end(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    # Given an agent with a deployed run
    run_id = api.add_run()
    agent = make_agent()
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Submitted")

    # When it is stopped warmly, it waits for the run and has not deregistered yet
    agent.stop()
    api.wait_for(lambda: any(method == "agent_heartbeat" for method, _ in api.calls[-3:]))
    assert deregistrations(api) == []

    # Then once the run ends, it deregisters, and leaves
    agent.finish(run_id, exit_code=0)
    running.join()
    assert deregistrations(api) == [agent.agent_id]
    assert api.agents[agent.agent_id or ""]["deregistered"] is True
    last_heartbeat = max(i for i, (method, _) in enumerate(api.calls) if method == "agent_heartbeat")
    assert api.calls.index(("deregister_agent", agent.agent_id)) > last_heartbeat


def test_a_cold_stop_does_not_deregister(api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread) -> None:
    run_id = api.add_run()
    agent = make_agent()
    running = run_in_thread(agent)
    api.wait_for_state(run_id, "Submitted")

    agent.stop(cold=True)
    running.join()

    assert api.state(run_id) == "Failed"
    assert deregistrations(api) == []


def test_max_polls_does_not_deregister(api: FakeApi, make_agent: MakeAgent, settings: BatonSettings) -> None:
    settings.agent.max_polls = 1
    make_agent().start()

    assert any(method == "claim" for method, _ in api.calls)
    assert deregistrations(api) == []


def test_a_failed_deregistration_is_a_warning_not_an_error(
    api: FakeApi, make_agent: MakeAgent, run_in_thread: RunInThread, caplog: pytest.LogCaptureFixture
) -> None:
    api.fail_next("deregister_agent", ServerUnavailableError("cannot reach the API"))
    agent = make_agent()
    running = run_in_thread(agent)
    api.wait_for(lambda: len(api.claims) >= 1)

    agent.stop()
    running.join()  # re-raises whatever the agent raised: nothing

    assert deregistrations(api) == [agent.agent_id]
    assert "could not deregister agent" in caplog.text

"""Issue 9: an agent deregisters at the end of a warm stop (after releasing its claims and seeing its deployments
end), and only then: not on a cold stop, nor after --max-polls. A server that cannot be reached does not change the
exit. The in-memory agent against the real API server in process; a real local agent process against a real server:
tests/cli/test_cli_operations.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from baton.agent.testing import InMemoryAgent
from baton.exceptions import ServerUnavailableError
from baton.settings import BatonSettings

from .app_api import AppApi
from .conftest import AgentThread

MakeAgent = Callable[..., InMemoryAgent]
RunInThread = Callable[[InMemoryAgent], AgentThread]


def deregistrations(app_api: AppApi) -> list[Any]:
    return [args for method, args in app_api.calls if method == "deregister_agent"]


def test_a_warm_stop_deregisters_after_the_deployments_end(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread, caplog: pytest.LogCaptureFixture
) -> None:
    # Given an agent with a deployed run
    run_id = app_api.add_run()
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    # When it is stopped warmly, it waits for the run and has not deregistered yet
    agent.stop()
    app_api.wait_for(lambda: any(method == "agent_heartbeat" for method, _ in app_api.calls[-3:]))
    assert deregistrations(app_api) == []

    # Then once the run ends, it deregisters, and leaves
    agent.finish(run_id, exit_code=0)
    running.join()
    assert deregistrations(app_api) == [agent.agent_id]
    reported_end = max(
        index
        for index, (method, report) in enumerate(app_api.calls)
        if method == "agent_heartbeat"
        and {"flow_run_id": run_id, "alive": False, "exit_code": 0, "attempt": 1} in report
    )
    assert app_api.calls.index(("deregister_agent", agent.agent_id)) > reported_end
    # The server took the deregistration (it refuses one, 409, while the agent holds runs): the run had ended there
    assert "could not deregister" not in caplog.text
    assert app_api.state(run_id) == "Failed"  # it ended without reporting a final state
    assert app_api.agent(agent.agent_id).current_runs == []
    # Not asserted: that the server still lists the agent deregistered afterwards. A heartbeat the agent sent just
    # before it cancelled its loops can reach the server after the deregistration, and as a sign of life it undoes
    # it (a bug of the agent, reported with this port): the agent is then listed live until it goes stale.


def test_a_cold_stop_does_not_deregister(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    agent.stop(cold=True)
    running.join()

    assert app_api.state(run_id) == "Failed"
    assert deregistrations(app_api) == []


def test_max_polls_does_not_deregister(app_api: AppApi, make_app_agent: MakeAgent, settings: BatonSettings) -> None:
    settings.agent.max_polls = 1
    make_app_agent().start()

    assert any(method == "claim" for method, _ in app_api.calls)
    assert deregistrations(app_api) == []


def test_a_failed_deregistration_is_a_warning_not_an_error(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread, caplog: pytest.LogCaptureFixture
) -> None:
    app_api.fail_next("deregister_agent", ServerUnavailableError("cannot reach the API"))
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for(lambda: len(app_api.claims) >= 1)

    agent.stop()
    running.join()  # re-raises whatever the agent raised: nothing

    assert deregistrations(app_api) == [agent.agent_id]
    assert "could not deregister agent" in caplog.text

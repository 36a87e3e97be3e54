"""Lines a driver has for its runs' logs (``platform_logs.py``), shipped by the agent to the real API server."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from baton.agent.testing import InMemoryAgent

from .app_api import AppApi
from .conftest import AgentThread

MakeAgent = Callable[..., InMemoryAgent]
RunInThread = Callable[[InMemoryAgent], AgentThread]


def line(key: str, message: str, level: int = 20) -> dict[str, Any]:
    return {
        "key": key,
        "timestamp": datetime.now(UTC).isoformat(),
        "level": level,
        "name": "kubernetes",
        "message": message,
    }


def test_platform_lines_reach_the_runs_logs_once_and_a_refused_run_is_not_fatal(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent()
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    # Lines for a run the agent's key may not write (unknown here), then the run's own, one of them twice
    agent.run_logs(str(uuid.uuid4()), [line("k-0", "not ours")])
    agent.run_logs(run_id, [line("k-1", "pod p: Scheduled: assigned"), line("k-2", "pod p: BackOff: again", 30)])
    agent.run_logs(run_id, [line("k-2", "pod p: BackOff: again", 30)])

    def stored() -> list[tuple[str, int]]:
        return [(entry.message, entry.level) for entry in app_api.admin.get_logs(run_id).logs]

    app_api.wait_for(lambda: len(stored()) >= 2)
    agent.wait_for(lambda: agent.platform_logs.pending() == 0)
    assert stored() == [("pod p: Scheduled: assigned", 20), ("pod p: BackOff: again", 30)]
    assert running.alive
    agent.stop()
    agent.finish(run_id)
    running.join()


def test_no_cloud_logs_sends_no_platform_lines(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    run_id = app_api.add_run()
    agent = make_app_agent(no_cloud_logs=True)
    running = run_in_thread(agent)
    app_api.wait_for_state(run_id, "Submitted")

    agent.run_logs(run_id, [line("k-1", "pod p: Scheduled: assigned")])

    assert agent.platform_logs.pending() == 0 and agent.platform_logs.sent == 0
    assert not any(method == "write_logs" for method, _ in app_api.calls)
    agent.stop()
    agent.finish(run_id)
    running.join()

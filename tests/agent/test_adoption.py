"""A restarted agent adopts the deployments its name left running (``adoption.py``), on the real API server in
process: the in-memory driver's ``survivors_of`` plays a platform that outlives the agent process."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from sqlalchemy import update

from baton.agent.testing import InMemoryAgent, InMemoryDriver
from baton.exceptions import PermissionDeniedError
from baton.server.database.connection import transaction
from baton.server.database.orm import FlowRun

from .app_api import AppApi
from .conftest import AgentThread

MakeAgent = Callable[..., InMemoryAgent]
RunInThread = Callable[[InMemoryAgent], AgentThread]


def left_running(app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread, count: int) -> InMemoryAgent:
    """An agent that deployed ``count`` runs and left them running (``--max-polls``, as after a crash)."""
    first = make_app_agent(max_polls=1, limit=count)
    run_ids = [app_api.add_run() for _ in range(count)]
    running = run_in_thread(first)
    for run_id in run_ids:
        app_api.wait_for_state(run_id, "Submitted")
    running.join(30)
    assert all(fake.detached and fake.alive for fake in first.history)
    return first


def test_a_restarted_agent_adopts_the_run_it_left_and_reports_its_end(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    first = left_running(app_api, make_app_agent, run_in_thread, 1)
    [fake] = first.history

    # When an agent process of the same name starts on the same platform
    second = make_app_agent(driver=InMemoryDriver(survivors_of=first.driver), limit=1)
    running = run_in_thread(second)

    # Then it holds the run (a slot of its --limit) and vouches for it in its heartbeats
    second.wait_for(lambda: fake.flow_run_id in second.registry)
    assert second.registry.free_slots() == 0
    alive = {"flow_run_id": fake.flow_run_id, "alive": True, "exit_code": None, "attempt": 1}
    app_api.wait_for(lambda: any(alive in beat for beat in app_api.heartbeats))
    # And when the deployment ends, it reports the exit code: the server fails the run with it
    second.finish(fake.flow_run_id, exit_code=3)
    app_api.wait_for_state(fake.flow_run_id, "Failed")
    assert app_api.run(fake.flow_run_id).state_message == "process exited with code 3 before reporting a final state"
    second.stop()
    running.join()


def test_a_restarted_agent_cancels_an_adopted_run_by_stopping_its_deployment(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    first = left_running(app_api, make_app_agent, run_in_thread, 1)
    [fake] = first.history
    second = make_app_agent(driver=InMemoryDriver(survivors_of=first.driver))
    running = run_in_thread(second)
    second.wait_for(lambda: fake.flow_run_id in second.registry)

    app_api.cancel(fake.flow_run_id)

    app_api.wait_for_state(fake.flow_run_id, "Cancelled")
    assert fake.killed
    assert "stopped its deployment" in (app_api.run(fake.flow_run_id).state_message or "")
    second.stop()
    running.join()


def test_what_is_no_longer_the_agents_is_killed_and_what_it_cannot_judge_is_left_alone(
    app_api: AppApi, make_app_agent: MakeAgent, run_in_thread: RunInThread
) -> None:
    first = left_running(app_api, make_app_agent, run_in_thread, 5)
    ended, foreign, unknown, unreadable, others = first.history
    # One run ended meanwhile (an operator failed it); one deployment is another tenant's agent's of the same name;
    # one names a run the server does not know; one run cannot be read (the API refuses); one run is held by
    # another agent of the same name (other labels: another agent id) with this very deployment
    app_api.admin.set_flow_run_state(ended.flow_run_id, "Failed", "failed by hand")
    foreign.env["BATON_TENANT_ID"] = str(uuid.uuid4())
    unknown.claimed.flow_run.id = str(uuid.uuid4())
    other_agent = app_api.register_agent(first.name, "memory", ["other-labels"])
    with transaction(app_api.server.session_factory) as session:
        session.execute(update(FlowRun).where(FlowRun.id == others.flow_run_id).values(agent_id=other_agent.id))
    second = make_app_agent(driver=InMemoryDriver(survivors_of=first.driver))
    # Runs are read in the order the platform lists them, the foreign one not at all: refuse the third read
    app_api.fail_next("get_flow_run", None, None, PermissionDeniedError(403, "not for you"))
    running = run_in_thread(second)
    second.wait_for(lambda: ended.killed)
    app_api.wait_for(lambda: sum(method == "get_flow_run" for method, _ in app_api.calls) >= 4)

    assert ended.killed and app_api.state(ended.flow_run_id) == "Failed"
    assert not foreign.killed and foreign.alive
    assert not unknown.killed
    assert not unreadable.killed and unreadable.alive
    assert not others.killed and others.alive
    assert len(second.registry) == 0  # nothing adopted: the slots are free for new claims
    second.stop()
    running.join()

"""Claims through the API: the label rule, exactly-once under concurrency, long polls, start times, prefetch."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from baton.client import Client
from baton.schemas.responses import AgentRead, ClaimResponse, FlowRead
from server.harness import TenantContext

# --- the label rule, through the claim endpoint ---------------------------------------------------------


@pytest.mark.parametrize(
    ("run_labels", "agent_labels", "claimed"),
    [
        pytest.param([], [], True, id="unlabelled-run-unlabelled-agent"),
        pytest.param([], ["dev"], False, id="unlabelled-run-labelled-agent"),
        pytest.param(["dev"], [], False, id="labelled-run-unlabelled-agent"),
        pytest.param(["dev"], ["dev", "staging"], True, id="subset"),
        pytest.param(["dev", "gpu"], ["dev"], False, id="superset"),
        pytest.param(["staging", "dev"], ["dev", "staging"], True, id="equal"),
        pytest.param(["prod"], ["dev"], False, id="disjoint"),
    ],
)
def test_claim_follows_the_label_rule(
    runner: Client, user: Client, flow: FlowRead, run_labels: list[str], agent_labels: list[str], claimed: bool
) -> None:
    run = user.create_flow_run(flow_name="hello", labels=run_labels)
    agent = runner.register_agent("agent", "local", agent_labels)

    result = runner.claim(agent.id, limit=10)

    assert [c.flow_run.id for c in result.runs] == ([run.id] if claimed else [])


def test_each_agent_claims_only_runs_its_labels_allow(runner: Client, user: Client, flow: FlowRead) -> None:
    # Given runs with no labels, [dev] and [dev, gpu]
    bare = user.create_flow_run(flow_name="hello").id
    dev = user.create_flow_run(flow_name="hello", labels=["dev"]).id
    dev_gpu = user.create_flow_run(flow_name="hello", labels=["dev", "gpu"]).id
    gpu_agent = runner.register_agent("big", "local", ["dev", "gpu", "linux"])
    dev_agent = runner.register_agent("small", "local", ["dev"])
    bare_agent = runner.register_agent("bare", "local", [])

    # When each agent claims everything it may, the biggest first
    big = {c.flow_run.id for c in runner.claim(gpu_agent.id, limit=10).runs}
    small = {c.flow_run.id for c in runner.claim(dev_agent.id, limit=10).runs}
    plain = {c.flow_run.id for c in runner.claim(bare_agent.id, limit=10).runs}

    # Then
    assert (big, small, plain) == ({dev, dev_gpu}, set(), {bare})


def test_run_labels_come_from_the_flow_when_not_given(tenant: TenantContext, runner: Client, user: Client) -> None:
    tenant.register_flow("routed", labels=["team-a"])
    run = user.create_flow_run(flow_name="routed")
    wrong = runner.register_agent("wrong", "local", ["team-b"])
    right = runner.register_agent("right", "local", ["team-a", "team-b"])

    assert runner.claim(wrong.id).runs == []
    assert [c.flow_run.id for c in runner.claim(right.id).runs] == [run.id]


# --- exactly once ----------------------------------------------------------------------------------------


def test_each_run_is_claimed_exactly_once_by_four_agents_polling_at_once(
    tenant: TenantContext, user: Client, flow: FlowRead
) -> None:
    # Given four agents, each registered with a runner key of its own, and 40 runs already waiting (a larger
    # count is `bench/chaos.py`'s work; 80 claims of up to 3 already interleave the four agents' transactions)
    total = 80
    agents: list[tuple[Client, AgentRead]] = []
    for i in range(4):
        client = tenant.client(tenant.new_key("runner"))
        agents.append((client, client.register_agent(f"agent-{i}", "local", [])))
    created = [user.create_flow_run(flow_name="hello").id for _ in range(total // 2)]
    claims: dict[str, list[str]] = {agent.id: [] for _, agent in agents}
    errors: list[BaseException] = []
    lock = threading.Lock()
    all_claimed = threading.Event()
    start = threading.Barrier(len(agents) + 1)
    deadline = time.monotonic() + 60

    def poll(client: Client, agent: AgentRead) -> None:
        start.wait()
        try:
            while not all_claimed.is_set() and time.monotonic() < deadline:
                result = client.claim(agent.id, limit=3, wait_seconds=1)
                with lock:
                    claims[agent.id].extend(c.flow_run.id for c in result.runs)
                    if sum(len(ids) for ids in claims.values()) >= total:
                        all_claimed.set()
        except BaseException as exc:
            errors.append(exc)
            raise

    # When they all long-poll at once while 40 more runs arrive
    with ThreadPoolExecutor(len(agents)) as pool:
        futures = [pool.submit(poll, client, agent) for client, agent in agents]
        start.wait()
        created += [user.create_flow_run(flow_name="hello").id for _ in range(total // 2)]
        all_claimed.wait(timeout=60)
        for future in futures:
            future.result(timeout=30)

    # Then every run was claimed exactly once: none twice, none lost
    assert errors == []
    assert sum(1 for ids in claims.values() if ids) >= 2, f"no race happened: {claims}"
    claimed_ids = [run_id for ids in claims.values() for run_id in ids]
    assert len(claimed_ids) == total
    assert sorted(claimed_ids) == sorted(created)
    # And the server agrees on who has what, with one Pending per run
    owner = {run_id: agent_id for agent_id, ids in claims.items() for run_id in ids}
    runs = user.list_flow_runs(limit=1000, include=["states"])
    assert len(runs) == total
    for run in runs:
        assert run.state == "Pending"
        assert run.agent_id == owner[run.id]
        assert [s.name for s in run.states] == ["Scheduled", "Pending"]


# --- long polls ------------------------------------------------------------------------------------------


def test_waiting_claim_returns_a_run_created_while_it_waits(
    runner: Client, agent: AgentRead, user: Client, flow: FlowRead
) -> None:
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(runner.claim, agent.id, 1, 20.0)
        time.sleep(0.5)
        assert not waiting.done(), "the claim answered before any run existed instead of waiting"

        run = user.create_flow_run(flow_name="hello")
        result: ClaimResponse = waiting.result(timeout=30)
        elapsed = time.monotonic() - started

    assert [c.flow_run.id for c in result.runs] == [run.id]
    assert elapsed < 10, f"the claim returned after {elapsed:.1f}s: it timed out instead of being woken"


def test_waiting_claim_returns_a_run_given_back_by_another_agent(
    runner: Client, agent: AgentRead, user: Client, flow: FlowRead
) -> None:
    # Given a run claimed by agent-2, and agent-1 waiting for work
    run = user.create_flow_run(flow_name="hello")
    holder = runner.register_agent("agent-2", "local", [])
    TenantContext.claim_one(runner, holder.id, run.id)
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(runner.claim, agent.id, 1, 20.0)
        time.sleep(0.3)

        # When agent-2 releases it
        runner.set_flow_run_state(run.id, "Scheduled", "released")
        result: ClaimResponse = waiting.result(timeout=30)
        elapsed = time.monotonic() - started

    # Then the waiting agent gets it at once
    assert [c.flow_run.id for c in result.runs] == [run.id]
    assert result.runs[0].flow_run.agent_id == agent.id
    assert elapsed < 10


def test_empty_claim_returns_nothing_after_wait_seconds(
    runner: Client, agent: AgentRead, user: Client, flow: FlowRead
) -> None:
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        waiting = pool.submit(runner.claim, agent.id, 1, 1.5)
        time.sleep(0.3)
        # A run this agent may not take wakes the claim, which must then go on waiting
        user.create_flow_run(flow_name="hello", labels=["elsewhere"])
        result: ClaimResponse = waiting.result(timeout=30)
        elapsed = time.monotonic() - started

    assert result.runs == []
    assert elapsed >= 1.4, f"the claim gave up after {elapsed:.2f}s instead of waiting 1.5s"


def test_claim_without_wait_answers_at_once_with_nothing(runner: Client, agent: AgentRead) -> None:
    assert runner.claim(agent.id, wait_seconds=0).runs == []


# --- start times ------------------------------------------------------------------------------------------


def test_run_scheduled_in_the_future_is_claimed_once_due(
    tenant: TenantContext, runner: Client, agent: AgentRead, user: Client, flow: FlowRead
) -> None:
    # Given a run due 1.5 s from now
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    run = user.create_flow_run(flow_name="hello", scheduled_start_time=due)

    # Then a short claim does not get it before its time
    assert runner.claim(agent.id, wait_seconds=0.5).runs == []
    assert tenant.run(run.id).state == "Scheduled"

    # And a waiting claim gets it once it is due, well before the claim's own deadline
    started = time.monotonic()
    result = runner.claim(agent.id, wait_seconds=20)
    elapsed = time.monotonic() - started

    assert [c.flow_run.id for c in result.runs] == [run.id]
    pending = tenant.run(run.id).states[-1]
    assert pending.name == "Pending"
    assert pending.timestamp >= due
    assert elapsed < 10


def test_prefetch_claims_a_run_before_it_is_due(
    tenant: TenantContext, runner: Client, agent: AgentRead, user: Client, flow: FlowRead
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=60)
    run = user.create_flow_run(flow_name="hello", scheduled_start_time=due)

    too_short = runner.claim(agent.id, prefetch_seconds=30)
    early = runner.claim(agent.id, prefetch_seconds=120)

    assert too_short.runs == []
    assert [c.flow_run.id for c in early.runs] == [run.id]
    pending = tenant.run(run.id).states[-1]
    assert pending.name == "Pending"
    assert pending.timestamp < due


def test_cancelled_run_is_never_claimed(runner: Client, agent: AgentRead, user: Client, flow: FlowRead) -> None:
    run = user.create_flow_run(flow_name="hello")
    user.cancel_flow_run(run.id)

    assert runner.claim(agent.id, limit=10).runs == []

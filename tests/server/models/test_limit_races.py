"""Concurrency limits under racing claims: many agents claim at the same moment, each in its own transaction and
database connection, and a limit is never exceeded (PostgreSQL: advisory locks per limit; SQLite: one writer)."""

from __future__ import annotations

import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.schemas.states import StateName
from baton.server.database.connection import create_database_engine, create_session_factory, transaction
from baton.server.database.orm import Flow, FlowRun, FlowRunLabel
from baton.server.models import agents, claims, state_changes
from baton.server.models.concurrency import SLOT_STATES
from server.harness import TenantContext, unique
from support import ServerProcess

THREADS = 8
_HELD = [state.value for state in SLOT_STATES]


@pytest.fixture
def sessions(api_server: ServerProcess) -> Iterator[sessionmaker[Session]]:
    """A pool with a connection for every racing thread (and the checker)."""
    engine = create_database_engine(api_server.database_url, THREADS + 2)
    yield create_session_factory(engine)
    engine.dispose()


def _race(factory: sessionmaker[Session], tenant_id: str, agent_ids: list[str], limit: int) -> list[str]:
    """Every agent claims at once (a barrier lines them up); returns the ids claimed, all agents together."""
    barrier = threading.Barrier(len(agent_ids))

    def claim(agent_id: str) -> list[str]:
        barrier.wait()
        with transaction(factory) as session:
            agent = agents.get_agent(session, tenant_id, agent_id)
            agents.touch(session, agent)  # as the claim route does: on SQLite this takes the write lock
            result = claims.claim_runs(session, agent, limit, 0, 30)
            return [run.id for run, _token in result.runs]

    with ThreadPoolExecutor(len(agent_ids)) as pool:
        return [run_id for taken in pool.map(claim, agent_ids) for run_id in taken]


def _agents(runner: Client, labels: list[str], count: int = THREADS) -> list[str]:
    return [runner.register_agent(unique("racer"), "local", labels).id for _ in range(count)]


def test_racing_claims_take_exactly_the_flows_limit(
    tenant: TenantContext, user: Client, runner: Client, sessions: sessionmaker[Session]
) -> None:
    # Given a flow that allows 2 concurrent runs, 10 waiting runs and 8 agents
    name = tenant.register_flow(unique("etl"), max_concurrent_runs=2).name
    runs = [user.create_flow_run(flow_name=name).id for _ in range(10)]

    # When all 8 claim at the same moment, each for up to 3 runs
    taken = _race(sessions, tenant.id, _agents(runner, []), 3)

    # Then exactly 2 runs are claimed, once each
    assert len(taken) == 2
    assert len(set(taken)) == 2 and set(taken) <= set(runs)
    assert sorted(run.state for run in user.list_flow_runs(flow_name=name)).count("Pending") == 2


def test_racing_claims_take_exactly_the_labels_limit(
    tenant: TenantContext, user: Client, runner: Client, sessions: sessionmaker[Session]
) -> None:
    gpu = unique("gpu")
    user.set_label_limit(gpu, 1)
    tenant.register_flow()
    for _ in range(6):
        user.create_flow_run(flow_name="hello", labels=[gpu])

    taken = _race(sessions, tenant.id, _agents(runner, [gpu]), 2)

    assert len(taken) == 1


def _occupancy(session: Session, tenant_id: str) -> dict[str, int]:
    """Slots held per flow name and per label, read in one statement each (one snapshot)."""
    held = (FlowRun.tenant_id == tenant_id) & FlowRun.state.in_(_HELD)
    by_flow = session.execute(
        select(Flow.name, func.count()).join(FlowRun, FlowRun.flow_id == Flow.id).where(held).group_by(Flow.name)
    )
    by_label = session.execute(
        select(FlowRunLabel.label, func.count())
        .join(FlowRun, FlowRun.id == FlowRunLabel.flow_run_id)
        .where(held)
        .group_by(FlowRunLabel.label)
    )
    return {**{f"flow:{n}": c for n, c in by_flow}, **{f"label:{n}": c for n, c in by_label}}


def _end_some(sessions: sessionmaker[Session], tenant_id: str, agent_id: str, ending: list[bool]) -> None:
    """Fail the agent's Pending runs whose flag in ``ending`` is set (in claim order)."""
    with transaction(sessions) as session:
        # Write first, as the routes do (the agent's heartbeat touches it): on SQLite a transaction that read before
        # its first write is refused at once when another writer committed in between ("database is locked").
        agents.touch(session, agents.get_agent(session, tenant_id, agent_id))
        mine = session.scalars(select(FlowRun.id).where(FlowRun.agent_id == agent_id, FlowRun.state == "Pending")).all()
        for run_id, end in zip(mine, ending, strict=False):
            if end:
                state_changes.set_state(session, tenant_id, run_id, StateName.FAILED, "done", None)


def test_claims_over_several_limits_never_exceed_any_and_never_deadlock(
    tenant: TenantContext, user: Client, runner: Client, sessions: sessionmaker[Session]
) -> None:
    # Given two limited flows and two limited labels, and runs mixing them in every order
    x, y = unique("x"), unique("y")
    flows = {tenant.register_flow(unique("a"), max_concurrent_runs=2).name: 2}
    flows[tenant.register_flow(unique("b"), max_concurrent_runs=3).name] = 3
    labels = {x: 2, y: 3}
    for label, limit in labels.items():
        user.set_label_limit(label, limit)
    rng = random.Random(9)
    for _ in range(60):
        user.create_flow_run(flow_name=rng.choice(list(flows)), labels=rng.choice([[x], [y], [x, y]]))
    limits = {**{f"flow:{n}": v for n, v in flows.items()}, **{f"label:{n}": v for n, v in labels.items()}}
    agent_ids = _agents(runner, [x, y])
    stop = threading.Event()
    seen: list[dict[str, int]] = []

    def check() -> None:
        while not stop.is_set():
            with sessions() as session:
                seen.append(_occupancy(session, tenant.id))
            stop.wait(0.005)  # leave the database to the claimers now and then (SQLite has one writer)

    def churn(agent_id: str, seed: int) -> None:
        """Claim, then end some of what this agent holds (so slots keep freeing), many times."""
        local = random.Random(seed)
        for _round in range(10):
            with transaction(sessions) as session:
                agent = agents.get_agent(session, tenant.id, agent_id)
                agents.touch(session, agent)
                claims.claim_runs(session, agent, local.randint(1, 3), 0, 30)
            _end_some(sessions, tenant.id, agent_id, [local.random() < 0.5 for _ in range(3)])

    # When 8 agents claim and end runs concurrently while a checker reads the slots held
    checker = threading.Thread(target=check)
    checker.start()
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            done: list[Callable[[], None]] = [
                pool.submit(churn, agent_id, seed).result for seed, agent_id in enumerate(agent_ids)
            ]
            for result in done:
                result()  # re-raises a deadlock or any other error of the thread
    finally:
        stop.set()
        checker.join()

    # Then no snapshot ever showed a limit exceeded, and runs did go through the slots
    with sessions() as session:
        seen.append(_occupancy(session, tenant.id))
        ended = session.scalar(
            select(func.count()).select_from(FlowRun).where(FlowRun.tenant_id == tenant.id, FlowRun.state == "Failed")
        )
    over = [(key, count) for snapshot in seen for key, count in snapshot.items() if count > limits.get(key, count)]
    assert over == []
    assert len(seen) > 1 and (ended or 0) >= 10


def _sqlite_limited_run_and_agent(
    api_server: ServerProcess, tenant: TenantContext, user: Client, runner: Client
) -> str:
    """A run of a flow limited to one at a time, and an agent that may take it (SQLite only); the agent's id."""
    if not api_server.database_url.startswith("sqlite"):
        pytest.skip("PostgreSQL claims lock each limit instead")
    name = tenant.register_flow(unique("etl"), max_concurrent_runs=1).name
    user.create_flow_run(flow_name=name)
    [agent_id] = _agents(runner, [], count=1)
    return agent_id


def test_on_sqlite_every_transaction_holds_the_write_lock_from_its_first_read(
    api_server: ServerProcess, tenant: TenantContext, user: Client, runner: Client, sessions: sessionmaker[Session]
) -> None:
    # Two SQLite claims may both count a free slot unless each holds the single write lock while it counts
    agent_id = _sqlite_limited_run_and_agent(api_server, tenant, user, runner)
    database = api_server.database_url.removeprefix("sqlite:///")

    with transaction(sessions) as session:
        # When a transaction has only read so far
        agent = agents.get_agent(session, tenant.id, agent_id)
        # Then no other connection can begin writing meanwhile
        other = sqlite3.connect(database, timeout=0.2, isolation_level=None)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        other.close()
        # And a limited claim counts its slot under that lock and takes the run
        assert len(claims.claim_runs(session, agent, 1, 0, 30).runs) == 1


def test_a_sqlite_engine_without_immediate_transactions_may_not_count_slots(
    api_server: ServerProcess, tenant: TenantContext, user: Client, runner: Client
) -> None:
    agent_id = _sqlite_limited_run_and_agent(api_server, tenant, user, runner)
    # Given an engine that lets the driver begin deferred transactions (before its first write only)
    engine = create_engine(api_server.database_url)
    try:
        factory = create_session_factory(engine)
        with pytest.raises(RuntimeError, match="write lock"), transaction(factory) as session:
            claims.claim_runs(session, agents.get_agent(session, tenant.id, agent_id), 1, 0, 30)
    finally:
        engine.dispose()

"""Several server replicas on one PostgreSQL (and one server on SQLite): wake-ups across replicas, and every run
deployed exactly once by many agent processes.

The agents are ``python -m baton.agent.testing`` processes: real agents (same loop, same protocol, same HTTP
client) whose "deployment" acts like a successful flow run, so hundreds of runs go through in seconds. Each
agent appends one line per deployment to a record file: that is the ground truth for "deployed once".
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from baton.agent.testing import read_deployments, spawn_agent_process
from baton.client import Client
from baton.server.database.connection import create_database_engine, create_session_factory
from baton.server.database.orm import FlowRun
from server.harness import TenantContext
from support import ServerProcess, clean_env, wait_for


def _replicas(tmp_path: Path, database_url: str, count: int, **env: str) -> list[ServerProcess]:
    return [
        ServerProcess(tmp_path / f"replica-{i}", BATON__SERVER__DATABASE_URL=database_url, **env).start()
        for i in range(count)
    ]


@pytest.fixture
def pg_replicas(tmp_path: Path, postgres_cluster: Any) -> Iterator[list[ServerProcess]]:
    """Two replicas on one fresh PostgreSQL database. Their periodic re-check is made longer than any wait here,
    so a claim that returns a run early was woken by the other replica's NOTIFY, not by its own clock."""
    replicas = _replicas(tmp_path, postgres_cluster.create_database(), 2, BATON__SERVER__CLAIM_RECHECK_SECONDS="120")
    yield replicas
    for replica in replicas:
        replica.stop()


def _tenant(server: ServerProcess) -> TenantContext:
    engine = create_database_engine(server.database_url, 1)
    try:
        return TenantContext.create(server, create_session_factory(engine))
    finally:
        engine.dispose()


def test_a_claim_waiting_on_one_replica_is_woken_by_a_run_created_on_the_other(
    pg_replicas: list[ServerProcess],
) -> None:
    # Given an agent long-polling replica B, and nothing to claim yet
    first, second = pg_replicas
    tenant = _tenant(first)
    try:
        tenant.register_flow()
        runner = tenant.client(tenant.key("runner"))
        on_second = Client(second.url, tenant.key("runner"))
        agent = runner.register_agent("waiting", "local", [])
        with on_second, ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(on_second.claim, agent.id, 1, 25.0)
            time.sleep(0.5)
            assert not waiting.done(), "the claim answered before any run existed instead of waiting"
            # When a run is created through replica A
            run = tenant.client(tenant.key("user")).create_flow_run(flow_name="hello")
            # Then replica B's waiting claim answers with it (its own re-check is 120 s away; the wait is 25 s)
            claimed = waiting.result(timeout=30)
        assert [c.flow_run.id for c in claimed.runs] == [run.id]
        assert tenant.run(run.id).state == "Pending"
    finally:
        tenant.close()


def _deploy_everything(
    tmp_path: Path, servers: list[ServerProcess], agents: int, runs: int
) -> tuple[list[str], dict[str, list[str]], TenantContext]:
    """Start ``agents`` agent processes spread over ``servers``, create ``runs`` runs spread over them as well,
    wait until every run ended; return the run ids, who deployed what, and the tenant."""
    tenant = _tenant(servers[0])
    tenant.register_flow()
    key = tenant.key("runner")
    records = [str(tmp_path / f"agent-{i}.jsonl") for i in range(agents)]
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for i, record in enumerate(records):
            server = servers[i % len(servers)]
            env = clean_env(tmp_path / f"agent-home-{i}")
            processes.append(spawn_agent_process(server.url, key, f"memory-{i}", record, env=env))
        users = [tenant.client(tenant.key("user"))] + [Client(s.url, tenant.key("user")) for s in servers[1:]]
        try:
            created = [users[n % len(users)].create_flow_run(flow_name="hello").id for n in range(runs)]
        finally:
            for user in users[1:]:
                user.close()

        engine = create_database_engine(servers[0].database_url, 1)

        def all_ended() -> bool:
            # Counted in the database: listing hundreds of runs with their histories would load the server.
            with engine.connect() as connection:
                return connection.scalar(select(func.count()).where(FlowRun.state == "Success")) == runs

        try:
            wait_for(all_ended, timeout=240, interval=0.5, what=f"all {runs} runs to reach Success")
        finally:
            engine.dispose()
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)
            assert process.returncode == 0, f"an agent process exited with {process.returncode}: see its .log"
    return created, read_deployments(*records), tenant


@pytest.mark.load
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("database", "replica_count"),
    [pytest.param("sqlite", 1, id="sqlite-one-server"), pytest.param("postgresql", 2, id="postgresql-two-replicas")],
)
def test_every_run_is_deployed_exactly_once_by_many_agent_processes(
    tmp_path: Path, request: pytest.FixtureRequest, database: str, replica_count: int
) -> None:
    # Given 4 agent processes claiming from the server(s), and 160 runs created through them (the load version of
    # this, thousands of runs, is bench/chaos.py: `make chaos`)
    if database == "postgresql":
        database_url = request.getfixturevalue("postgres_cluster").create_database()
    else:
        database_url = f"sqlite:///{tmp_path / 'baton.db'}"
    servers = _replicas(tmp_path, database_url, replica_count)
    try:
        created, deployed, tenant = _deploy_everything(tmp_path, servers, agents=4, runs=160)
        try:
            # Then every run was deployed exactly once: none twice, none lost
            twice = {run_id: who for run_id, who in deployed.items() if len(who) > 1}
            assert twice == {}
            assert sorted(deployed) == sorted(created)
            # And the work was shared: more than one agent deployed runs
            assert len({who[0] for who in deployed.values()}) >= 2
            # And the server's history agrees: one claim and one Submitted per run, then Running and Success
            for run in tenant.admin.list_flow_runs(limit=1000, include=["states"]):
                assert [s.name for s in run.states] == ["Scheduled", "Pending", "Submitted", "Running", "Success"]
        finally:
            tenant.close()
    finally:
        for server in servers:
            server.stop()

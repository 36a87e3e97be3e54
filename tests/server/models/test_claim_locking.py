"""PostgreSQL claims lock what they take (FOR UPDATE SKIP LOCKED): a concurrent claimer skips those rows at once,
instead of waiting for the first transaction and then losing the race for the same run."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.schemas.responses import FlowRead
from baton.server.database.connection import transaction
from baton.server.models import agents, claims
from server.harness import TenantContext
from support import ServerProcess


def test_a_second_claimer_skips_the_run_the_first_one_holds(
    api_server: ServerProcess,
    api_database: sessionmaker[Session],
    tenant: TenantContext,
    user: Client,
    runner: Client,
    flow: FlowRead,
) -> None:
    # Given two waiting runs and two agents
    first_run = user.create_flow_run(flow_name="hello").id
    second_run = user.create_flow_run(flow_name="hello").id
    agent_ids = [runner.register_agent(f"claimer-{i}", "local", []).id for i in range(2)]
    postgresql = api_server.database_url.startswith("postgresql")

    # When the first agent's claim transaction holds the oldest run and has not committed yet
    with transaction(api_database) as holding:
        held = claims.claim_runs(holding, agents.get_agent(holding, tenant.id, agent_ids[0]), 1, 0, 30)
        assert [run.id for run, _token in held.runs] == [first_run]
        if postgresql:
            # Then a second claim, which may not wait for any lock, takes the other run
            with api_database() as other, other.begin():
                other.execute(text("SET LOCAL lock_timeout = '1s'"))
                taken = claims.claim_runs(other, agents.get_agent(other, tenant.id, agent_ids[1]), 1, 0, 30)
                assert [run.id for run, _token in taken.runs] == [second_run]

    # And in the end each run is claimed once, by the agent that took it
    owners = {run.id: run.agent_id for run in user.list_flow_runs()}
    expected = {first_run: agent_ids[0], second_run: agent_ids[1] if postgresql else None}
    assert owners == expected

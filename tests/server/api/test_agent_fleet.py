"""Issue 9, operations: the fleet view of agents (live/stale, current runs), deregistration, pruning, agent names in
run lists, stale agents in ``explain``, and revoked keys locking their agents out at once."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.exceptions import AuthenticationError, ClientError, ConflictError, NotFoundError, PermissionDeniedError
from baton.schemas.responses import AgentRead, ClaimResponse
from baton.server.database.connection import transaction
from baton.server.database.orm import Agent, utcnow
from security.access_support import key_id_of
from server.harness import TenantContext, unique
from support import wait_for

STALE = 90.0  # the shared server's BATON__SERVER__AGENT_STALE_SECONDS (the default)


def age(factory: sessionmaker[Session], agent_id: str, seconds: float) -> None:
    """Make ``agent_id`` last seen ``seconds`` ago."""
    with transaction(factory) as session:
        session.execute(
            update(Agent).where(Agent.id == agent_id).values(last_seen=utcnow() - timedelta(seconds=seconds))
        )


def listed(client: Client, agent_id: str) -> AgentRead:
    return next(agent for agent in client.list_agents() if agent.id == agent_id)


# --- the list ------------------------------------------------------------------------------------------------


def test_the_list_shows_each_agent_live_or_stale_with_its_current_runs(
    tenant: TenantContext, api_database: sessionmaker[Session], reader: Client
) -> None:
    # Given an agent holding a Running run, and an idle one unseen for longer than the stale time
    busy = tenant.stage("Running")
    assert busy.agent_id is not None
    idle = tenant.client(tenant.key("runner")).register_agent(unique("idle"), "local", [])
    age(api_database, idle.id, STALE + 30)

    # When a read key lists the agents
    busy_read, idle_read = listed(reader, busy.agent_id), listed(reader, idle.id)

    # Then
    assert (busy_read.live, busy_read.stale, busy_read.current_run_count, busy_read.current_runs) == (
        True,
        False,
        1,
        [busy.id],
    )
    assert (idle_read.live, idle_read.stale, idle_read.current_run_count, idle_read.current_runs) == (
        False,
        True,
        0,
        [],
    )


def test_ended_runs_are_not_current(tenant: TenantContext) -> None:
    done = tenant.stage("Success")
    assert done.agent_id is not None

    assert listed(tenant.admin, done.agent_id).current_runs == []


def test_runs_name_their_agent(tenant: TenantContext, user: Client) -> None:
    staged = tenant.stage("Running")
    agent = listed(tenant.admin, staged.agent_id or "")

    from_list = next(run for run in user.list_flow_runs() if run.id == staged.id)

    assert (from_list.agent_id, from_list.agent_name) == (agent.id, agent.name)
    assert user.get_flow_run(staged.id).agent_name == agent.name
    waiting = user.create_flow_run(flow_name="hello")
    assert (user.get_flow_run(waiting.id).agent_id, user.get_flow_run(waiting.id).agent_name) == (None, None)


# --- deregistration --------------------------------------------------------------------------------------------


def test_a_deregistered_agent_is_stale_until_it_shows_life_again(tenant: TenantContext, runner: Client) -> None:
    # Given an idle agent that deregisters (its warm stop)
    name = unique("agent")
    agent = runner.register_agent(name, "local", ["dev"])
    gone = runner.deregister_agent(agent.id)

    # Then it is listed, stale, with the time it left
    assert (gone.live, gone.stale) == (False, True)
    assert gone.deregistered_at is not None
    assert listed(runner, agent.id).deregistered_at is not None

    # When it starts again under the same identity, it is the same agent, live
    again = runner.register_agent(name, "local", ["dev"])
    assert again.id == agent.id
    assert (listed(runner, agent.id).live, listed(runner, agent.id).deregistered_at) == (True, None)


def test_a_heartbeat_revives_a_deregistered_agent(runner: Client) -> None:
    agent = runner.register_agent(unique("agent"), "local", [])
    runner.deregister_agent(agent.id)

    runner.agent_heartbeat(agent.id, [])

    assert listed(runner, agent.id).live is True


def test_deregistering_ends_the_agents_waiting_poll_which_claims_nothing(tenant: TenantContext, runner: Client) -> None:
    # Given an idle agent whose long poll (60 s asked, the server's 30 s cap) is waiting, as at its warm stop
    label = unique("quiet")
    agent = runner.register_agent(unique("agent"), "local", [label])
    registered_seen = listed(runner, agent.id).last_seen
    answers: list[ClaimResponse] = []
    with Client(tenant.server.url, tenant.key("runner"), timeout=90) as polling:
        poll = threading.Thread(target=lambda: answers.append(polling.claim(agent.id, limit=1, wait_seconds=60)))
        poll.start()
        # (its first attempt has touched the agent: the call is past its start)
        wait_for(lambda: listed(runner, agent.id).last_seen != registered_seen, what="the poll's first attempt")

        # When the agent deregisters
        runner.deregister_agent(agent.id)

        # Then the poll answers long before its 60 s, with no run, and leaves the agent deregistered
        poll.join(timeout=30)
        assert not poll.is_alive(), "the waiting poll of a deregistered agent did not end"
    assert [answer.runs for answer in answers] == [[]]
    assert listed(runner, agent.id).deregistered_at is not None


def test_a_claim_still_on_its_way_when_its_process_deregistered_claims_nothing(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    # Given an agent process whose warm stop deregistered it while its next claim was still on its way (the claim
    # reaches the server after the deregistration committed), and a run it could take
    label = unique("etl")
    tenant.register_flow("hello")
    agent = runner.register_agent(unique("agent"), "local", [label])
    runner.deregister_agent(agent.id, instance="process-1")
    run = user.create_flow_run(flow_name="hello", labels=[label])

    # When that claim arrives, naming the process
    answer = runner.claim(agent.id, limit=1, instance="process-1")

    # Then it claims nothing and the agent stays deregistered: the run waits for a live agent
    assert answer.runs == []
    assert listed(runner, agent.id).deregistered_at is not None
    assert user.get_flow_run(run.id).state == "Scheduled"

    # And the next process of the same identity (a restart) claims it, and makes the agent live again
    [claimed] = runner.claim(agent.id, limit=1, instance="process-2").runs
    assert claimed.flow_run.id == run.id
    assert (listed(runner, agent.id).live, listed(runner, agent.id).deregistered_at) == (True, None)


def test_an_earlier_process_stopping_does_not_stop_its_successors_polls(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    # Given a rolling restart: the new process of an agent polls while the old one, under the same identity, ends
    # its warm stop by deregistering
    label = unique("etl")
    tenant.register_flow("hello")
    agent = runner.register_agent(unique("agent"), "local", [label])
    registered_seen = listed(runner, agent.id).last_seen
    answers: list[ClaimResponse] = []
    with Client(tenant.server.url, tenant.key("runner"), timeout=90) as polling:
        poll = threading.Thread(
            target=lambda: answers.append(polling.claim(agent.id, limit=1, wait_seconds=20, instance="new"))
        )
        poll.start()
        wait_for(lambda: listed(runner, agent.id).last_seen != registered_seen, what="the poll's first attempt")
        runner.deregister_agent(agent.id, instance="old")
        # (the deregistration wakes the poll, whose next attempt is a sign of life of the new process)
        wait_for(lambda: listed(runner, agent.id).deregistered_at is None, what="the poll undoing the old stop")

        # When a run arrives
        run = user.create_flow_run(flow_name="hello", labels=[label])

        # Then the new process's poll, woken by the deregistration, carries on and takes it; the agent is live
        poll.join(timeout=30)
        assert not poll.is_alive()
    assert [[claimed.flow_run.id for claimed in answer.runs] for answer in answers] == [[run.id]]
    assert listed(runner, agent.id).deregistered_at is None


def test_a_heartbeat_of_the_process_that_deregistered_leaves_it_deregistered(runner: Client) -> None:
    # Given an agent whose process deregistered while a heartbeat of it was still on its way
    agent = runner.register_agent(unique("agent"), "local", [])
    runner.deregister_agent(agent.id, instance="process-1")

    # When that heartbeat arrives, naming the process, the agent stays deregistered
    assert runner.agent_heartbeat(agent.id, [], instance="process-1").cancel == []
    assert listed(runner, agent.id).deregistered_at is not None

    # And a heartbeat of the next process (a restart), or of an agent that names none, is a sign of life
    runner.agent_heartbeat(agent.id, [], instance="process-2")
    assert (listed(runner, agent.id).live, listed(runner, agent.id).deregistered_at) == (True, None)
    runner.deregister_agent(agent.id, instance="process-2")
    runner.agent_heartbeat(agent.id, [])
    assert listed(runner, agent.id).deregistered_at is None


@pytest.mark.parametrize("instance", ["", "a" * 65, "no spaces", "../x", "é"])
def test_a_malformed_process_id_is_refused(runner: Client, instance: str) -> None:
    agent = runner.register_agent(unique("agent"), "local", [])
    with pytest.raises(ClientError) as claimed:
        runner.claim(agent.id, instance=instance)
    with pytest.raises(ClientError) as beat:
        runner.agent_heartbeat(agent.id, [], instance=instance)
    with pytest.raises(ClientError) as deregistered:
        runner.deregister_agent(agent.id, instance=instance)
    assert (claimed.value.status_code, beat.value.status_code, deregistered.value.status_code) == (422, 422, 422)
    assert listed(runner, agent.id).deregistered_at is None


def test_an_agent_holding_runs_cannot_deregister(tenant: TenantContext) -> None:
    runner = tenant.client(tenant.key("runner"))
    staged = tenant.stage("Pending", runner=runner)

    with pytest.raises(ConflictError, match=r"still holds 1 run\(s\)") as excinfo:
        runner.deregister_agent(staged.agent_id or "")

    assert staged.id in excinfo.value.detail
    assert listed(runner, staged.agent_id or "").live is True


def test_only_the_key_that_registered_an_agent_may_deregister_it(
    tenant: TenantContext, other_tenant: TenantContext, runner: Client, user: Client, reader: Client
) -> None:
    agent = runner.register_agent(unique("agent"), "local", [])
    other_runner = tenant.client(tenant.new_key("runner"))

    for client in (other_runner, tenant.admin):
        with pytest.raises(PermissionDeniedError, match="registered with another key"):
            client.deregister_agent(agent.id)
    for client in (user, reader):
        with pytest.raises(PermissionDeniedError, match="may not do this"):
            client.deregister_agent(agent.id)
    with pytest.raises(NotFoundError):
        other_tenant.admin.deregister_agent(agent.id)

    assert listed(runner, agent.id).live is True


# --- pruning ----------------------------------------------------------------------------------------------------


def test_prune_deletes_stale_idle_agents_only(
    tenant: TenantContext, api_database: sessionmaker[Session], user: Client
) -> None:
    # Given a live agent, a stale idle one, a stale one still holding a run, a deregistered one, and an ended run
    runner = tenant.client(tenant.key("runner"))
    live = runner.register_agent(unique("live"), "local", [])
    stale = runner.register_agent(unique("stale"), "local", [])
    holding = tenant.stage("Running", runner=runner)
    done = tenant.stage("Success", runner=runner)
    left = runner.register_agent(unique("left"), "local", [])
    runner.deregister_agent(left.id)
    for agent_id in (stale.id, holding.agent_id or "", done.agent_id or ""):
        age(api_database, agent_id, STALE + 60)

    # When a user previews, then prunes
    preview = user.prune_agents(dry_run=True)
    pruned = user.prune_agents()

    # Then the preview deleted nothing and named the same agents the prune deleted
    expected = {stale.id, left.id, done.agent_id}
    assert {a.id for a in preview.pruned} == expected
    assert preview.dry_run is True and preview.older_than_seconds == STALE
    assert {a.id for a in pruned.pruned} == expected
    remaining = {a.id for a in user.list_agents()}
    assert live.id in remaining and holding.agent_id in remaining
    assert remaining.isdisjoint(expected)
    # and the ended run of a pruned agent keeps its history, without an agent
    run = user.get_flow_run(done.id)
    assert (run.state, run.agent_id, run.agent_name) == ("Success", None, None)
    assert [state.name for state in run.states][-1] == "Success"


def test_prune_older_than_keeps_agents_seen_since(
    tenant: TenantContext, api_database: sessionmaker[Session], user: Client, runner: Client
) -> None:
    week_old = runner.register_agent(unique("week"), "local", [])
    hour_old = runner.register_agent(unique("hour"), "local", [])
    age(api_database, week_old.id, 7 * 86400)
    age(api_database, hour_old.id, 3600)

    pruned = user.prune_agents(older_than_seconds=86400)

    assert [a.id for a in pruned.pruned] == [week_old.id]
    assert hour_old.id in {a.id for a in user.list_agents()}


def test_prune_of_named_agents_deletes_only_those_that_are_prunable(
    tenant: TenantContext, api_database: sessionmaker[Session], user: Client, runner: Client
) -> None:
    shown, not_shown, live = (runner.register_agent(unique(n), "local", []) for n in ("shown", "other", "live"))
    age(api_database, shown.id, STALE + 60)
    age(api_database, not_shown.id, STALE + 60)

    pruned = user.prune_agents(agent_ids=[shown.id, live.id, "not-an-id"])

    assert [a.id for a in pruned.pruned] == [shown.id]
    assert {not_shown.id, live.id} <= {a.id for a in user.list_agents()}


def test_prune_never_takes_live_agents(user: Client) -> None:
    with pytest.raises(ClientError, match="at least the server's agent_stale_seconds") as excinfo:
        user.prune_agents(older_than_seconds=1)
    assert excinfo.value.status_code == 422


@pytest.mark.parametrize("body", [{"older_than_seconds": -1}, {"older_than_seconds": "90"}, {"dry_run": "yes"}])
def test_prune_refuses_malformed_input(tenant: TenantContext, body: dict[str, object]) -> None:
    assert tenant.raw(tenant.key("user")).post("/api/agents/prune", json=body).status_code == 422


def test_read_and_runner_keys_cannot_prune_and_tenants_prune_their_own_agents(
    tenant: TenantContext,
    other_tenant: TenantContext,
    api_database: sessionmaker[Session],
    runner: Client,
    reader: Client,
) -> None:
    mine = runner.register_agent(unique("mine"), "local", [])
    age(api_database, mine.id, STALE + 60)

    for client in (reader, runner):
        with pytest.raises(PermissionDeniedError):
            client.prune_agents()
    assert mine.id not in {a.id for a in other_tenant.admin.prune_agents().pruned}

    assert mine.id in {a.id for a in tenant.admin.list_agents()}
    assert [a.id for a in tenant.admin.prune_agents().pruned] == [mine.id]


# --- explain -----------------------------------------------------------------------------------------------------


def test_explain_counts_stale_agents_instead_of_listing_them(
    tenant: TenantContext, api_database: sessionmaker[Session], user: Client, runner: Client
) -> None:
    # Given one live agent and three long-dead ones, all able to take the run
    tenant.register_flow("hello")
    run = user.create_flow_run(flow_name="hello", labels=["etl"])
    live = runner.register_agent(unique("live"), "local", ["etl"])
    for _ in range(3):
        dead = runner.register_agent(unique("dead"), "local", ["etl"])
        age(api_database, dead.id, 3600)

    explanation = user.explain_flow_run(run.id)

    assert [a.agent_id for a in explanation.agents] == [live.id]
    assert explanation.stale_agents == 3
    assert explanation.stale_after_seconds == STALE
    assert explanation.summary == (
        "1 live agent(s) can take it; and 3 stale agent(s) not seen for over 90 s, not listed"
    )


def test_explain_says_when_only_stale_agents_could_take_the_run(
    tenant: TenantContext, api_database: sessionmaker[Session], user: Client, runner: Client
) -> None:
    tenant.register_flow("hello")
    run = user.create_flow_run(flow_name="hello", labels=["etl"])
    dead = runner.register_agent(unique("dead"), "local", ["etl"])
    age(api_database, dead.id, 3600)
    stopped = runner.register_agent(unique("stopped"), "local", ["etl"])
    runner.deregister_agent(stopped.id)

    explanation = user.explain_flow_run(run.id)

    assert explanation.agents == []
    assert explanation.summary.startswith("no live agent can take it: 2 that could (")
    assert dead.name in explanation.summary and stopped.name in explanation.summary


# --- revoked keys --------------------------------------------------------------------------------------------------


def test_a_revoked_key_and_its_agent_are_refused_at_once(tenant: TenantContext) -> None:
    # Given an agent of a runner key that is polling and heartbeating
    key = tenant.new_key("runner")
    runner = tenant.client(key)
    agent = runner.register_agent(unique("agent"), "local", [])
    assert runner.claim(agent.id).runs == []

    # When an admin revokes the key
    tenant.admin.revoke_api_key(key_id_of(tenant, key))

    # Then the agent's very next calls are 401
    for call in (
        lambda: runner.claim(agent.id),
        lambda: runner.agent_heartbeat(agent.id, []),
        lambda: runner.deregister_agent(agent.id),
        runner.whoami,
    ):
        with pytest.raises(AuthenticationError) as excinfo:
            call()
        assert excinfo.value.status_code == 401

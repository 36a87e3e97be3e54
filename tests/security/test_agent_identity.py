"""Issue 8, item 5: an agent's identity is bound to the key that registered it.

Before, registering the same name, type and labels with a second runner key returned the first agent's id, locked
the first key out and let the second fail the first agent's runs through heartbeats.
"""

from __future__ import annotations

from uuid import uuid4

import pytest

from baton.exceptions import ConflictError, PermissionDeniedError
from baton.schemas.states import StateName
from baton.server.database.connection import create_database_engine, create_session_factory, transaction
from baton.server.models import state_changes
from baton.server.models.errors import StaleState
from security.access_support import key_id_of
from server.harness import TenantContext, unique


def test_a_second_runner_key_cannot_take_over_an_agent_or_fail_its_runs(tenant: TenantContext) -> None:
    # Given an agent of runner key A, deploying a run
    first = tenant.client(tenant.key("runner"))
    name = unique("agent")
    staged = tenant.stage("Running", runner=first)
    assert staged.agent_id is not None
    agent = first.register_agent(name, "local", [])
    second = tenant.client(tenant.new_key("runner"))

    # When runner key B registers the same identity, then reports A's agents' runs dead
    with pytest.raises(ConflictError, match="registered with another key that is still active") as excinfo:
        second.register_agent(name, "local", [])
    dead = [{"flow_run_id": staged.id, "alive": False, "exit_code": 137}]
    for agent_id in (agent.id, staged.agent_id):
        with pytest.raises(PermissionDeniedError, match="registered with another key"):
            second.agent_heartbeat(agent_id, dead)
        with pytest.raises(PermissionDeniedError, match="registered with another key"):
            second.claim(agent_id)

    # Then the answer was 409, A still drives its agent, and the run is untouched
    assert excinfo.value.status_code == 409
    assert first.register_agent(name, "local", []).id == agent.id
    assert first.agent_heartbeat(agent.id, []).failed == []
    assert tenant.run(staged.id).state == "Running"


def test_an_admin_key_cannot_take_over_a_runners_agent_either(tenant: TenantContext) -> None:
    runner = tenant.client(tenant.key("runner"))
    name = unique("agent")
    agent = runner.register_agent(name, "docker", ["gpu"])

    with pytest.raises(ConflictError):
        tenant.admin.register_agent(name, "docker", ["gpu"])
    with pytest.raises(PermissionDeniedError):
        tenant.admin.claim(agent.id)

    assert runner.claim(agent.id).runs == []


def test_once_its_key_is_revoked_the_agent_moves_to_the_next_key(tenant: TenantContext) -> None:
    # Given an agent whose key the operator rotates
    old_key = tenant.new_key("runner")
    name = unique("agent")
    agent = tenant.client(old_key).register_agent(name, "local", [])
    tenant.admin.revoke_api_key(key_id_of(tenant, old_key))

    # When the new key registers the same identity
    new = tenant.client(tenant.new_key("runner"))
    moved = new.register_agent(name, "local", [])

    # Then it is the same agent, now driven by the new key
    assert moved.id == agent.id
    assert new.claim(agent.id).runs == []
    assert new.agent_heartbeat(agent.id, []).failed == []


def test_other_identities_register_freely(tenant: TenantContext) -> None:
    first = tenant.client(tenant.key("runner"))
    second = tenant.client(tenant.new_key("runner"))
    name = unique("agent")
    ids = {
        first.register_agent(name, "local", []).id,
        second.register_agent(name, "local", ["other"]).id,
        second.register_agent(name, "docker", []).id,
    }
    assert len(ids) == 3


def test_a_key_cannot_revoke_itself_and_revoked_keys_are_unknown(tenant: TenantContext) -> None:
    other_admin = tenant.new_key("admin")
    me = key_id_of(tenant, other_admin)

    with pytest.raises(ConflictError, match="cannot revoke itself"):
        tenant.client(other_admin).revoke_api_key(me)
    tenant.admin.revoke_api_key(me)

    assert me not in {key.id for key in tenant.admin.list_api_keys()}
    assert tenant.raw(other_admin).get("/api/whoami").status_code == 401
    assert tenant.raw(tenant.admin_key).delete(f"/api/keys/{me}").status_code == 404


def test_a_state_change_holds_only_while_the_agent_still_holds_the_run(tenant: TenantContext) -> None:
    # Given a run claimed by agent A, and a state change checked against A that lands after the run moved on
    staged = tenant.stage("Pending")
    engine = create_database_engine(tenant.server.database_url, 1)
    try:
        with (
            pytest.raises(StaleState, match="released and claimed again"),
            transaction(create_session_factory(engine)) as session,
        ):
            state_changes.set_state(session, tenant.id, staged.id, StateName.FAILED, "late", None, held_by=str(uuid4()))
    finally:
        engine.dispose()

    # Then nothing changed
    assert tenant.run(staged.id).state == "Pending"

"""The access policy decides a scope without the database exactly where ``needs_session`` says it may.

``Authorize`` checks a scope inline on the event loop (``check_scope_inline``) unless ``needs_session`` sends it to a
worker thread with a session (``check_scope``). For every kind of principal and every scope, this walks both ways
with a session that refuses to be used: where no session is needed the two must agree (same pass, same refusal),
and where one is needed ``check_scope`` must indeed use it (else the worker thread is a waste).
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from baton.schemas.core import Role
from baton.server.access import POLICY, Action, Kind, Scope, check_scope, check_scope_inline, needs_session
from baton.server.models.tenants import Principal

OWN_RUN = str(uuid.UUID(int=1))
OTHER_RUN = str(uuid.UUID(int=2))
# Every path parameter any scope reads: the run (own or another), a flow, an agent, a task run, a bundle digest.
PARAMS = {
    "flow_id": str(uuid.UUID(int=3)),
    "agent_id": str(uuid.UUID(int=4)),
    "task_run_id": str(uuid.UUID(int=5)),
    "digest": "c" * 64,
}
CHECKED_SCOPES = [scope for scope in Scope if scope not in (Scope.TENANT, Scope.PUBLIC)]


class SessionUsed(Exception):
    pass


class RefusingSession:
    """Stands for a session; any use of it raises SessionUsed."""

    def __getattr__(self, name: str) -> Any:
        raise SessionUsed(name)


def principal_of(kind: Kind) -> Principal:
    if kind == Kind.RUN_TOKEN:
        return Principal(tenant_id="t", tenant_name="t", role=None, flow_run_id=OWN_RUN)
    return Principal(tenant_id="t", tenant_name="t", role=Role(kind.value), key_id="k")


def outcome(check: Any, *args: Any) -> str:
    try:
        check(*args)
    except SessionUsed:
        return "session used"
    except Exception as error:  # the outcome is compared, whatever it is
        return type(error).__name__
    return "allowed"


@pytest.mark.parametrize("run_id", [OWN_RUN, OTHER_RUN], ids=["own run", "other run"])
@pytest.mark.parametrize("scope", CHECKED_SCOPES, ids=str)
@pytest.mark.parametrize("kind", list(Kind), ids=str)
def test_the_inline_check_agrees_with_the_session_check_wherever_no_session_is_needed(
    kind: Kind, scope: Scope, run_id: str
) -> None:
    principal = principal_of(kind)
    params = {**PARAMS, "flow_run_id": run_id}
    with_session = outcome(check_scope, RefusingSession(), principal, scope, params)
    if needs_session(scope, kind):
        # A run token outside its run is refused before any read; otherwise the session must be what decides.
        refused_early = kind == Kind.RUN_TOKEN and run_id == OTHER_RUN and scope == Scope.RUN_WRITE
        assert with_session == ("ObjectNotFound" if refused_early else "session used")
    else:
        assert with_session != "session used"
        assert outcome(check_scope_inline, principal, scope, params) == with_session


def test_a_run_token_is_refused_another_run_inline_and_allowed_its_own() -> None:
    token = principal_of(Kind.RUN_TOKEN)
    assert outcome(check_scope_inline, token, Scope.RUN, {"flow_run_id": OTHER_RUN}) == "ObjectNotFound"
    assert outcome(check_scope_inline, token, Scope.RUN_WRITE, {"flow_run_id": OTHER_RUN}) == "ObjectNotFound"
    assert outcome(check_scope_inline, token, Scope.RUN, {"flow_run_id": OWN_RUN}) == "allowed"


@pytest.mark.parametrize("kind", list(Kind), ids=str)
def test_tenant_and_public_scopes_never_read_the_database(kind: Kind) -> None:
    for scope in (Scope.TENANT, Scope.PUBLIC):
        assert not needs_session(scope, kind)
        assert outcome(check_scope_inline, principal_of(kind), scope, {}) == "allowed"


def test_whoever_may_set_a_runs_state_may_write_its_logs() -> None:
    # A state change stores the log lines it carries (the flow-run process's last ones) under the state's rule:
    # the two rules must stay one, or lines would reach a run through /state that /logs would refuse.
    assert POLICY[Action.FLOW_RUN_SET_STATE] == POLICY[Action.LOGS_WRITE]

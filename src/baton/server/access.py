"""Who may do what: the one access policy every route goes through (docs/design.md, Security model).

:data:`POLICY` is the single source of truth: for each :class:`Action`, the kinds of principal allowed to perform it
and the scope rule that narrows it to particular objects. Each route declares its action once, as a dependency::

    @router.get("/{flow_run_id}")
    def get_flow_run(flow_run_id: str, principal: Annotated[Principal, allow(Action.FLOW_RUN_READ)]) -> ...

The dependency answers 403 when the principal's kind may not perform the action at all, then applies the scope:

* :attr:`Scope.RUN` / :attr:`Scope.FLOW` / :attr:`Scope.TASK_RUN`: a run token reaches only its own run, that run's
  flow and its task runs; anything else is 404, as if it did not exist.
* :attr:`Scope.RUN_WRITE` / :attr:`Scope.TASK_RUN_WRITE`: the same, and a runner key changes only runs that one of
  the agents it registered has claimed (403 otherwise).
* :attr:`Scope.BUNDLE`: a run token reads only the bundle its run's flow was registered with (``storage.bundle``);
  any other digest is 404.
* :attr:`Scope.AGENT`: an agent is driven (claims, heartbeats) only by the key that registered it, whatever that
  key's role (403 otherwise): an agent's identity is bound to its key.

Objects of another tenant are 404 for everyone. Models never decide access; they may still refuse for reasons of
state (e.g. an illegal transition, 409).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from sqlalchemy import Connection, Engine, bindparam, select
from sqlalchemy.orm import Session

from baton.exceptions import BatonError
from baton.schemas.states import StateName
from baton.server.database.orm import Agent, Flow, FlowRun, TaskRun
from baton.server.models.errors import ObjectNotFound
from baton.server.models.ids import checked_id
from baton.server.models.tenants import Principal
from baton.server.worker_threads import run_in_worker

# What the scope checks read with: a request's session, or a connection of the read-only engine (Authorize).
Reader = Session | Connection


class AccessDenied(BatonError):
    """The principal's kind or scope does not allow this (403)."""


class Kind(StrEnum):
    """Kinds of principal: the four key roles and the run token."""

    ADMIN = "admin"
    USER = "user"
    RUNNER = "runner"
    READ = "read"
    RUN_TOKEN = "run token"  # noqa: S105 - a kind of principal, not a secret


class Action(StrEnum):
    HEALTH = "health"
    WHOAMI = "whoami"
    KEY_CREATE = "key.create"
    KEY_LIST = "key.list"
    KEY_REVOKE = "key.revoke"
    FLOW_REGISTER = "flow.register"
    FLOW_LIST = "flow.list"
    FLOW_READ = "flow.read"
    FLOW_RUN_CREATE = "flow_run.create"
    FLOW_RUN_LIST = "flow_run.list"
    FLOW_RUN_READ = "flow_run.read"
    FLOW_RUN_SET_STATE = "flow_run.set_state"
    FLOW_RUN_START = "flow_run.start"
    FLOW_RUN_CANCEL = "flow_run.cancel"
    FLOW_RUN_RETRY = "flow_run.retry"
    FLOW_RUN_EXPLAIN = "flow_run.explain"
    FLOW_RUN_HEARTBEAT = "flow_run.heartbeat"
    LOGS_READ = "logs.read"
    LOGS_WRITE = "logs.write"
    TASK_RUN_LIST = "task_run.list"
    TASK_RUN_CREATE = "task_run.create"
    TASK_RUN_SET_STATE = "task_run.set_state"
    TASK_RUN_SET_STATES = "task_run.set_states"
    AGENT_REGISTER = "agent.register"
    AGENT_LIST = "agent.list"
    AGENT_CLAIM = "agent.claim"
    AGENT_HEARTBEAT = "agent.heartbeat"
    NOTIFICATION_CREATE = "notification.create"
    NOTIFICATION_LIST = "notification.list"
    NOTIFICATION_REMOVE = "notification.remove"
    NOTIFICATION_TEST = "notification.test"
    AGENT_DEREGISTER = "agent.deregister"
    AGENT_PRUNE = "agent.prune"
    LIMIT_SET = "limit.set"
    LIMIT_LIST = "limit.list"
    LIMIT_DELETE = "limit.delete"
    SCHEDULE_READ = "schedule.read"
    SCHEDULE_PAUSE = "schedule.pause"
    SCHEDULE_BACKFILL = "schedule.backfill"
    BUNDLE_UPLOAD = "bundle.upload"
    BUNDLE_READ = "bundle.read"
    PROJECT_CREATE = "project.create"
    PROJECT_LIST = "project.list"
    PROJECT_UPDATE = "project.update"
    PROJECT_DELETE = "project.delete"
    AGENT_CONFIG_MANAGE = "agent_config.manage"


class Scope(StrEnum):
    PUBLIC = "public"  # no credential at all
    TENANT = "tenant"  # anything of the caller's tenant
    FLOW = "flow"
    RUN = "run"
    RUN_WRITE = "run write"
    TASK_RUN_WRITE = "task run write"
    AGENT = "agent"
    BUNDLE = "bundle"


@dataclass(frozen=True)
class Rule:
    kinds: frozenset[Kind]
    scope: Scope = Scope.TENANT


def _rule(kinds: str, scope: Scope = Scope.TENANT) -> Rule:
    return Rule(frozenset(Kind(k.replace("_", " ")) for k in kinds.split()), scope)


_ALL = "admin user runner read run_token"
_KEYS = "admin user runner read"
_RUN_WRITERS = "admin user runner run_token"

# The policy. Read keys see everything of their tenant but change nothing; a run token reads and reports its own run
# only (never the tenant's agents: ``explain`` lists them all); agents' calls are their registering key's alone.
POLICY: dict[Action, Rule] = {
    Action.HEALTH: _rule(_ALL, Scope.PUBLIC),
    Action.WHOAMI: _rule(_ALL),
    Action.KEY_CREATE: _rule("admin"),
    Action.KEY_LIST: _rule("admin"),
    Action.KEY_REVOKE: _rule("admin"),
    Action.FLOW_REGISTER: _rule("admin user"),
    Action.FLOW_LIST: _rule(_KEYS),
    Action.FLOW_READ: _rule(_ALL, Scope.FLOW),
    Action.FLOW_RUN_CREATE: _rule("admin user"),
    Action.FLOW_RUN_LIST: _rule(_KEYS),
    Action.FLOW_RUN_READ: _rule(_ALL, Scope.RUN),
    Action.FLOW_RUN_SET_STATE: _rule(_RUN_WRITERS, Scope.RUN_WRITE),
    # Running and the run's flow with its source at once: only a run sets itself Running (SETTABLE_STATES).
    Action.FLOW_RUN_START: _rule("run_token", Scope.RUN_WRITE),
    Action.FLOW_RUN_CANCEL: _rule("admin user", Scope.RUN),
    Action.FLOW_RUN_RETRY: _rule("admin user", Scope.RUN),  # creates a run, as FLOW_RUN_CREATE
    Action.FLOW_RUN_EXPLAIN: _rule(_KEYS, Scope.RUN),
    Action.FLOW_RUN_HEARTBEAT: _rule(_RUN_WRITERS, Scope.RUN_WRITE),
    Action.LOGS_READ: _rule(_ALL, Scope.RUN),
    Action.LOGS_WRITE: _rule(_RUN_WRITERS, Scope.RUN_WRITE),
    Action.TASK_RUN_LIST: _rule(_ALL, Scope.RUN),
    Action.TASK_RUN_CREATE: _rule(_RUN_WRITERS, Scope.RUN_WRITE),
    Action.TASK_RUN_SET_STATE: _rule(_RUN_WRITERS, Scope.TASK_RUN_WRITE),
    # A batch names its run in the path and changes only that run's task runs (models/task_runs.py).
    Action.TASK_RUN_SET_STATES: _rule(_RUN_WRITERS, Scope.RUN_WRITE),
    Action.AGENT_REGISTER: _rule("admin runner"),
    Action.AGENT_LIST: _rule(_KEYS),
    Action.AGENT_CLAIM: _rule("admin runner", Scope.AGENT),
    Action.AGENT_HEARTBEAT: _rule("admin runner", Scope.AGENT),
    # Notification rules make the server POST to a URL of the rule's author: managed by admin and user keys only
    # (and a test sends at once). Read keys list them: the URL is always shown redacted (shaping).
    Action.NOTIFICATION_CREATE: _rule("admin user"),
    Action.NOTIFICATION_LIST: _rule("admin user read"),
    Action.NOTIFICATION_REMOVE: _rule("admin user"),
    Action.NOTIFICATION_TEST: _rule("admin user"),
    # A warm stop deregisters the agent: its own key only, like its claims.
    Action.AGENT_DEREGISTER: _rule("admin runner", Scope.AGENT),
    # Housekeeping of the fleet: people (admin, user), not agents; only stale agents holding no run go.
    Action.AGENT_PRUNE: _rule("admin user"),
    # Label limits: whoever may create runs may bound how many run at once; every key may read them.
    Action.LIMIT_SET: _rule("admin user"),
    Action.LIMIT_LIST: _rule(_KEYS),
    Action.LIMIT_DELETE: _rule("admin user"),
    # Schedules: read by every key of the tenant; pausing, resuming and backfilling change what runs, like
    # creating runs does: admin and user keys only.
    Action.SCHEDULE_READ: _rule(_KEYS),
    Action.SCHEDULE_PAUSE: _rule("admin user"),
    Action.SCHEDULE_BACKFILL: _rule("admin user"),
    # Bundles are flows' code: uploaded by whoever registers flows; read by every key of the tenant (as flow source
    # is) and by a run token for its own flow's bundle only (the flow-run process downloads it).
    Action.BUNDLE_UPLOAD: _rule("admin user"),
    Action.BUNDLE_READ: _rule(_ALL, Scope.BUNDLE),
    # Projects (Prefect 1's GraphQL API): managed by whoever registers flows, read by every key of the tenant.
    Action.PROJECT_CREATE: _rule("admin user"),
    Action.PROJECT_LIST: _rule(_KEYS),
    Action.PROJECT_UPDATE: _rule("admin user"),
    Action.PROJECT_DELETE: _rule("admin user"),
    # Prefect 1's agent configurations: managed as agents are pruned (people), read by every key (agent.list).
    Action.AGENT_CONFIG_MANAGE: _rule("admin user"),
}

_S = StateName
# The states each kind may ask for through POST /api/flow_runs/{id}/state (the state machine decides the rest).
SETTABLE_STATES: dict[Kind, frozenset[StateName]] = {
    Kind.RUN_TOKEN: frozenset({_S.RUNNING, _S.SUCCESS, _S.FAILED, _S.CANCELLED}),
    Kind.RUNNER: frozenset({_S.SUBMITTED, _S.FAILED, _S.SCHEDULED, _S.CANCELLED}),
    Kind.USER: frozenset({_S.SUCCESS, _S.FAILED, _S.CANCELLED}),
    Kind.ADMIN: frozenset({_S.SUBMITTED, _S.FAILED, _S.SCHEDULED, _S.CANCELLED, _S.SUCCESS}),
    Kind.READ: frozenset(),
}


def kind_of(principal: Principal) -> Kind:
    if principal.is_run_token:
        return Kind.RUN_TOKEN
    return Kind(str(principal.role))


def allows(principal: Principal, action: Action) -> bool:
    """Whether ``principal``'s kind may perform ``action`` at all (before any scope rule)."""
    return kind_of(principal) in POLICY[action].kinds


def check_state_allowed(principal: Principal, name: StateName) -> None:
    """Raises AccessDenied when ``principal`` may not ask for state ``name``.

    Pending is nobody's to set: ``state_changes.set_state`` explains why (422), whoever asks.
    """
    if name != _S.PENDING and name not in SETTABLE_STATES[kind_of(principal)]:
        raise AccessDenied(f"a {kind_of(principal)} may not set state {name.value}")


def denial(kind: Kind, action: Action) -> str:
    """The 403 message of ``kind`` refused ``action`` by its kind."""
    if kind == Kind.RUN_TOKEN:
        return f"a run token may only act on its own flow run; it may not do {action.value}"
    allowed = ", ".join(sorted(k.value for k in POLICY[action].kinds if k != Kind.RUN_TOKEN))
    if not allowed:  # e.g. starting a run: its flow-run process's, with the run's token
        return f"no key may do this ({action.value}): only a run's own run token"
    return f"this key's role ({kind.value}) may not do this ({action.value}); needs one of: {allowed}"


# --- the dependency every route declares --------------------------------------------------------------------


class Authorize:
    """The FastAPI dependency of one action: the caller (authenticated by ``server.authentication``), allowed."""

    def __init__(self, action: Action) -> None:
        self.action = action
        self.rule = POLICY[action]

    async def __call__(self, request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
        # ``authorization`` is declared so that the OpenAPI document shows it; the middleware has checked it.
        # ``async``: FastAPI would run a plain function in a worker thread, and on most requests there is nothing
        # here to wait for; the scope's database reads, when it has any, go to a worker thread.
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:  # the authentication middleware refuses such requests before they get here
            raise AccessDenied("not authenticated")
        kind = kind_of(principal)
        if kind not in self.rule.kinds:
            raise AccessDenied(denial(kind, self.action))
        scope, params = self.rule.scope, dict(request.path_params)
        if needs_session(scope, kind):
            engine: Engine = request.app.state.read_engine
            await run_in_worker(_check_scope_reading, engine, principal, scope, params)
        else:
            check_scope_inline(principal, scope, params)
        return principal


def _check_scope_reading(engine: Engine, principal: Principal, scope: Scope, params: dict[str, str]) -> None:
    # A Core connection of the read-only engine, not an ORM session: the checks are prebuilt Core statements, and a
    # session's set-up and ORM execution path cost more than the query (the agents' claims, heartbeats and
    # Submitted, and every task run's state, pass here).
    with engine.connect() as connection:
        check_scope(connection, principal, scope, params)


class Public:
    """The dependency of a route that needs no credential (it only names the route's action)."""

    def __init__(self, action: Action) -> None:
        if POLICY[action].scope != Scope.PUBLIC:
            raise ValueError(f"{action} is not public")
        self.action = action

    async def __call__(self) -> None:  # async: no worker-thread hop for nothing
        return None


def allow(action: Action) -> Any:
    """``Depends`` on the authorised principal of ``action`` (for ``Annotated[Principal, allow(...)]``)."""
    return Depends(Authorize(action))


def route_action(dependencies: list[Any]) -> Action | None:
    """The action a route declares, from its dependency callables (tests walk routes with this)."""
    for call in dependencies:
        if isinstance(call, Authorize | Public):
            return call.action
    return None


# --- scope rules ---------------------------------------------------------------------------------------------


def needs_session(scope: Scope, kind: Kind) -> bool:
    """Whether ``scope`` reads the database for a principal of ``kind``.

    When it does not, :func:`check_scope_inline` decides from the principal and the path alone, on the event loop;
    tests/security/test_access_scopes.py checks that the two functions agree for every kind and scope.
    """
    if scope in (Scope.FLOW, Scope.BUNDLE):
        return kind == Kind.RUN_TOKEN  # every key reads any flow and bundle of its tenant
    if scope == Scope.RUN_WRITE:
        return kind == Kind.RUNNER
    return scope in (Scope.AGENT, Scope.TASK_RUN_WRITE)


def check_scope_inline(principal: Principal, scope: Scope, params: dict[str, str]) -> None:
    """:func:`check_scope` where :func:`needs_session` says no session is needed."""
    if scope in (Scope.RUN, Scope.RUN_WRITE):
        _check_run_reach(principal, params["flow_run_id"])


def check_scope(session: Reader, principal: Principal, scope: Scope, params: dict[str, str]) -> None:
    """Apply ``scope`` to the objects named by the route's path ``params``.

    Raises:
        ObjectNotFound: not in the caller's tenant, or out of a run token's reach (404).
        AccessDenied: a runner key on another key's run or agent, or any key on another key's agent (403).
    """
    if scope == Scope.AGENT:
        check_agent_owner(session, principal, params["agent_id"])
        return
    if scope == Scope.FLOW:
        _check_flow(session, principal, params["flow_id"])
        return
    if scope == Scope.BUNDLE:
        _check_bundle(session, principal, params["digest"])
        return
    if scope == Scope.TASK_RUN_WRITE:
        run_id = _task_run_flow_run(session, principal, params["task_run_id"])
    else:
        run_id = params["flow_run_id"]
        _check_run_reach(principal, run_id)
    if scope in (Scope.RUN_WRITE, Scope.TASK_RUN_WRITE) and kind_of(principal) == Kind.RUNNER:
        _check_runner_holds(session, principal, run_id)


def _check_run_reach(principal: Principal, run_id: str) -> None:
    """A run token reaches its own run only: any other is 404, as if it did not exist."""
    if principal.is_run_token and run_id != principal.flow_run_id:
        raise ObjectNotFound(f"flow run {run_id} not found")


# The engine's requests run these (its flow, each task run's state): built once.
_FLOW_OF_RUN = select(FlowRun.flow_id).where(FlowRun.id == bindparam("id"))
_RUN_OF_TASK_RUN = select(TaskRun.flow_run_id).where(
    TaskRun.tenant_id == bindparam("tenant_id"), TaskRun.id == bindparam("id")
)


def _check_flow(session: Reader, principal: Principal, flow_id: str) -> None:
    if not principal.is_run_token:
        return
    own = session.scalar(_FLOW_OF_RUN, {"id": principal.flow_run_id})
    if own != flow_id:
        raise ObjectNotFound(f"flow {flow_id} not found")


def _check_bundle(session: Reader, principal: Principal, digest: str) -> None:
    """A run token reads the bundle of its run's flow only; whether the tenant has it is the route's business."""
    if not principal.is_run_token:
        return
    storage = session.scalar(
        select(Flow.storage)
        .join(FlowRun, FlowRun.flow_id == Flow.id)
        .where(FlowRun.tenant_id == principal.tenant_id, FlowRun.id == principal.flow_run_id)
    )
    if not isinstance(storage, dict) or storage.get("bundle") != digest:
        printable = "".join(char if char.isprintable() else "?" for char in digest[:64])
        raise ObjectNotFound(f"bundle {printable} not found")


def _task_run_flow_run(session: Reader, principal: Principal, task_run_id: str) -> str:
    task_run_id = checked_id("task run", task_run_id)
    run_id = session.scalar(_RUN_OF_TASK_RUN, {"tenant_id": principal.tenant_id, "id": task_run_id})
    if run_id is None or (principal.is_run_token and run_id != principal.flow_run_id):
        raise ObjectNotFound(f"task run {task_run_id} not found")
    return run_id


def run_holder(session: Session, principal: Principal, flow_run_id: str) -> str | None:
    """For a runner key, the agent of its own that holds the run (else AccessDenied); None for other principals.

    A state change passes it to ``state_changes.set_state`` as a precondition checked with the compare-and-set, so
    a run released and claimed by another key's agent while the request was handled is never changed.
    """
    if kind_of(principal) != Kind.RUNNER:
        return None
    return _check_runner_holds(session, principal, flow_run_id)


# The agent routes (any key) and a runner key's run writes run these: built once.
_RUN_HOLDER = (
    select(FlowRun.agent_id, Agent.api_key_id)
    .outerjoin(Agent, Agent.id == FlowRun.agent_id)
    .where(FlowRun.tenant_id == bindparam("tenant_id"), FlowRun.id == bindparam("id"))
)
_AGENT_OWNER = select(Agent.api_key_id).where(Agent.tenant_id == bindparam("tenant_id"), Agent.id == bindparam("id"))


def _check_runner_holds(session: Reader, principal: Principal, flow_run_id: str) -> str:
    """A runner key changes only runs claimed by one of the agents it registered. Returns that agent's id."""
    flow_run_id = checked_id("flow run", flow_run_id)
    row = session.execute(_RUN_HOLDER, {"tenant_id": principal.tenant_id, "id": flow_run_id}).first()
    if row is None:
        raise ObjectNotFound(f"flow run {flow_run_id} not found")
    if row[0] is None or row[1] is None or row[1] != principal.key_id:
        raise AccessDenied("this runner key may only change runs claimed by its own agents")
    return str(row[0])


def check_agent_owner(session: Reader, principal: Principal, agent_id: str) -> None:
    """The agent is the tenant's (else ObjectNotFound), registered by this key (else AccessDenied)."""
    agent_id = checked_id("agent", agent_id)
    owner = session.execute(_AGENT_OWNER, {"tenant_id": principal.tenant_id, "id": agent_id}).first()
    if owner is None:
        raise ObjectNotFound(f"agent {agent_id} not found")
    if owner[0] is None or owner[0] != principal.key_id:
        raise AccessDenied("this agent was registered with another key; only that key may drive it")

"""Concurrency limits (issue 9): a flow's ``max_concurrent_runs`` and a tenant's label limits bound the runs that hold
a slot (Pending, Submitted, Running, Cancelling); claims pass over runs whose limit is full, and every end frees
the slot. On SQLite and PostgreSQL (the package's server)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.schemas.actions import LabelLimitSet
from baton.schemas.core import MAX_CONCURRENT_RUNS
from baton.server.database.connection import transaction
from baton.server.database.orm import FlowRun, utcnow
from baton.server.models import claims, concurrency
from baton.server.models.errors import Conflict
from baton.server.models.lost_runs import RecoveryPolicy, recover_lost_runs
from server.harness import TenantContext, unique
from support import HELLO_SOURCE


def _runs(user: Client, flow: str, count: int, labels: list[str] | None = None) -> list[str]:
    return [user.create_flow_run(flow_name=flow, labels=labels).id for _ in range(count)]


def _claim(runner: Client, labels: list[str], limit: int = 10) -> list[str]:
    agent = runner.register_agent(unique("agent"), "local", labels)
    return [claimed.flow_run.id for claimed in runner.claim(agent.id, limit=limit).runs]


def _state(admin: Client, run_id: str) -> str:
    return admin.get_flow_run(run_id).state


# --- a flow's limit --------------------------------------------------------------------------------------------


def test_registered_flow_limit_is_stored_and_shown(tenant: TenantContext) -> None:
    flow = tenant.register_flow(unique("etl"), max_concurrent_runs=2)

    assert flow.max_concurrent_runs == 2
    assert tenant.admin.list_flows(name=flow.name)[0].max_concurrent_runs == 2


@pytest.mark.parametrize("bad", [0, -1, MAX_CONCURRENT_RUNS + 1, 2**63, "2", True, 1.5])
def test_invalid_flow_limit_is_refused_with_422(tenant: TenantContext, bad: object) -> None:
    payload = {"name": unique("etl"), "entrypoint": "hello", "source": HELLO_SOURCE, "max_concurrent_runs": bad}

    response = tenant.raw(tenant.key("user")).post("/api/flows", json=payload)

    assert response.status_code == 422, response.text
    assert tenant.admin.list_flows(name=payload["name"]) == []


def test_changing_the_limit_makes_a_new_version_and_the_latest_rules(tenant: TenantContext) -> None:
    name = unique("etl")
    first = tenant.register_flow(name, max_concurrent_runs=1)
    again = tenant.register_flow(name, max_concurrent_runs=1)
    second = tenant.register_flow(name, max_concurrent_runs=3)

    assert (first.version, again.version, second.version) == (1, 1, 2)
    user, runner = tenant.client(tenant.key("user")), tenant.client(tenant.key("runner"))
    old = [user.create_flow_run(flow_name=name, flow_version=1).id for _ in range(4)]

    # Runs of version 1 count under version 2's limit of 3.
    assert len(_claim(runner, [])) == 3
    assert sorted(_state(tenant.admin, run) for run in old) == ["Pending"] * 3 + ["Scheduled"]


def test_flow_limit_counts_every_version_of_the_name(tenant: TenantContext) -> None:
    name = unique("etl")
    tenant.register_flow(name, max_concurrent_runs=1)
    user, runner = tenant.client(tenant.key("user")), tenant.client(tenant.key("runner"))
    first = user.create_flow_run(flow_name=name, flow_version=1).id
    assert _claim(runner, []) == [first]
    tenant.register_flow(name, max_concurrent_runs=1, description="version 2")
    user.create_flow_run(flow_name=name)

    assert _claim(runner, []) == []


def test_a_full_flow_does_not_block_the_runs_behind_it(tenant: TenantContext, user: Client, runner: Client) -> None:
    # Given a flow limited to 1 with three waiting runs, and a newer run of another flow
    etl = tenant.register_flow(unique("etl"), max_concurrent_runs=1).name
    other = tenant.register_flow(unique("other")).name
    etl_runs = _runs(user, etl, 3)
    other_run = user.create_flow_run(flow_name=other).id

    # When agents claim one run at a time
    first = _claim(runner, [], limit=1)
    second = _claim(runner, [], limit=1)
    third = _claim(runner, [], limit=1)

    # Then the second claim takes the other flow's run, and the third finds nothing
    assert (first, second, third) == ([etl_runs[0]], [other_run], [])


def test_one_claim_takes_up_to_the_limit_and_goes_on_to_other_flows(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    etl = tenant.register_flow(unique("etl"), max_concurrent_runs=2).name
    other = tenant.register_flow(unique("other")).name
    etl_runs = _runs(user, etl, 5)
    other_runs = _runs(user, other, 2)

    taken = _claim(runner, [], limit=4)

    assert sorted(taken) == sorted(etl_runs[:2] + other_runs)


# --- label limits ----------------------------------------------------------------------------------------------


def test_label_limit_bounds_the_runs_carrying_the_label(tenant: TenantContext, user: Client, runner: Client) -> None:
    gpu = unique("gpu")
    user.set_label_limit(gpu, 1)
    tenant.register_flow()
    runs = _runs(user, "hello", 3, [gpu])

    assert _claim(runner, [gpu]) == [runs[0]]
    assert _claim(runner, [gpu, "other"]) == []
    assert [limit.active for limit in user.list_label_limits() if limit.label == gpu] == [1]


def test_a_run_with_several_limited_labels_needs_a_slot_in_each(
    tenant: TenantContext, user: Client, runner: Client
) -> None:
    wide, narrow = unique("wide"), unique("narrow")
    user.set_label_limit(wide, 5)
    user.set_label_limit(narrow, 1)
    tenant.register_flow()
    holder = user.create_flow_run(flow_name="hello", labels=[narrow]).id
    both = user.create_flow_run(flow_name="hello", labels=[narrow, wide]).id
    wide_only = user.create_flow_run(flow_name="hello", labels=[wide]).id

    taken = _claim(runner, [narrow, wide])

    assert sorted(taken) == sorted([holder, wide_only])
    assert _state(tenant.admin, both) == "Scheduled"


def test_a_flow_limit_and_a_label_limit_both_apply(tenant: TenantContext, user: Client, runner: Client) -> None:
    label = unique("db")
    user.set_label_limit(label, 3)
    etl = tenant.register_flow(unique("etl"), max_concurrent_runs=1).name
    tenant.register_flow()
    runs = _runs(user, etl, 2, [label]) + _runs(user, "hello", 3, [label])

    taken = _claim(runner, [label])

    assert sorted(taken) == sorted([runs[0], runs[2], runs[3]])


def test_raising_a_limit_lets_waiting_runs_go(tenant: TenantContext, user: Client, runner: Client) -> None:
    label = unique("gpu")
    user.set_label_limit(label, 1)
    tenant.register_flow()
    runs = _runs(user, "hello", 3, [label])
    assert len(_claim(runner, [label])) == 1

    user.set_label_limit(label, 3)
    assert sorted(_claim(runner, [label])) == sorted(runs[1:])

    user.delete_label_limit(label)
    more = _runs(user, "hello", 2, [label])
    assert sorted(_claim(runner, [label])) == sorted(more)


# --- every end frees the slot ----------------------------------------------------------------------------------


@pytest.fixture
def limited(tenant: TenantContext, user: Client) -> tuple[str, list[str]]:
    """A flow limited to one run at a time, with two waiting runs."""
    name = tenant.register_flow(unique("one"), max_concurrent_runs=1).name
    return name, _runs(user, name, 2)


def _hold(tenant: TenantContext, runner: Client, run_id: str, state: str) -> str:
    """Claim ``run_id`` (the only free one) and bring it to ``state``; returns its run token."""
    agent = runner.register_agent(unique("holder"), "local", [])
    claimed = runner.claim(agent.id).runs
    assert [c.flow_run.id for c in claimed] == [run_id]
    token = claimed[0].run_token
    if state in ("Submitted", "Running", "Cancelling"):
        runner.set_flow_run_state(run_id, "Submitted", "PID: 1", {"pid": 1})
    if state in ("Running", "Cancelling"):
        tenant.client(token).set_flow_run_state(run_id, "Running")
    if state == "Cancelling":
        tenant.client(tenant.key("user")).cancel_flow_run(run_id)
    assert _state(tenant.admin, run_id) == state
    return token


@pytest.mark.parametrize(
    ("held", "end"),
    [
        ("Running", "Success"),
        ("Running", "Failed"),
        ("Running", "Cancelled"),
        ("Cancelling", "Cancelled"),
        ("Pending", "Cancelled"),
        ("Submitted", "Failed"),
        ("Pending", "Released"),
    ],
)
def test_every_end_frees_the_slot(
    tenant: TenantContext, runner: Client, limited: tuple[str, list[str]], held: str, end: str
) -> None:
    _name, (first, second) = limited
    token = _hold(tenant, runner, first, held)
    assert _claim(runner, []) == []  # full while the first run holds the slot

    if end == "Released":
        runner.set_flow_run_state(first, "Scheduled", "released by a warm stop")
    elif held == "Pending" and end == "Cancelled":
        tenant.client(tenant.key("user")).cancel_flow_run(first)
    elif held in ("Submitted", "Cancelling"):
        runner.set_flow_run_state(first, end, "the agent saw the deployment end")
    else:
        tenant.client(token).set_flow_run_state(first, end, "the flow ended")

    # The slot is free: the waiting run (or the released one, oldest first) is claimed.
    assert _claim(runner, []) == [first if end == "Released" else second]


def test_lease_expiry_frees_the_slot(
    tenant: TenantContext, runner: Client, api_database: sessionmaker[Session], limited: tuple[str, list[str]]
) -> None:
    _name, (first, second) = limited
    _hold(tenant, runner, first, "Pending")
    with transaction(api_database) as session:
        session.execute(update(FlowRun).where(FlowRun.id == first).values(lease_expires_at=utcnow() - timedelta(1)))
        claims.expire_leases(session, max_returns=3)

    assert _state(tenant.admin, first) == "Scheduled"
    assert _claim(runner, [], limit=2) == [first]  # requeued, first in line again, and alone in the slot
    assert _state(tenant.admin, second) == "Scheduled"


@pytest.mark.parametrize("held", ["Running", "Submitted", "Cancelling"])
def test_a_lost_run_frees_the_slot(
    tenant: TenantContext,
    runner: Client,
    api_database: sessionmaker[Session],
    limited: tuple[str, list[str]],
    held: str,
) -> None:
    _name, (first, second) = limited
    _hold(tenant, runner, first, held)
    long_ago = utcnow() - timedelta(days=1)
    with transaction(api_database) as session:
        session.execute(update(FlowRun).where(FlowRun.id == first).values(heartbeat_at=long_ago))
        policy = RecoveryPolicy(run_heartbeat_timeout_seconds=3600, reschedule_running=False, max_returns=3)
        recover_lost_runs(session, policy)

    expected = {"Running": "Failed", "Submitted": "Scheduled", "Cancelling": "Cancelled"}[held]
    assert _state(tenant.admin, first) == expected
    assert _claim(runner, []) == [first if expected == "Scheduled" else second]


def test_an_agent_reporting_its_deployment_dead_frees_the_slot(
    tenant: TenantContext, runner: Client, limited: tuple[str, list[str]]
) -> None:
    _name, (first, second) = limited
    agent = runner.register_agent(unique("holder"), "local", [])
    assert [c.flow_run.id for c in runner.claim(agent.id).runs] == [first]
    runner.set_flow_run_state(first, "Submitted", "PID: 1", {"pid": 1})

    runner.agent_heartbeat(agent.id, [{"flow_run_id": first, "alive": False, "exit_code": 137}])

    assert _state(tenant.admin, first) == "Failed"
    assert _claim(runner, []) == [second]


# --- explain ---------------------------------------------------------------------------------------------------


def test_explain_names_a_full_flow_limit(tenant: TenantContext, user: Client, runner: Client) -> None:
    name = tenant.register_flow(unique("etl"), max_concurrent_runs=1).name
    first, waiting = _runs(user, name, 2)
    _claim(runner, [])

    summary = user.explain_flow_run(waiting).summary

    assert summary.startswith(f"waiting for a slot: flow {name!r} allows 1 concurrent run(s), 1 running ({first})")


def test_explain_names_a_full_label_limit(tenant: TenantContext, user: Client, runner: Client) -> None:
    gpu = unique("gpu")
    user.set_label_limit(gpu, 1)
    tenant.register_flow()
    first, waiting = _runs(user, "hello", 2, [gpu])
    _claim(runner, [gpu])

    summary = user.explain_flow_run(waiting).summary

    assert summary.startswith(f"waiting for a slot: label {gpu!r} limit 1 is full (1 running: {first})")
    assert "live agent" in summary  # what it says about agents is kept


def test_explain_says_nothing_of_limits_with_room(tenant: TenantContext, user: Client) -> None:
    name = tenant.register_flow(unique("etl"), max_concurrent_runs=1).name
    waiting = user.create_flow_run(flow_name=name).id

    assert "slot" not in user.explain_flow_run(waiting).summary


# --- the routes: input and who may do what ---------------------------------------------------------------------


def test_set_list_and_delete(user: Client, reader: Client) -> None:
    label = unique("gpu")
    created = user.set_label_limit(label, 2)
    changed = user.set_label_limit(label, 4)

    assert (created.label, created.max_concurrent_runs, created.active) == (label, 2, 0)
    assert changed.max_concurrent_runs == 4
    assert [(lim.label, lim.max_concurrent_runs) for lim in reader.list_label_limits()] == [(label, 4)]
    assert user.delete_label_limit(label).max_concurrent_runs == 4
    assert reader.list_label_limits() == []


def test_a_label_with_a_slash_can_be_deleted(user: Client) -> None:
    label = unique("team/gpu")
    user.set_label_limit(label, 1)

    assert user.delete_label_limit(label).label == label
    assert user.list_label_limits() == []


@pytest.mark.parametrize(
    "body",
    [
        {"label": "has space", "max_concurrent_runs": 1},
        {"label": "", "max_concurrent_runs": 1},
        {"label": "a,b", "max_concurrent_runs": 1},
        {"label": "x" * 129, "max_concurrent_runs": 1},
        {"label": "nul\x00", "max_concurrent_runs": 1},
        {"label": "gpu", "max_concurrent_runs": 0},
        {"label": "gpu", "max_concurrent_runs": -3},
        {"label": "gpu", "max_concurrent_runs": MAX_CONCURRENT_RUNS + 1},
        {"label": "gpu", "max_concurrent_runs": 2**64},
        {"label": "gpu", "max_concurrent_runs": "2"},
        {"label": "gpu", "max_concurrent_runs": True},
        {"label": "gpu", "max_concurrent_runs": 1.0},
        {"label": "gpu"},
        {"label": "gpu", "max_concurrent_runs": 1, "extra": 1},
        {"label": ["gpu"], "max_concurrent_runs": 1},
    ],
)
def test_bad_input_is_422_and_stores_nothing(tenant: TenantContext, body: dict[str, object]) -> None:
    response = tenant.raw(tenant.key("user")).post("/api/limits", json=body)

    assert response.status_code == 422, response.text
    assert tenant.admin.list_label_limits() == []


def test_deleting_an_unknown_or_invalid_label(tenant: TenantContext) -> None:
    http = tenant.raw(tenant.key("admin"))

    assert http.delete("/api/limits/nothing-here").status_code == 404
    assert http.delete("/api/limits/bad%20label").status_code == 422


@pytest.mark.parametrize(
    ("role", "post", "get", "delete"),
    [("admin", 200, 200, 200), ("user", 200, 200, 200), ("runner", 403, 200, 403), ("read", 403, 200, 403)],
)
def test_roles(tenant: TenantContext, role: str, post: int, get: int, delete: int) -> None:
    label = unique("gpu")
    tenant.admin.set_label_limit(label, 1)
    http = tenant.raw(tenant.key(role))

    outcomes = (
        http.post("/api/limits", json={"label": unique("new"), "max_concurrent_runs": 1}).status_code,
        http.get("/api/limits").status_code,
        http.delete(f"/api/limits/{label}").status_code,
    )

    assert outcomes == (post, get, delete)


def test_a_run_token_may_not_touch_limits(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")
    assert staged.token is not None
    http = tenant.raw(staged.token)

    assert http.get("/api/limits").status_code == 403
    assert http.post("/api/limits", json={"label": "gpu", "max_concurrent_runs": 1}).status_code == 403
    assert http.delete("/api/limits/gpu").status_code == 403


def test_tenants_limits_are_their_own(tenant: TenantContext, other_tenant: TenantContext) -> None:
    label = unique("gpu")
    tenant.admin.set_label_limit(label, 1)
    other = other_tenant.admin

    assert other.list_label_limits() == []
    response = other_tenant.raw(other_tenant.key("admin")).delete(f"/api/limits/{label}")
    assert response.status_code == 404
    assert [lim.label for lim in tenant.admin.list_label_limits()] == [label]

    # The other tenant's own limit of the same label bounds its runs only.
    other.set_label_limit(label, 5)
    assert [lim.max_concurrent_runs for lim in tenant.admin.list_label_limits()] == [1]


def test_another_tenants_runs_do_not_take_this_tenants_slots(
    tenant: TenantContext, other_tenant: TenantContext
) -> None:
    label = unique("gpu")
    for context in (tenant, other_tenant):
        context.admin.set_label_limit(label, 1)
        context.register_flow()
        context.admin.create_flow_run(flow_name="hello", labels=[label])

    for context in (tenant, other_tenant):
        runner = context.client(context.key("runner"))
        assert len(_claim(runner, [label])) == 1


def test_label_limits_per_tenant_are_bounded(
    tenant: TenantContext, api_database: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The bound is checked by the model; here with a small one, called in this process.
    monkeypatch.setattr(concurrency, "MAX_LABEL_LIMITS_PER_TENANT", 2)
    for label in ("a", "b"):
        with transaction(api_database) as session:
            concurrency.set_label_limit(session, tenant.id, LabelLimitSet(label=label, max_concurrent_runs=1))

    with pytest.raises(Conflict, match="2 label limits"), transaction(api_database) as session:
        concurrency.set_label_limit(session, tenant.id, LabelLimitSet(label="c", max_concurrent_runs=1))
    with transaction(api_database) as session:  # changing an existing one is still allowed
        changed = concurrency.set_label_limit(session, tenant.id, LabelLimitSet(label="a", max_concurrent_runs=7))
    assert changed.max_concurrent_runs == 7
    assert [lim.label for lim in tenant.admin.list_label_limits()] == ["a", "b"]

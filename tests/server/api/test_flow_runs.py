"""Flow runs over the API: creation (labels, parameters), reads, filters, transitions, cancel, explain, run tokens."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from baton.client import Client
from baton.exceptions import (
    ClientError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
)
from baton.schemas.responses import AgentRead, ClaimedRun, FlowRead, FlowRunRead, StateChanged
from baton.schemas.states import ALLOWED_TRANSITIONS, StateName
from server.harness import TenantContext

# --- creation: which flow, which labels ------------------------------------------------------------


@pytest.fixture
def labelled_flow(tenant: TenantContext) -> FlowRead:
    """Flow ``labelled``: flow labels [flow-label], run-config labels [rc-b, rc-a]."""
    return tenant.register_flow("labelled", labels=["flow-label"], run_config={"labels": ["rc-b", "rc-a"]})


def test_explicit_labels_win_and_are_normalised(user: Client, labelled_flow: FlowRead) -> None:
    run = user.create_flow_run(flow_name="labelled", labels=["x", "a", "x"])

    assert run.labels == ["a", "x"]


def test_run_config_labels_win_over_flow_labels(user: Client, labelled_flow: FlowRead) -> None:
    run = user.create_flow_run(flow_name="labelled")

    assert run.labels == ["rc-a", "rc-b"]


def test_flow_labels_apply_without_explicit_or_run_config_labels(tenant: TenantContext, user: Client) -> None:
    tenant.register_flow("plain", labels=["flow-b", "flow-a"])

    run = user.create_flow_run(flow_name="plain")

    assert run.labels == ["flow-a", "flow-b"]


def test_run_labels_are_fixed_at_creation(tenant: TenantContext, user: Client) -> None:
    tenant.register_flow("plain", labels=["old"])
    run = user.create_flow_run(flow_name="plain")

    tenant.register_flow("plain", labels=["new"])

    assert user.get_flow_run(run.id).labels == ["old"]
    assert user.create_flow_run(flow_name="plain").labels == ["new"]


def test_flow_name_takes_the_latest_version_unless_one_is_given(tenant: TenantContext, user: Client) -> None:
    first = tenant.register_flow("hello")
    second = tenant.register_flow("hello", labels=["v2"])

    latest = user.create_flow_run(flow_name="hello")
    pinned = user.create_flow_run(flow_name="hello", flow_version=1)
    by_id = user.create_flow_run(flow_id=first.id)

    assert (latest.flow_id, latest.flow_version) == (second.id, 2)
    assert (pinned.flow_id, pinned.flow_version) == (first.id, 1)
    assert (by_id.flow_id, by_id.flow_version, by_id.flow_name) == (first.id, 1, "hello")


def test_unknown_flow_is_404_with_advice(user: Client, flow: FlowRead) -> None:
    with pytest.raises(NotFoundError, match="flow 'nope' not found: register it first"):
        user.create_flow_run(flow_name="nope")
    with pytest.raises(NotFoundError, match="flow 'hello' version 9 not found"):
        user.create_flow_run(flow_name="hello", flow_version=9)
    with pytest.raises(NotFoundError, match="flow no-such-id not found"):
        user.create_flow_run(flow_id="no-such-id")


def test_run_without_flow_is_422(user: Client) -> None:
    with pytest.raises(ClientError, match="give flow_id or flow_name") as excinfo:
        user.create_flow_run()
    assert excinfo.value.status_code == 422


def test_run_gets_a_readable_name_unless_given_one(user: Client, flow: FlowRead) -> None:
    assert re.fullmatch(r"[a-z]+-[a-z]+", user.create_flow_run(flow_name="hello").name)
    assert user.create_flow_run(flow_name="hello", name="nightly").name == "nightly"


def test_scheduled_start_time_is_kept_as_the_same_instant(user: Client, flow: FlowRead) -> None:
    start = datetime(2031, 5, 4, 12, 30, tzinfo=timezone(timedelta(hours=2)))

    run = user.create_flow_run(flow_name="hello", scheduled_start_time=start)

    stored = user.get_flow_run(run.id).scheduled_start_time
    assert run.scheduled_start_time == stored == start
    assert stored.utcoffset() == timedelta(0)


def test_naive_scheduled_start_time_is_422(tenant: TenantContext, flow: FlowRead) -> None:
    response = tenant.raw(tenant.admin_key).post(
        "/api/flow_runs", json={"flow_name": "hello", "scheduled_start_time": "2031-01-01T09:00:00"}
    )

    assert response.status_code == 422
    assert "needs a timezone" in str(response.json()["detail"])


def test_run_starts_now_when_no_start_time_is_given(user: Client, flow: FlowRead) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)  # the server's clock is this machine's clock

    run = user.create_flow_run(flow_name="hello")

    assert before <= run.scheduled_start_time <= datetime.now(UTC) + timedelta(seconds=5)


# --- creation: parameters --------------------------------------------------------------------------

TYPED_SCHEMA = {
    "type": "object",
    "properties": {
        "n": {"type": "integer"},
        "ratio": {"type": "number"},
        "names": {"type": "array"},
        "opt": {"anyOf": [{"type": "string"}, {"type": "null"}]},
    },
    "required": ["n"],
}


@pytest.fixture
def typed_flow(tenant: TenantContext) -> FlowRead:
    return tenant.register_flow("typed", parameters_schema=TYPED_SCHEMA)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"n": 1, "bogus": 2}, "unknown parameter(s) bogus (the flow takes: n, names, opt, ratio)"),
        ({}, "missing required parameter(s) n"),
        ({"n": "3"}, "parameter 'n' must be integer, got str"),
        ({"n": True}, "parameter 'n' must be integer, got bool"),
        ({"n": 1.5}, "parameter 'n' must be integer, got float"),
        ({"n": 1, "ratio": "fast"}, "parameter 'ratio' must be number, got str"),
        ({"n": 1, "names": "ada"}, "parameter 'names' must be array, got str"),
        ({"n": 1, "opt": 5}, "parameter 'opt' must be string or null, got int"),
    ],
)
def test_parameters_that_do_not_fit_the_flow_are_422(
    user: Client, typed_flow: FlowRead, parameters: dict[str, Any], message: str
) -> None:
    with pytest.raises(ClientError) as excinfo:
        user.create_flow_run(flow_name="typed", parameters=parameters)

    assert excinfo.value.status_code == 422
    assert message in excinfo.value.detail


def test_every_parameter_problem_is_named_at_once(user: Client, typed_flow: FlowRead) -> None:
    with pytest.raises(ClientError) as excinfo:
        user.create_flow_run(flow_name="typed", parameters={"bogus": 1, "opt": 5})

    assert excinfo.value.detail == (
        "unknown parameter(s) bogus (the flow takes: n, names, opt, ratio); "
        "missing required parameter(s) n; parameter 'opt' must be string or null, got int"
    )


def test_fitting_parameters_are_stored(user: Client, typed_flow: FlowRead) -> None:
    parameters = {"n": 3, "ratio": 2, "names": ["a"], "opt": None}

    run = user.create_flow_run(flow_name="typed", parameters=parameters)

    assert run.parameters == parameters
    assert user.get_flow_run(run.id).parameters == parameters


# --- roles -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["read", "runner"])
def test_read_and_runner_keys_cannot_create_runs(tenant: TenantContext, flow: FlowRead, role: str) -> None:
    with pytest.raises(PermissionDeniedError, match=f"this key's role \\({role}\\) may not do this") as excinfo:
        tenant.client(tenant.key(role)).create_flow_run(flow_name="hello")

    assert excinfo.value.status_code == 403
    assert tenant.admin.list_flow_runs() == []


def test_read_key_reads_runs(reader: Client, run: FlowRunRead) -> None:
    assert reader.get_flow_run(run.id).id == run.id
    assert [r.id for r in reader.list_flow_runs()] == [run.id]


# --- reads -------------------------------------------------------------------------------------------


def test_get_returns_the_documented_fields(user: Client, flow: FlowRead, run: FlowRunRead) -> None:
    got = user.request("GET", f"/api/flow_runs/{run.id}")

    documented = {
        "id",
        "flow_name",
        "flow_version",
        "state",
        "state_message",
        "labels",
        "parameters",
        "agent_id",
        "scheduled_start_time",
        "states",
    }
    assert documented <= set(got)
    assert (got["id"], got["flow_name"], got["flow_version"]) == (run.id, "hello", 1)
    assert (got["state"], got["state_message"], got["agent_id"]) == ("Scheduled", None, None)
    assert (got["labels"], got["parameters"]) == ([], {"name": "Ada"})
    assert len(got["states"]) == 1
    assert set(got["states"][0]) == {"name", "message", "timestamp", "data"}
    assert got["states"][0]["name"] == "Scheduled"


def test_state_history_is_oldest_first_with_messages_and_data(
    tenant: TenantContext, runner: Client, agent: AgentRead, claimed: ClaimedRun
) -> None:
    run_id = claimed.flow_run.id
    runner.set_flow_run_state(run_id, "Submitted", "PID: 4242", {"pid": 4242})
    tenant.client(claimed.run_token).set_flow_run_state(run_id, "Running", "started")

    got = tenant.run(run_id)

    assert [s.name for s in got.states] == ["Scheduled", "Pending", "Submitted", "Running"]
    assert [s.message for s in got.states] == [None, "claimed by agent agent-1", "PID: 4242", "started"]
    assert got.states[2].data == {"pid": 4242}
    timestamps = [s.timestamp for s in got.states]
    assert timestamps == sorted(timestamps)
    assert (got.state, got.state_message, got.agent_id) == ("Running", "started", agent.id)
    assert got.deployment == {"pid": 4242}
    assert got.start_time is not None
    assert got.end_time is None


def test_a_state_change_preferring_a_minimal_answer_gets_the_new_state_only(
    tenant: TenantContext, runner: Client, claimed: ClaimedRun
) -> None:
    run_id = claimed.flow_run.id
    runner.set_flow_run_state(run_id, "Submitted", "PID: 4242", {"pid": 4242})
    path = f"/api/flow_runs/{run_id}/state"

    # When the run's process asks for Running with Prefer: return=minimal (among other preferences)
    answer = tenant.raw(claimed.run_token).post(
        path, json={"name": "Running", "message": "started"}, headers={"Prefer": "respond-async, return=minimal"}
    )

    # Then the answer is the run's id and new state only, and says the preference was applied
    assert answer.status_code == 200
    assert answer.headers["Preference-Applied"] == "return=minimal"
    assert answer.json() == {"id": run_id, "state": "Running", "state_message": "started"}
    # And the change is made as by a plain request
    got = tenant.run(run_id)
    assert (got.state, [s.name for s in got.states][-1], got.start_time is not None) == ("Running", "Running", True)
    # And the client's call reads it (the flow-run process's), as it reads an older server's whole run
    ended = tenant.client(claimed.run_token).change_flow_run_state(run_id, "Success", "done")
    assert (ended.id, ended.state, ended.state_message) == (run_id, "Success", "done")
    assert StateChanged.model_validate(got.model_dump(mode="json")).state == "Running"


def test_list_is_newest_first_and_filters_by_state_flow_and_limit(
    tenant: TenantContext, user: Client, flow: FlowRead
) -> None:
    # Given three runs of hello (one cancelled) and two of other, created in this order
    tenant.register_flow("other")
    hello = [user.create_flow_run(flow_name="hello").id for _ in range(3)]
    other = [user.create_flow_run(flow_name="other").id for _ in range(2)]
    user.cancel_flow_run(hello[1])
    newest_first = [*reversed(other), *reversed(hello)]

    # Then
    assert [r.id for r in user.list_flow_runs()] == newest_first
    assert [r.id for r in user.list_flow_runs(limit=2)] == newest_first[:2]
    assert [r.id for r in user.list_flow_runs(flow_name="other")] == list(reversed(other))
    assert [r.id for r in user.list_flow_runs(state="Cancelled")] == [hello[1]]
    assert [r.id for r in user.list_flow_runs(state="Scheduled", flow_name="hello")] == [hello[2], hello[0]]
    assert user.list_flow_runs(state="Running") == []
    assert user.list_flow_runs(flow_name="nope") == []


def test_list_pages_with_offset(user: Client, flow: FlowRead) -> None:
    ids = [user.create_flow_run(flow_name="hello").id for _ in range(5)][::-1]

    page = user.request("GET", "/api/flow_runs", params={"limit": 2, "offset": 2})

    assert [r["id"] for r in page] == ids[2:4]


# --- transitions ---------------------------------------------------------------------------------------

REACHABLE = ["Scheduled", "Pending", "Submitted", "Running", "Cancelling", "Success", "Failed", "Cancelled"]
# What an admin key may ask for through POST /state; Running is for run tokens only.
ADMIN_TARGETS = ["Scheduled", "Submitted", "Success", "Failed", "Cancelled"]
# Legal in the state machine but only for the server's recovery service: refused through the API.
SERVER_ONLY = {("Submitted", "Scheduled"), ("Running", "Scheduled")}


@pytest.mark.parametrize("source", REACHABLE)
def test_every_illegal_transition_is_409_naming_both_states(tenant: TenantContext, source: str) -> None:
    # Given a run in ``source``
    staged = tenant.stage(source)
    before = tenant.run(staged.id)
    assert before.state == source
    allowed = ALLOWED_TRANSITIONS[StateName(source)]
    attempts: list[tuple[Client, str]] = [
        (tenant.admin, t) for t in ADMIN_TARGETS if t not in allowed or (source, t) in SERVER_ONLY
    ]
    if staged.token and source not in ("Success", "Failed", "Cancelled") and StateName.RUNNING not in allowed:
        attempts.append((tenant.client(staged.token), "Running"))
    assert attempts

    # When each illegal target is asked for, then each is refused with 409
    for client, target in attempts:
        with pytest.raises(ConflictError) as excinfo:
            client.set_flow_run_state(staged.id, target, "should not happen")
        assert excinfo.value.status_code == 409
        assert f"cannot move a flow run from {source} to {target}" in excinfo.value.detail
        assert excinfo.value.current_state == source  # the refusal names it: no read needed to learn it

    # And the run is as it was
    after = tenant.run(staged.id)
    assert (after.state, len(after.states)) == (source, len(before.states))


def test_asking_for_pending_through_the_state_route_is_refused(tenant: TenantContext, run: FlowRunRead) -> None:
    with pytest.raises(ClientError, match=r"runs become Pending only by being claimed") as excinfo:
        tenant.admin.set_flow_run_state(run.id, "Pending")

    assert excinfo.value.status_code == 422
    assert tenant.run(run.id).state == "Scheduled"


def test_a_run_goes_through_its_whole_life(
    tenant: TenantContext, runner: Client, claimed: ClaimedRun, user: Client
) -> None:
    run_id = claimed.flow_run.id
    token = tenant.client(claimed.run_token)

    assert runner.set_flow_run_state(run_id, "Submitted", "PID: 7", {"pid": 7}).state == "Submitted"
    assert token.set_flow_run_state(run_id, "Running").state == "Running"
    done = token.set_flow_run_state(run_id, "Success", "all good")

    assert (done.state, done.state_message) == ("Success", "all good")
    assert done.end_time is not None
    assert done.start_time is not None
    assert done.start_time <= done.end_time
    assert [s.name for s in user.get_flow_run(run_id).states] == [
        "Scheduled",
        "Pending",
        "Submitted",
        "Running",
        "Success",
    ]


@pytest.mark.parametrize(
    ("role", "source", "target"),
    [
        ("admin", "Submitted", "Running"),  # Running is reported by the run itself
        ("user", "Pending", "Submitted"),
        ("user", "Pending", "Scheduled"),
        ("runner", "Running", "Success"),
        ("read", "Running", "Failed"),
        ("token", "Pending", "Submitted"),
        ("token", "Pending", "Scheduled"),
    ],
)
def test_role_may_not_set_state_outside_its_duty(tenant: TenantContext, role: str, source: str, target: str) -> None:
    staged = tenant.stage(source)
    client = tenant.client(staged.token if role == "token" else tenant.key(role))  # type: ignore[arg-type]

    with pytest.raises(PermissionDeniedError) as excinfo:
        client.set_flow_run_state(staged.id, target)

    assert excinfo.value.status_code == 403
    assert tenant.run(staged.id).state == source


def test_user_may_end_a_run_by_hand(tenant: TenantContext, user: Client) -> None:
    staged = tenant.stage("Running")

    assert user.set_flow_run_state(staged.id, "Failed", "marked failed by hand").state == "Failed"


def test_runner_key_changes_only_runs_claimed_by_its_own_agents(tenant: TenantContext) -> None:
    # Given a run claimed by an agent of runner key A, and a second runner key B
    staged = tenant.stage("Pending", runner=tenant.client(tenant.key("runner")))
    other_runner = tenant.client(tenant.new_key("runner"))

    # Then B may neither deploy nor fail nor release it
    for target in ("Submitted", "Failed", "Scheduled"):
        with pytest.raises(PermissionDeniedError, match="may only change runs claimed by its own agents"):
            other_runner.set_flow_run_state(staged.id, target)
    assert tenant.run(staged.id).state == "Pending"

    # And A may
    assert tenant.client(tenant.key("runner")).set_flow_run_state(staged.id, "Submitted").state == "Submitted"


def test_runner_key_cannot_touch_an_unclaimed_run(runner: Client, run: FlowRunRead) -> None:
    with pytest.raises(PermissionDeniedError, match="may only change runs claimed by its own agents"):
        runner.set_flow_run_state(run.id, "Cancelled")


# --- cancel ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["Scheduled", "Pending"])
def test_cancel_before_deployment_is_immediate(tenant: TenantContext, user: Client, source: str) -> None:
    staged = tenant.stage(source)

    cancelled = user.cancel_flow_run(staged.id)

    assert (cancelled.state, cancelled.state_message) == ("Cancelled", "cancelled before it was deployed")
    assert cancelled.end_time is not None


@pytest.mark.parametrize("source", ["Submitted", "Running"])
def test_cancel_of_a_deployed_run_asks_its_agent(tenant: TenantContext, user: Client, source: str) -> None:
    # Given a deployed run
    staged = tenant.stage(source)
    runner = tenant.client(tenant.key("runner"))
    assert staged.agent_id is not None
    assert runner.agent_heartbeat(staged.agent_id, []).cancel == []

    # When a user cancels it
    cancelling = user.cancel_flow_run(staged.id)

    # Then it is Cancelling, and the agent's next heartbeat answer lists it
    assert (cancelling.state, cancelling.state_message) == ("Cancelling", "cancellation requested")
    assert runner.agent_heartbeat(staged.agent_id, []).cancel == [staged.id]
    assert tenant.client(staged.token or "").flow_run_heartbeat(staged.id).state == "Cancelling"

    # And once the agent reports Cancelled it is listed no more
    assert runner.set_flow_run_state(staged.id, "Cancelled", "killed").state == "Cancelled"
    assert runner.agent_heartbeat(staged.agent_id, []).cancel == []


def test_cancel_of_a_cancelling_run_changes_nothing(tenant: TenantContext, user: Client) -> None:
    staged = tenant.stage("Cancelling")
    history = len(tenant.run(staged.id).states)

    again = user.cancel_flow_run(staged.id)

    assert again.state == "Cancelling"
    assert len(tenant.run(staged.id).states) == history


@pytest.mark.parametrize("final", ["Success", "Failed", "Cancelled"])
def test_cancel_of_a_final_run_is_409(tenant: TenantContext, user: Client, final: str) -> None:
    staged = tenant.stage(final)

    with pytest.raises(ConflictError, match=f"from {final} to Cancelled: the run already ended") as excinfo:
        user.cancel_flow_run(staged.id)

    assert excinfo.value.status_code == 409
    assert tenant.run(staged.id).state == final


@pytest.mark.parametrize("role", ["read", "runner"])
def test_read_and_runner_keys_cannot_cancel(tenant: TenantContext, run: FlowRunRead, role: str) -> None:
    with pytest.raises(PermissionDeniedError):
        tenant.client(tenant.key(role)).cancel_flow_run(run.id)
    assert tenant.run(run.id).state == "Scheduled"


def test_cancel_of_unknown_run_is_404(user: Client) -> None:
    with pytest.raises(NotFoundError, match="flow run nope not found"):
        user.cancel_flow_run("nope")

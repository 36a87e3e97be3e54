"""Prefect 1's flow runs and task runs over GraphQL, attacked (both databases): what a user key, a runner key, a read
key and another tenant's key may do to runs, task runs, logs and the agents' queue, and hostile inputs of each.

Every answer must be HTTP 200 with data, or errors coded as answers (never INTERNAL_SERVER_ERROR), and the server's
log must hold no fault's traceback.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest

from baton.server.shaping import MASK
from server.graphql.runs_support import (
    CANCEL,
    HEARTBEAT,
    INVALID,
    MIB,
    QUEUE,
    RENAME,
    RENAME_TASK,
    SET_STATES,
    SURROGATE,
    UNSTORABLE,
    ServerLog,
    Shared,
    answered,
    create_run,
    deep,
    new_run,
    now,
    ok,
    prefect1_flow,
    queue,
    queued,
    refused,
    register_agent,
    run_of,
    runs,
    send,
    set_state,
    set_task_state,
    started,
    state,
    task_info,
    task_run_of,
    write_logs,
)
from server.harness import TenantContext

# --- create_flow_run -------------------------------------------------------------------------------------------


def test_a_run_is_made_only_of_the_tenants_unarchived_prefect1_flows(
    tenant: TenantContext, other_tenant: TenantContext, server_log: ServerLog
) -> None:
    first = prefect1_flow(tenant)
    second = prefect1_flow(tenant, project=first.project_id)  # a new version: the first is archived
    assert second.version_group_id == first.version_group_id and second.id != first.id
    theirs = prefect1_flow(other_tenant, "theirs")
    baton = tenant.register_flow("native")

    assert "not found" in refused(create_run(tenant, str(uuid.uuid4())), "NOT_FOUND")
    refused(create_run(tenant, first), "BAD_USER_INPUT", "archived")
    refused(create_run(tenant, theirs), "NOT_FOUND")
    refused(create_run(tenant, baton.id), "NOT_FOUND")
    refused(create_run(tenant, "not-a-uuid"), INVALID)
    refused(create_run(tenant, None), "BAD_USER_INPUT", "One of flow_id or version_group_id")
    refused(create_run(tenant, None, version_group_id="no-such-group"), "NOT_FOUND", "no unarchived flows")
    refused(create_run(tenant, None, version_group_id=theirs.version_group_id), "NOT_FOUND")
    refused(create_run(tenant, second, parameters={"n": 1}), "BAD_USER_INPUT", "Required parameters")
    for role in ("read", "runner"):
        refused(create_run(tenant, second, key=tenant.key(role)), "FORBIDDEN")

    by_group = ok(create_run(tenant, None, version_group_id=first.version_group_id))["create_flow_run"]["id"]

    found = run_of(tenant, by_group)
    assert found["flow_id"] == second.id and (found["state"], found["version"]) == ("Scheduled", 1)
    assert found["parameters"] == {"n": 3, "k": 1} and found["labels"] == ["etl"]
    assert {row["task_id"] for row in found["task_runs"]} == set(second.tasks.values())
    assert runs(tenant) == [by_group] and runs(other_tenant) == []
    assert server_log.faults() == []


def test_hostile_run_inputs_are_refused_and_store_nothing(shared: Shared, server_log: ServerLog) -> None:
    tenant, flow = shared.tenant, shared.flow
    before = len(runs(tenant))
    cases: list[tuple[dict[str, Any], str | set[str], str | None]] = [
        ({"parameters": {"k": "nul\x00"}}, "BAD_USER_INPUT", UNSTORABLE),
        ({"parameters": {"k": SURROGATE}}, "BAD_USER_INPUT", UNSTORABLE),
        ({"parameters": {"k": deep(33)}}, "BAD_USER_INPUT", "nested deeper"),
        ({"parameters": {"k": "x" * MIB}}, "BAD_USER_INPUT", "at most 1048576 bytes"),
        ({"parameters": [1, 2]}, "BAD_USER_INPUT", "parameters must be a JSON object"),
        ({"parameters": "k=1"}, "BAD_USER_INPUT", "parameters must be a JSON object"),
        ({"parameters": {"n": 1}}, "BAD_USER_INPUT", "Required parameters"),
        ({"context": {"a": "\x00"}}, "BAD_USER_INPUT", UNSTORABLE),
        ({"context": 5}, "BAD_USER_INPUT", "context must be a JSON object"),
        ({"context": {"a": "x" * MIB}}, "BAD_USER_INPUT", "at most"),
        ({"context": {"a": deep(34)}}, "BAD_USER_INPUT", "nested deeper"),
        ({"run_config": "LocalRun"}, "BAD_USER_INPUT", "run_config must be a JSON object"),
        ({"run_config": {"labels": ["etl"], "env": {"A": SURROGATE}}}, "BAD_USER_INPUT", UNSTORABLE),
        ({"run_config": {"labels": "etl"}}, "BAD_USER_INPUT", "labels must be a list"),
        ({"run_config": {"labels": [1]}}, "BAD_USER_INPUT", "labels must be a list"),
        ({"labels": ["has space"]}, "BAD_USER_INPUT", "invalid label"),
        ({"labels": ["a,b"]}, "BAD_USER_INPUT", "invalid label"),
        ({"labels": [""]}, "BAD_USER_INPUT", "empty"),
        ({"labels": ["x" * 129]}, "BAD_USER_INPUT", "longer than"),
        ({"labels": [f"l{i}" for i in range(65)]}, "BAD_USER_INPUT", "at most 64 labels"),
        ({"labels": [SURROGATE]}, "BAD_USER_INPUT", "invalid label"),
        ({"labels": ["ok", None]}, INVALID, None),
        ({"flow_run_name": ""}, "BAD_USER_INPUT", "flow_run_name"),
        ({"flow_run_name": "x" * 201}, "BAD_USER_INPUT", "flow_run_name"),
        ({"flow_run_name": "a\x00b"}, "BAD_USER_INPUT", "flow_run_name"),
        ({"flow_run_name": 5}, INVALID, None),
        ({"idempotency_key": ""}, "BAD_USER_INPUT", "idempotency_key"),
        ({"idempotency_key": "k" * 201}, "BAD_USER_INPUT", "idempotency_key"),
        ({"scheduled_start_time": "next tuesday"}, INVALID, "timestamptz"),
        ({"scheduled_start_time": 1700000000}, INVALID, "timestamptz"),
        ({"flow_id": None, "version_group_id": "g\x00"}, {"NOT_FOUND", "BAD_USER_INPUT"}, None),
        ({"flow_id": None, "version_group_id": "g" * 100_000}, {"NOT_FOUND", "BAD_USER_INPUT"}, None),
        ({"flow_id": None, "version_group_id": ""}, "BAD_USER_INPUT", "One of flow_id"),
    ]

    for extra, code, words in cases:
        refused(create_run(tenant, flow, **extra), code, words)

    assert len(runs(tenant)) == before
    assert server_log.faults() == []


@pytest.mark.parametrize(
    "extra",
    [
        {"flow_run_name": SURROGATE},  # text no database stores
        {"idempotency_key": SURROGATE},
        {"flow_id": None, "version_group_id": SURROGATE},
        {"scheduled_start_time": "9999-12-31T23:59:59-10:00"},  # past UTC's range once in UTC
        {"scheduled_start_time": "0001-01-01T00:00:00+10:00"},  # before it
    ],
)
def test_run_inputs_that_once_faulted_are_refused(shared: Shared, server_log: ServerLog, extra: dict[str, Any]) -> None:
    before = len(runs(shared.tenant))

    refused(create_run(shared.tenant, shared.flow, **extra), {*INVALID, "NOT_FOUND"})

    assert len(runs(shared.tenant)) == before
    assert server_log.faults() == []


def test_an_idempotency_key_with_nul_is_refused_on_both_databases(
    request: pytest.FixtureRequest, shared: Shared, server_log: ServerLog
) -> None:
    before = len(runs(shared.tenant))

    refused(create_run(shared.tenant, shared.flow, idempotency_key="k\x00"), "BAD_USER_INPUT")

    assert len(runs(shared.tenant)) == before
    assert server_log.faults() == []


def test_non_finite_deep_and_huge_numbers_written_in_the_query_itself(shared: Shared, server_log: ServerLog) -> None:
    tenant, flow = shared.tenant, shared.flow
    before = len(runs(tenant))

    def literal(value: str) -> httpx.Response:
        return send(tenant, f'mutation {{ create_flow_run(input: {{flow_id: "{flow.id}", {value}}}) {{ id }} }}')

    refused(literal("parameters: {k: 1e999}"), "BAD_USER_INPUT", "finite")
    refused(literal("parameters: {k: 1}, context: {x: -1e999}"), "BAD_USER_INPUT", "finite")
    refused(literal("parameters: {k: " + "[" * 300 + "]" * 300 + "}"), INVALID)
    assert len(runs(tenant)) == before
    big = ok(create_run(tenant, flow, parameters={"k": 2**80, "n": -(2**70)}))["create_flow_run"]["id"]

    assert run_of(tenant, big)["parameters"] == {"k": 2**80, "n": -(2**70)}
    assert server_log.faults() == []


def test_an_idempotency_key_returns_its_run_and_refuses_another_request(
    tenant: TenantContext, other_tenant: TenantContext, server_log: ServerLog
) -> None:
    flow = prefect1_flow(tenant)
    theirs = prefect1_flow(other_tenant)

    first = ok(create_run(tenant, flow, idempotency_key="nightly"))["create_flow_run"]["id"]
    again = ok(create_run(tenant, flow, idempotency_key="nightly"))["create_flow_run"]["id"]
    other_parameters = refused(create_run(tenant, flow, idempotency_key="nightly", parameters={"k": 2}), "CONFLICT")
    other_name = refused(create_run(tenant, flow, idempotency_key="nightly", flow_run_name="x"), "CONFLICT")
    elsewhere = ok(create_run(other_tenant, theirs, idempotency_key="nightly"))["create_flow_run"]["id"]

    assert again == first != elsewhere
    assert "nightly" in other_parameters and first in other_parameters and "nightly" in other_name
    assert runs(tenant) == [first] and runs(other_tenant) == [elsewhere]
    found = run_of(tenant, first)
    assert (found["idempotency_key"], found["parameters"]) == ("nightly", {"n": 3, "k": 1})
    assert server_log.faults() == []


# --- set_flow_run_states ---------------------------------------------------------------------------------------


def test_a_state_that_is_not_a_prefect1_state_is_refused_and_changes_nothing(
    shared: Shared, server_log: ServerLog
) -> None:
    tenant = shared.tenant
    run_id = new_run(tenant, shared.flow)
    cases: list[tuple[Any, str | set[str], str | None]] = [
        ("Running", "BAD_USER_INPUT", "must be a serialized Prefect 1 state"),
        ([state("Running")], "BAD_USER_INPUT", "must be a serialized Prefect 1 state"),
        (None, INVALID, None),  # state: JSON! refuses null before the resolver
        ({"type": "Bogus"}, "BAD_USER_INPUT", "unknown state type 'Bogus'"),
        ({"type": None, "message": "no type"}, "BAD_USER_INPUT", "unknown state type"),
        ({"type": ["Running"]}, "BAD_USER_INPUT", "unknown state type"),
        ({"type": "x" * 100_000}, "BAD_USER_INPUT", "unknown state type"),
        (state("Running", message=5), "BAD_USER_INPUT", "state.message must be a string"),
        (state("Running", message="x" * 256 * 1024), "BAD_USER_INPUT", "at most 262144 bytes"),
        (state("Running", message="a\x00"), "BAD_USER_INPUT", UNSTORABLE),
        (state("Running", context={"k": SURROGATE}), "BAD_USER_INPUT", UNSTORABLE),
        (state("Running", context={"k": deep(33)}), "BAD_USER_INPUT", "nested deeper"),
        (state("Scheduled", start_time="soon"), "BAD_USER_INPUT", "ISO 8601"),
        (state("Scheduled", start_time=12), "BAD_USER_INPUT", "ISO 8601"),
        (state("Scheduled", start_time={"at": "noon"}), "BAD_USER_INPUT", "ISO 8601"),
    ]

    for value, code, words in cases:
        refused(set_state(tenant, run_id, value), code, words)
    refused(set_state(tenant, run_id, state("Running"), version=-1), "VERSION_LOCKING_ERROR")
    refused(set_state(tenant, run_id, state("Running"), version=2**31), INVALID)

    assert now(tenant, run_id) == ("Scheduled", 1)
    assert server_log.faults() == []


@pytest.mark.parametrize("start_time", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_a_start_time_past_utcs_range_is_refused(
    request: pytest.FixtureRequest, shared: Shared, server_log: ServerLog, start_time: str
) -> None:
    run_id = new_run(shared.tenant, shared.flow)

    refused(set_state(shared.tenant, run_id, state("Scheduled", start_time=start_time)), "BAD_USER_INPUT")

    assert now(shared.tenant, run_id) == ("Scheduled", 1)
    assert server_log.faults() == []


def test_the_version_lock_a_second_submitted_and_the_end_of_a_run(shared: Shared, server_log: ServerLog) -> None:
    tenant = shared.tenant
    run_id = new_run(tenant, shared.flow)

    ok(set_state(tenant, run_id, state("Submitted"), version=1))
    assert now(tenant, run_id) == ("Submitted", 2)
    for stale in (1, 0, 7):
        locked = refused(set_state(tenant, run_id, state("Running"), version=stale), "VERSION_LOCKING_ERROR")
        assert "version 2" in locked
    assert now(tenant, run_id) == ("Submitted", 2)
    refused(set_state(tenant, run_id, state("Submitted")), "CONFLICT", "already been submitted")
    refused(set_state(tenant, run_id, state("Submitted"), version=2), "CONFLICT", "already been submitted")
    assert now(tenant, run_id) == ("Submitted", 2)

    ok(set_state(tenant, run_id, state("Running"), version=2))
    refused(set_state(tenant, run_id, state("Running"), version=2), "VERSION_LOCKING_ERROR")  # a run runs once
    assert now(tenant, run_id) == ("Running", 3)
    ok(set_state(tenant, run_id, state("Success", "done"), version=3))
    assert now(tenant, run_id) == ("Success", 4)

    for kind in ("Running", "Scheduled", "Failed", "Submitted", "Cancelled", "Retrying", "Cancelling", "Looped"):
        refused(set_state(tenant, run_id, state(kind)), "CONFLICT")
    assert now(tenant, run_id) == ("Success", 4)
    assert tenant.run(run_id).state == "Success" and run_of(tenant, run_id)["state_message"] == "done"
    assert server_log.faults() == []


def test_a_state_of_no_baton_meaning_does_not_reopen_a_finished_run(shared: Shared, server_log: ServerLog) -> None:
    tenant = shared.tenant
    run_id = new_run(tenant, shared.flow)
    started(tenant, run_id)
    ok(set_state(tenant, run_id, state("Success", "done")))

    answers = [answered(set_state(tenant, run_id, state(kind))) for kind in ("Pending", "Queued", "ClientFailed")]

    assert [answer["errors"][0]["extensions"]["code"] for answer in answers if "errors" in answer] == ["CONFLICT"] * 3
    found = run_of(tenant, run_id)
    assert (found["state"], found["version"], found["state_message"]) == ("Success", 4, "done")
    assert server_log.faults() == []


def test_too_many_states_and_a_batch_changes_all_or_nothing(shared: Shared, server_log: ServerLog) -> None:
    tenant = shared.tenant
    first, second = new_run(tenant, shared.flow), new_run(tenant, shared.flow)
    many = [{"flow_run_id": first, "state": state("Scheduled")}] * 101
    mixed = [{"flow_run_id": first, "state": state("Submitted")}, {"flow_run_id": second, "state": {"type": "Nope"}}]
    absent = [{"flow_run_id": first, "state": state("Submitted")}, {"flow_run_id": str(uuid.uuid4()), "state": {}}]
    garbage = [{"flow_run_id": first, "state": state("Submitted")}, {"flow_run_id": "garbage", "state": {}}]

    refused(send(tenant, SET_STATES, {"input": {"states": many}}), "BAD_USER_INPUT", "at most 100 states")
    refused(send(tenant, SET_STATES, {"input": {"states": mixed}}), "BAD_USER_INPUT", "unknown state type")
    refused(send(tenant, SET_STATES, {"input": {"states": absent}}), {"BAD_USER_INPUT", "NOT_FOUND"})
    refused(send(tenant, SET_STATES, {"input": {"states": garbage}}), INVALID)

    assert now(tenant, first) == now(tenant, second) == ("Scheduled", 1)
    assert server_log.faults() == []


# --- who reaches a run -----------------------------------------------------------------------------------------


def test_a_read_key_and_another_tenant_reach_no_run(
    tenant: TenantContext, other_tenant: TenantContext, server_log: ServerLog
) -> None:
    flow = prefect1_flow(tenant)
    run_id = new_run(tenant, flow, flow_run_name="mine")
    parent = task_run_of(tenant, run_id, flow.tasks["add-1"])
    reader, stranger = tenant.key("read"), other_tenant.admin_key

    def attempts(caller: TenantContext, key: str) -> list[httpx.Response]:
        return [
            set_state(caller, run_id, state("Submitted"), key=key),
            send(caller, CANCEL, {"input": {"flow_run_id": run_id}}, key=key),
            write_logs(caller, [{"flow_run_id": run_id, "message": "hello"}], key=key),
            task_info(caller, run_id, flow.tasks["add-1"], 0, key=key),
            set_task_state(caller, parent, state("Success"), key=key),
            send(caller, HEARTBEAT, {"input": {"flow_run_id": run_id}}, key=key),
            send(caller, RENAME, {"input": {"flow_run_id": run_id, "name": "theirs"}}, key=key),
            send(caller, RENAME_TASK, {"input": {"task_run_id": parent, "name": "theirs"}}, key=key),
        ]

    for response in attempts(tenant, reader):
        refused(response, "FORBIDDEN")
    for response in attempts(other_tenant, stranger):
        refused(response, "NOT_FOUND")
    refused(queue(tenant, key=reader), "FORBIDDEN")
    refused(queue(tenant, key=tenant.key("user")), "FORBIDDEN")
    refused(send(other_tenant, QUEUE, {"input": {"tenant_id": tenant.id}}, key=stranger), "NOT_FOUND")
    task_run_info = "query($id: UUID!) { get_task_run_info(task_run_id: $id) { id } }"
    refused(send(other_tenant, task_run_info, {"id": parent}, key=stranger), "NOT_FOUND")
    peeks = ok(
        send(
            other_tenant,
            "query($run: uuid!, $task: uuid!) { flow_run_by_pk(id: $run) { id } task_run_by_pk(id: $task) { id } "
            "flow_run { id } task_run { id } }",
            {"run": run_id, "task": parent},
            key=stranger,
        )
    )

    assert peeks == {"flow_run_by_pk": None, "task_run_by_pk": None, "flow_run": [], "task_run": []}
    found = run_of(tenant, run_id, key=reader)  # a read key reads
    assert (found["state"], found["version"], found["name"], found["logs"]) == ("Scheduled", 1, "mine", [])
    assert {(row["state"], row["version"], row["map_index"]) for row in found["task_runs"]} == {("Pending", 0, -1)}
    assert {row["name"] for row in found["task_runs"]} == {"n", "nums-1", "add-1"}
    assert server_log.faults() == []


def test_a_baton_run_is_out_of_prefect1s_reach(shared: Shared, server_log: ServerLog) -> None:
    tenant = shared.tenant
    baton = tenant.admin.list_flows(name="native") or [tenant.register_flow("native")]
    baton_run = tenant.admin.create_flow_run(flow_name=baton[0].name).id

    refused(set_state(tenant, baton_run, state("Submitted")), "NOT_FOUND")
    refused(send(tenant, CANCEL, {"input": {"flow_run_id": baton_run}}), "NOT_FOUND")
    refused(send(tenant, HEARTBEAT, {"input": {"flow_run_id": baton_run}}), "NOT_FOUND")
    refused(send(tenant, RENAME, {"input": {"flow_run_id": baton_run, "name": "p1"}}), "NOT_FOUND")
    refused(task_info(tenant, baton_run, shared.flow.tasks["add-1"], 0), "NOT_FOUND")

    assert ok(send(tenant, "query($id: uuid!) { flow_run_by_pk(id: $id) { id } }", {"id": baton_run})) == {
        "flow_run_by_pk": None
    }
    assert baton_run not in runs(tenant)
    untouched = tenant.run(baton_run)
    assert untouched.state == "Scheduled" and untouched.name != "p1"
    assert server_log.faults() == []


def test_a_runner_key_moves_only_the_runs_its_own_agents_took(tenant: TenantContext, server_log: ServerLog) -> None:
    flow = prefect1_flow(tenant)
    run_id = new_run(tenant, flow)
    mine, other = tenant.key("runner"), tenant.new_key("runner")
    my_agent, their_agent = register_agent(tenant, mine), register_agent(tenant, other)
    parent = task_run_of(tenant, run_id, flow.tasks["add-1"])

    for header in (None, "", "not-an-agent", str(uuid.uuid4()), their_agent):
        refused(set_state(tenant, run_id, state("Submitted"), key=mine, agent=header), {"FORBIDDEN", "NOT_FOUND"})
    refused(set_state(tenant, run_id, state("Failed"), key=mine), "FORBIDDEN")
    refused(set_state(tenant, run_id, state("Failed"), key=mine, agent=my_agent), {"FORBIDDEN", "CONFLICT"})
    assert (now(tenant, run_id), run_of(tenant, run_id)["agent_id"]) == (("Scheduled", 1), None)
    assert queued(tenant, ["etl"]) == {run_id}

    ok(set_state(tenant, run_id, state("Submitted"), key=mine, agent=my_agent))
    assert (now(tenant, run_id), run_of(tenant, run_id)["agent_id"]) == (("Submitted", 2), my_agent)
    assert queued(tenant, ["etl"]) == set()

    for header in (None, their_agent):
        refused(set_state(tenant, run_id, state("Running"), key=other, agent=header), {"FORBIDDEN", "CONFLICT"})
    refused(write_logs(tenant, [{"flow_run_id": run_id, "message": "not mine"}], key=other), "FORBIDDEN")
    refused(task_info(tenant, run_id, flow.tasks["add-1"], 0, key=other), "FORBIDDEN")
    refused(set_task_state(tenant, parent, state("Success"), key=other), "FORBIDDEN")
    refused(send(tenant, HEARTBEAT, {"input": {"flow_run_id": run_id}}, key=other), "FORBIDDEN")
    refused(send(tenant, CANCEL, {"input": {"flow_run_id": run_id}}, key=other), "FORBIDDEN")
    assert now(tenant, run_id) == ("Submitted", 2)

    ok(set_state(tenant, run_id, state("Running"), key=mine))  # the flow runner: the agent's key, no header
    child = ok(task_info(tenant, run_id, flow.tasks["add-1"], 0, key=mine))["get_or_create_task_run_info"]
    ok(set_task_state(tenant, child["id"], state("Running"), version=child["version"], key=mine))
    ok(write_logs(tenant, [{"flow_run_id": run_id, "task_run_id": child["id"], "message": "mine"}], key=mine))
    ok(send(tenant, HEARTBEAT, {"input": {"flow_run_id": run_id}}, key=mine))
    refused(set_state(tenant, run_id, state("Success"), key=other, agent=their_agent), {"FORBIDDEN", "CONFLICT"})
    refused(set_state(tenant, run_id, state("Success"), key=other), "FORBIDDEN")
    ok(set_state(tenant, run_id, state("Success"), key=mine))

    found = run_of(tenant, run_id)
    assert (found["state"], found["agent_id"], found["version"]) == ("Success", my_agent, 4)
    assert [(line["message"], line["task_run_id"]) for line in found["logs"]] == [("mine", child["id"])]
    assert tenant.run(run_id).state == "Success"
    assert server_log.faults() == []


def test_a_user_keys_agent_header_naming_no_agent_of_the_tenant_is_no_agent(
    shared: Shared, other_tenant: TenantContext, server_log: ServerLog
) -> None:
    tenant = shared.tenant
    theirs = register_agent(other_tenant, other_tenant.key("runner"))

    for header in ("not-an-agent", str(uuid.uuid4()), theirs):
        run_id = new_run(tenant, shared.flow)
        ok(set_state(tenant, run_id, state("Submitted"), key=tenant.key("user"), agent=header))
        found = run_of(tenant, run_id)
        assert (found["state"], found["agent_id"]) == ("Submitted", None), header
    assert server_log.faults() == []


def test_a_read_key_sees_run_config_env_values_masked_as_over_rest(shared: Shared, server_log: ServerLog) -> None:
    tenant = shared.tenant
    run_config = {"type": "LocalRun", "env": {"TOKEN": "s3cret"}, "labels": ["etl"]}
    run_id = new_run(tenant, shared.flow, run_config=run_config)
    query = "query($id: uuid!) { flow_run_by_pk(id: $id) { run_config flow { run_config serialized_flow } } }"

    as_admin = ok(send(tenant, query, {"id": run_id}))["flow_run_by_pk"]
    as_reader = ok(send(tenant, query, {"id": run_id}, key=tenant.key("read")))["flow_run_by_pk"]

    assert as_admin["run_config"]["env"] == {"TOKEN": "s3cret"}
    assert as_reader["run_config"]["env"] == {"TOKEN": MASK}
    assert as_reader["run_config"]["labels"] == ["etl"]
    assert "s3cret" not in json.dumps(as_reader)
    assert server_log.faults() == []

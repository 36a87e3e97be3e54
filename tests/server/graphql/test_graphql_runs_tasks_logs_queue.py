"""Prefect 1's task runs, logs, the agents' queue and cancellation over GraphQL, attacked (both databases); see
``test_graphql_runs.py`` for runs and states."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from server.graphql.runs_support import (
    CANCEL,
    INVALID,
    QUEUE,
    REGISTER_AGENT,
    RENAME,
    RENAME_TASK,
    SET_TASK_STATES,
    SURROGATE,
    UNSTORABLE,
    ServerLog,
    Shared,
    answered,
    new_run,
    now,
    ok,
    prefect1_flow,
    queue,
    queued,
    refused,
    run_of,
    send,
    set_state,
    set_task_state,
    started,
    state,
    task_info,
    task_run_of,
    write_logs,
)
from server.harness import TenantContext, unique

# --- task runs -------------------------------------------------------------------------------------------------


def test_get_or_create_task_run_info_keeps_one_task_run_per_task_and_index(
    shared: Shared, server_log: ServerLog
) -> None:
    tenant, flow = shared.tenant, shared.flow
    elsewhere = prefect1_flow(tenant, unique("elsewhere"))
    run_id = new_run(tenant, flow)
    before = run_of(tenant, run_id)["task_runs"]
    assert sorted(row["task_id"] for row in before) == sorted(flow.tasks.values())
    assert {(row["map_index"], row["state"], row["version"]) for row in before} == {(-1, "Pending", 0)}
    add = flow.tasks["add-1"]

    parent = ok(task_info(tenant, run_id, add))["get_or_create_task_run_info"]
    first = ok(task_info(tenant, run_id, add, 3))["get_or_create_task_run_info"]
    second = ok(task_info(tenant, run_id, add, 3))["get_or_create_task_run_info"]
    refused(task_info(tenant, run_id, elsewhere.tasks["add-1"], 0), "NOT_FOUND", "is not a task of")
    refused(task_info(tenant, run_id, str(uuid.uuid4()), 0), "NOT_FOUND")
    refused(task_info(tenant, run_id, "not-a-uuid", 0), INVALID)
    refused(task_info(tenant, str(uuid.uuid4()), add, 0), "NOT_FOUND")
    for index in (-2, -(2**31), 10_000_001):
        refused(task_info(tenant, run_id, add, index), "BAD_USER_INPUT", "map_index")
    refused(task_info(tenant, run_id, add, 2**31), INVALID)

    assert parent["id"] == task_run_of(tenant, run_id, add)
    assert first == second and first["id"] not in {row["id"] for row in before}
    assert (first["state"], first["version"]) == ("Pending", 0)
    after = run_of(tenant, run_id)["task_runs"]
    assert len(after) == len(before) + 1
    assert [row["name"] for row in after if row["id"] == first["id"]] == ["add-1[3]"]
    assert server_log.faults() == []


def test_task_run_states_follow_the_flow_run_and_the_version_lock(shared: Shared, server_log: ServerLog) -> None:
    tenant = shared.tenant
    run_id = new_run(tenant, shared.flow)
    task_run = task_run_of(tenant, run_id, shared.flow.tasks["add-1"])

    def task_now() -> tuple[str, int]:
        [found] = [row for row in run_of(tenant, run_id)["task_runs"] if row["id"] == task_run]
        return found["state"], found["version"]

    refused(set_task_state(tenant, task_run, state("Running"), version=0), "CONFLICT", "not in a running state")
    assert task_now() == ("Pending", 0)
    ok(set_state(tenant, run_id, state("Submitted")))
    refused(set_task_state(tenant, task_run, state("Running"), version=0), "CONFLICT", "not in a running state")
    ok(set_state(tenant, run_id, state("Running")))

    ok(set_task_state(tenant, task_run, state("Running"), version=0))
    assert task_now() == ("Running", 1)
    refused(set_task_state(tenant, task_run, state("Running"), version=0), "VERSION_LOCKING_ERROR")
    refused(set_task_state(tenant, task_run, {"type": "Bogus"}, version=1), "BAD_USER_INPUT", "unknown state type")
    refused(set_task_state(tenant, task_run, "Success", version=1), "BAD_USER_INPUT")
    refused(set_task_state(tenant, task_run, state("Success", message="x\x00")), "BAD_USER_INPUT", UNSTORABLE)
    refused(set_task_state(tenant, str(uuid.uuid4()), state("Success")), "NOT_FOUND")
    many = [{"task_run_id": task_run, "state": state("Success"), "version": 1}] * 1001
    refused(send(tenant, SET_TASK_STATES, {"input": {"states": many}}), "BAD_USER_INPUT", "at most 1000")
    assert task_now() == ("Running", 1)

    ok(set_task_state(tenant, task_run, state("Success"), version=1))
    assert task_now() == ("Success", 2)
    assert server_log.faults() == []


@pytest.mark.parametrize(("query", "field"), [(RENAME, "flow_run_id"), (RENAME_TASK, "task_run_id")])
def test_a_run_or_task_run_name_no_database_could_store_is_refused(
    request: pytest.FixtureRequest, shared: Shared, server_log: ServerLog, query: str, field: str
) -> None:
    tenant = shared.tenant
    run_id = new_run(tenant, shared.flow, flow_run_name="kept")
    task_run = task_run_of(tenant, run_id, shared.flow.tasks["add-1"])
    target = run_id if field == "flow_run_id" else task_run
    for name in ("", "x" * 501, "a\x00"):
        refused(send(tenant, query, {"input": {field: target, "name": name}}), "BAD_USER_INPUT", "name")

    refused(send(tenant, query, {"input": {field: target, "name": SURROGATE}}), "BAD_USER_INPUT", "name")

    found = run_of(tenant, run_id)
    assert found["name"] == "kept" and "add-1" in {row["name"] for row in found["task_runs"]}
    assert server_log.faults() == []


# --- write_run_logs --------------------------------------------------------------------------------------------


def test_write_run_logs_refuses_hostile_lines_and_reads_levels(shared: Shared, server_log: ServerLog) -> None:
    tenant = shared.tenant
    run_id = new_run(tenant, shared.flow)

    def line(**extra: Any) -> dict[str, Any]:
        return {"flow_run_id": run_id, "message": "m", **extra}

    refused(write_logs(tenant, [line()] * 1001), "BAD_USER_INPUT", "at most 1000 log lines")
    cases: list[tuple[dict[str, Any], str | set[str], str]] = [
        ({"timestamp": "yesterday"}, INVALID, "timestamptz"),
        ({"timestamp": 1700000000}, INVALID, "timestamptz"),
        ({"timestamp": "9999-12-31T23:59:59-10:00"}, INVALID, "out of range"),
        ({"timestamp": "0001-01-01T00:00:00+10:00"}, INVALID, "out of range"),
        ({"message": "x" * 100_001}, "BAD_USER_INPUT", "message"),
        ({"message": "a\x00b"}, "BAD_USER_INPUT", "message"),
        ({"message": SURROGATE}, "BAD_USER_INPUT", "message"),
        ({"name": "n\x00"}, "BAD_USER_INPUT", "name"),
        ({"task_run_id": "garbage"}, INVALID, "task_run_id"),
        ({"task_run_id": "x" * 37}, INVALID, "task_run_id"),
        ({"flow_run_id": "garbage"}, INVALID, "flow_run_id"),
        ({"flow_run_id": str(uuid.uuid4())}, "NOT_FOUND", "not found"),
    ]
    for bad, code, words in cases:
        refused(write_logs(tenant, [line(), line(**bad)]), code, words)
    assert run_of(tenant, run_id)["logs"] == []

    levels = ["LOUD", "debug", "Warning", None, SURROGATE, "", "ERROR", "critical", "Level 5", "x" * 10_000]
    ok(write_logs(tenant, [line(message=f"m{i}", level=level) for i, level in enumerate(levels)]))
    ok(write_logs(tenant, [line(message="naive time", timestamp="2026-01-01T00:00:00", name="x" * 600)]))

    found = run_of(tenant, run_id)["logs"]
    served = ["INFO", "DEBUG", "WARNING", "INFO", "INFO", "INFO", "ERROR", "CRITICAL", "INFO", "INFO"]
    assert [(row["message"], row["level"]) for row in found] == [
        *((f"m{i}", level) for i, level in enumerate(served)),
        ("naive time", "INFO"),
    ]
    assert found[-1]["name"] == "x" * 500
    assert server_log.faults() == []


def test_a_level_named_notset_counts_as_info(shared: Shared) -> None:
    run_id = new_run(shared.tenant, shared.flow)

    ok(write_logs(shared.tenant, [{"flow_run_id": run_id, "message": "m", "level": "NOTSET"}]))

    assert [row["level"] for row in run_of(shared.tenant, run_id)["logs"]] == ["INFO"]


# --- the agents' queue -----------------------------------------------------------------------------------------


def test_the_queue_holds_the_tenants_due_prefect1_runs_by_the_label_rule_and_baton_never_claims_them(
    tenant: TenantContext, other_tenant: TenantContext, server_log: ServerLog
) -> None:
    flow = prefect1_flow(tenant)
    etl = new_run(tenant, flow)  # the flow's run config: labels ["etl"]
    bare = new_run(tenant, flow, labels=[])
    wide = new_run(tenant, flow, labels=["etl", "gpu"])
    later = new_run(tenant, flow, labels=["etl"], scheduled_start_time="2999-01-01T00:00:00Z")
    submitted = new_run(tenant, flow, labels=["etl"])
    ok(set_state(tenant, submitted, state("Submitted")))
    baton = tenant.register_flow("native")
    baton_run = tenant.admin.create_flow_run(flow_name=baton.name).id
    theirs = new_run(other_tenant, prefect1_flow(other_tenant), labels=[])

    assert queued(tenant, ["etl"]) == {etl}
    assert queued(tenant, ["etl", "gpu", "more"]) == {etl, wide}
    assert queued(tenant, []) == queued(tenant, None) == {bare}
    assert queued(tenant, ["gpu"]) == queued(tenant, ["other"]) == set()
    assert queued(tenant, ["etl"], before="3000-01-01T00:00:00Z") == {etl, later}
    assert queued(tenant, ["etl"], before="2000-01-01T00:00:00Z") == set()
    assert queued(other_tenant, []) == {theirs}
    refused(queue(tenant, tenant_id=other_tenant.id), "NOT_FOUND")
    refused(queue(tenant, tenant_id="not-a-uuid"), INVALID)

    runner = tenant.client(tenant.key("runner"))
    unlabelled = runner.register_agent(unique("baton"), "local", [])
    labelled = runner.register_agent(unique("baton"), "local", ["etl", "gpu"])
    assert [claimed.flow_run.id for claimed in runner.claim(labelled.id, limit=10).runs] == []
    assert [claimed.flow_run.id for claimed in runner.claim(unlabelled.id, limit=10).runs] == [baton_run]
    raw = tenant.raw(tenant.key("runner")).post(f"/api/agents/{unlabelled.id}/claim", json={"limit": 10})
    assert raw.status_code == 200 and raw.json()["runs"] == []

    assert queued(tenant, []) == {bare}  # the Baton run, claimed now, was never in it
    for run_id in (etl, bare, wide, later):
        assert now(tenant, run_id) == ("Scheduled", 1)
    assert server_log.faults() == []


@pytest.mark.parametrize(
    "extra",
    [
        {"labels": [SURROGATE]},  # a label no database stores
        {"labels": [f"l{i}" for i in range(70_000)]},  # past PostgreSQL's bind parameters: once told as API_ERROR
        {"before": "9999-12-31T23:59:59-10:00"},  # past UTC's range once in UTC
    ],
)
def test_hostile_queue_reads_are_answers_not_faults(
    shared: Shared, server_log: ServerLog, extra: dict[str, Any]
) -> None:
    tenant = shared.tenant

    answer = answered(send(tenant, QUEUE, {"input": {"tenant_id": tenant.id, **extra}}, key=tenant.key("runner")))

    if "errors" in answer:
        assert answer["errors"][0]["extensions"]["code"] in INVALID, answer
    else:
        assert answer["data"]["get_runs_in_queue"]["flow_run_ids"] == []
    assert server_log.faults() == []


def test_queue_reads_with_odd_labels_or_times_are_answers(shared: Shared, server_log: ServerLog) -> None:
    tenant = shared.tenant
    for extra in ({"labels": ["has space", "x" * 1000]}, {"labels": ["nul\x00"]}, {"before": "next tuesday"}):
        answer = answered(send(tenant, QUEUE, {"input": {"tenant_id": tenant.id, **extra}}, key=tenant.key("runner")))
        if "errors" in answer:
            assert answer["errors"][0]["extensions"]["code"] in INVALID, answer
        else:
            assert answer["data"]["get_runs_in_queue"]["flow_run_ids"] == []
    assert server_log.faults() == []


# --- cancelling ------------------------------------------------------------------------------------------------


def test_cancel_flow_run_by_the_state_a_run_is_in(shared: Shared, server_log: ServerLog) -> None:
    tenant = shared.tenant
    scheduled, running, ended = (new_run(tenant, shared.flow, labels=["cancel"]) for _ in range(3))
    started(tenant, running)
    started(tenant, ended)
    ok(set_state(tenant, ended, state("Success", "done")))

    def cancel(run_id: str, key: str | None = None) -> Any:
        return send(tenant, CANCEL, {"input": {"flow_run_id": run_id}}, key=key)

    refused(cancel(scheduled, tenant.key("runner")), "FORBIDDEN")
    refused(cancel(str(uuid.uuid4())), "NOT_FOUND")
    refused(cancel("garbage"), INVALID)
    assert ok(cancel(scheduled, tenant.key("user"))) == {"cancel_flow_run": {"state": "Cancelled"}}
    assert ok(cancel(running)) == {"cancel_flow_run": {"state": "Cancelling"}}
    assert ok(cancel(ended)) == {"cancel_flow_run": {"state": "Success"}}
    assert ok(cancel(scheduled)) == {"cancel_flow_run": {"state": "Cancelled"}}

    cancelled = run_of(tenant, scheduled)
    assert cancelled["state"] == "Cancelled" and tenant.run(scheduled).state == "Cancelled"
    assert {row["state"] for row in cancelled["task_runs"]} == {"Cancelled"}
    assert (run_of(tenant, running)["state"], tenant.run(running).state) == ("Cancelling", "Cancelling")
    assert now(tenant, ended) == ("Success", 4)
    refused(set_state(tenant, scheduled, state("Submitted")), "CONFLICT")
    refused(set_state(tenant, scheduled, state("Running")), "CONFLICT")
    assert queued(tenant, ["cancel"]) == set()
    assert server_log.faults() == []


def test_a_rest_cancel_of_a_submitted_prefect1_run_ends_it_and_locks_out_its_runner(
    shared: Shared, server_log: ServerLog
) -> None:
    tenant = shared.tenant
    run_id = new_run(tenant, shared.flow)
    ok(set_state(tenant, run_id, state("Submitted"), version=1))

    assert tenant.client(tenant.key("user")).cancel_flow_run(run_id).state == "Cancelled"

    assert now(tenant, run_id) == ("Cancelled", 3)
    refused(set_state(tenant, run_id, state("Running"), version=2), "VERSION_LOCKING_ERROR")
    refused(set_state(tenant, run_id, state("Running"), version=3), "CONFLICT")
    refused(set_state(tenant, run_id, state("Running")), "CONFLICT")
    assert tenant.run(run_id).state == "Cancelled" and now(tenant, run_id) == ("Cancelled", 3)
    assert server_log.faults() == []


def test_a_rest_cancel_of_a_prefect1_run_cancels_its_task_runs_as_cancel_flow_run_does(shared: Shared) -> None:
    run_id = new_run(shared.tenant, shared.flow)

    shared.tenant.admin.cancel_flow_run(run_id)

    found = run_of(shared.tenant, run_id)
    assert found["state"] == "Cancelled" and {row["state"] for row in found["task_runs"]} == {"Cancelled"}


# --- the log ---------------------------------------------------------------------------------------------------


def test_a_refusal_is_not_logged(shared: Shared, server_log: ServerLog) -> None:
    run_id = new_run(shared.tenant, shared.flow)

    refused(set_state(shared.tenant, run_id, state("Submitted"), key=shared.tenant.key("read")), "FORBIDDEN")
    refused(set_state(shared.tenant, run_id, {"type": "Bogus"}), "BAD_USER_INPUT")

    assert [entry for entry in server_log.entries() if "Traceback" in entry] == []


# --- agent configurations --------------------------------------------------------------------------------------

CONFIGS = "{ agent_config { id name settings } }"
CREATE_CONFIG = "mutation($input: create_agent_config_input!) { create_agent_config(input: $input) { id } }"
UPDATE_CONFIG = "mutation($input: update_agent_config_input!) { update_agent_config(input: $input) { success } }"
DELETE_CONFIG = "mutation($input: delete_agent_config_input!) { delete_agent_config(input: $input) { success } }"


def test_agent_configs_are_the_tenants_and_managed_by_people(
    tenant: TenantContext, other_tenant: TenantContext, server_log: ServerLog
) -> None:
    made = ok(send(tenant, CREATE_CONFIG, {"input": {"name": "k8s", "settings": {"a": 1}}}))["create_agent_config"]
    config_id = made["id"]
    for role in ("runner", "read"):
        refused(send(tenant, CREATE_CONFIG, {"input": {"name": "x"}}, key=tenant.key(role)), "FORBIDDEN")
    for bad in (
        {"settings": [1]},
        {"settings": {"a": SURROGATE}},
        {"settings": {"a": "x" * 70_000}},
        {"name": "x" * 201},
    ):
        refused(send(tenant, CREATE_CONFIG, {"input": bad}), "BAD_USER_INPUT")
    refused(send(tenant, CREATE_CONFIG, {"input": {"tenant_id": other_tenant.id}}), "NOT_FOUND")
    ok(send(tenant, UPDATE_CONFIG, {"input": {"agent_config_id": config_id, "settings": {"b": 2}}}))
    refused(send(other_tenant, UPDATE_CONFIG, {"input": {"agent_config_id": config_id, "settings": {}}}), "NOT_FOUND")

    seen = ok(send(tenant, CONFIGS, key=tenant.key("runner")))["agent_config"]
    theirs = ok(send(other_tenant, CONFIGS))["agent_config"]
    registered = send(tenant, REGISTER_AGENT, {"input": {"type": "LocalAgent", "agent_config_id": str(uuid.uuid4())}})

    assert seen == [{"id": config_id, "name": "k8s", "settings": {"b": 2}}] and theirs == []
    refused(registered, "NOT_FOUND", "agent config")
    ok(send(tenant, DELETE_CONFIG, {"input": {"agent_config_id": config_id}}))
    assert ok(send(tenant, CONFIGS))["agent_config"] == []
    assert server_log.faults() == []

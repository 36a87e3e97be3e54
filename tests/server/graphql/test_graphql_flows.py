"""Prefect 1's flow registration over GraphQL on a real server (both databases): versions, version groups,
idempotency, tasks and edges, the ``flow`` queries Prefect 1's CLI sends, and what Baton refuses."""

from __future__ import annotations

import base64
import copy
import gzip
import json
from typing import Any

import pytest

from server.graphql.test_graphql_endpoint import ask, data, error
from server.graphql.test_graphql_projects import create as create_project
from server.harness import TenantContext

CREATE = "mutation($input: create_flow_input!) { create_flow(input: $input) { id } }"
COMPRESSED = (
    "mutation($input: create_flow_from_compressed_string_input!) { create_flow_from_compressed_string(input: $input)"
    " { id } }"
)
FLOWS = (
    "query($where: flow_bool_exp) { flow(where: $where, order_by: [{name: asc}, {version: desc}]) "
    "{ id name version archived version_group_id flow_group_id core_version project { name } parameters run_config "
    "serialized_flow } }"
)


def serialized(name: str = "etl", labels: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """A flow as Prefect 1.4.1 serializes it (abridged to what the server reads): a parameter, two tasks."""
    return {
        "name": name,
        "type": "prefect.core.flow.Flow",
        "__version__": "1.4.1",
        "schedule": None,
        "parameters": [
            {"name": "n", "slug": "n", "default": 3, "required": False},
            {"name": "k", "slug": "k", "default": None, "required": True},
        ],
        "tasks": [
            {"name": "nums", "slug": "nums-1", "type": "prefect.tasks.core.function.FunctionTask", "max_retries": 0},
            {"name": "add", "slug": "add-1", "type": "prefect.tasks.core.function.FunctionTask", "max_retries": 2},
        ],
        "edges": [
            {"upstream_task": {"slug": "n"}, "downstream_task": {"slug": "nums-1"}, "key": "n", "mapped": False},
            {"upstream_task": {"slug": "nums-1"}, "downstream_task": {"slug": "add-1"}, "key": "x", "mapped": True},
        ],
        "run_config": {"type": "LocalRun", "labels": labels or ["etl"], "env": None},
        "storage": {"type": "Local", "directory": "/tmp/flows", "flows": {name: "/tmp/flows/x.prefect"}},
        **extra,
    }


def with_parameter_tasks(flow: dict[str, Any]) -> dict[str, Any]:
    """Prefect 1 serializes Parameters as tasks too: the edges from ``n`` need it."""
    flow = copy.deepcopy(flow)
    flow["tasks"].insert(0, {"name": "n", "slug": "n", "type": "prefect.core.parameter.Parameter"})
    return flow


def register(tenant: TenantContext, project_id: str, flow: dict[str, Any], key: str | None = None, **extra: Any) -> Any:
    return ask(
        tenant, CREATE, key=key, variables={"input": {"project_id": project_id, "serialized_flow": flow, **extra}}
    )


def flows(tenant: TenantContext, where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = data(ask(tenant, FLOWS, variables={"where": where}))["flow"]
    return found


def test_a_registered_flow_is_a_baton_flow_with_its_parameters_labels_and_tasks(tenant: TenantContext) -> None:
    project = create_project(tenant, "loads")

    flow_id = data(register(tenant, project, with_parameter_tasks(serialized())))["create_flow"]["id"]

    [found] = flows(tenant)
    assert (found["id"], found["name"], found["version"], found["archived"]) == (flow_id, "etl", 1, False)
    assert found["project"] == {"name": "loads"} and found["core_version"] == "1.4.1"
    assert [parameter["name"] for parameter in found["parameters"]] == ["n", "k"]
    assert found["run_config"]["labels"] == ["etl"]
    tasks = found["serialized_flow"]["tasks"]
    assert [task["slug"] for task in tasks] == ["n", "nums-1", "add-1"] and all(len(task["id"]) == 36 for task in tasks)
    baton = tenant.admin.get_flow(flow_id)
    assert (baton.name, baton.version, baton.labels) == ("etl", 1, ["etl"])
    assert baton.parameters_schema["required"] == ["k"]
    assert baton.parameters_schema["properties"]["n"] == {"default": 3}


def test_a_new_version_archives_the_others_and_a_repeated_idempotency_key_makes_none(tenant: TenantContext) -> None:
    project = create_project(tenant, "loads")
    flow = with_parameter_tasks(serialized())

    first = data(register(tenant, project, flow, idempotency_key="k1"))["create_flow"]["id"]
    second = data(register(tenant, project, flow, idempotency_key="k2"))["create_flow"]["id"]
    again = data(register(tenant, project, flow, idempotency_key="k2"))["create_flow"]["id"]

    assert again == second != first
    found = {row["version"]: row for row in flows(tenant)}
    assert sorted(found) == [1, 2]
    assert (found[1]["archived"], found[2]["archived"]) == (True, False)
    assert found[1]["version_group_id"] == found[2]["version_group_id"]
    assert found[1]["flow_group_id"] == found[2]["flow_group_id"]


def test_the_compressed_string_prefect_register_sends_and_garbage_or_a_bomb_refused(tenant: TenantContext) -> None:
    project = create_project(tenant, "loads")
    packed = base64.b64encode(gzip.compress(json.dumps(with_parameter_tasks(serialized())).encode())).decode()
    bomb = base64.b64encode(gzip.compress(b"[" * 40 * 1024 * 1024)).decode()

    def send(text: str) -> Any:
        return ask(tenant, COMPRESSED, variables={"input": {"project_id": project, "serialized_flow": text}})

    assert data(send(packed))["create_flow_from_compressed_string"]["id"]
    assert error(send("not base64 at all"))["message"] == "Unable to decompress serialized flow"
    assert error(send(base64.b64encode(b"plain").decode()))["message"] == "Unable to decompress serialized flow"
    refused = error(send(bomb))
    assert refused["extensions"]["code"] == "BAD_USER_INPUT" and "inflates" in refused["message"]
    assert len(flows(tenant)) == 1


def test_the_cli_queries_latest_per_name_and_by_project_name(tenant: TenantContext) -> None:
    loads, reports = create_project(tenant, "loads"), create_project(tenant, "reports")
    for _ in range(2):
        register(tenant, loads, with_parameter_tasks(serialized("etl")))
    register(tenant, reports, with_parameter_tasks(serialized("daily")))
    latest = (
        "{ flow(where: {_and: {name: {_eq: null}, version: {_eq: null}, project: {name: {_eq: null}}}},"
        " order_by: {name: asc, version: desc}, distinct_on: name, limit: 10) { name version project { name } } }"
    )

    assert data(ask(tenant, latest))["flow"] == [
        {"name": "daily", "version": 1, "project": {"name": "reports"}},
        {"name": "etl", "version": 2, "project": {"name": "loads"}},
    ]
    assert [row["name"] for row in flows(tenant, {"project": {"name": {"_eq": "reports"}}})] == ["daily"]
    assert [row["version"] for row in flows(tenant, {"project": {"id": {"_eq": loads}}})] == [2, 1]


def test_tasks_and_edges_registered_apart_as_flow_register_sends_them(tenant: TenantContext) -> None:
    project = create_project(tenant, "loads")
    flow = with_parameter_tasks(serialized())
    tasks, edges = flow.pop("tasks"), flow.pop("edges")
    flow_id = data(register(tenant, project, flow))["create_flow"]["id"]

    def send(field: str, values: list[Any]) -> Any:
        kind = "tasks" if field == "register_tasks" else "edges"
        query = f"mutation($input: {field}_input!) {{ {field}(input: $input) {{ success }} }}"
        return ask(tenant, query, variables={"input": {"flow_id": flow_id, f"serialized_{kind}": values}})

    assert data(send("register_tasks", tasks)) == {"register_tasks": {"success": True}}
    assert data(send("register_tasks", tasks[:1])) == {"register_tasks": {"success": True}}  # known slugs: kept
    assert data(send("register_edges", edges)) == {"register_edges": {"success": True}}
    unknown = error(send("register_edges", [{"upstream_task": {"slug": "nope"}, "downstream_task": {"slug": "n"}}]))

    assert "reference tasks that do not exist" in unknown["message"]
    [found] = flows(tenant)
    assert [task["slug"] for task in found["serialized_flow"]["tasks"]] == ["n", "nums-1", "add-1"]
    assert len(found["serialized_flow"]["edges"]) == 2
    assert tenant.admin.get_flow(flow_id).tasks == ["n", "nums", "add"]


@pytest.mark.parametrize(
    ("flow", "words"),
    [
        (serialized("etl/daily"), "not a Baton flow name"),
        (serialized(edges=[{"upstream_task": {"slug": "x"}, "downstream_task": {"slug": "y"}}]), "do not exist"),
        (serialized(run_config={"labels": "etl"}), "labels"),
        (serialized(parameters={"n": 1}), "parameters"),
        ([1, 2], "must be an object"),
    ],
)
def test_flows_baton_cannot_keep_are_refused_with_the_reason(tenant: TenantContext, flow: Any, words: str) -> None:
    found = error(register(tenant, create_project(tenant, "loads"), flow))

    assert found["extensions"]["code"] == "BAD_USER_INPUT" and words in found["message"], found
    assert flows(tenant) == []


def test_names_are_the_tenants_across_projects_and_kinds(tenant: TenantContext) -> None:
    loads, reports = create_project(tenant, "loads"), create_project(tenant, "reports")
    register(tenant, loads, with_parameter_tasks(serialized("etl")))
    tenant.register_flow("native")

    elsewhere = error(register(tenant, reports, with_parameter_tasks(serialized("etl"))))
    native = error(register(tenant, loads, with_parameter_tasks(serialized("native"))))
    baton_side = tenant.raw(tenant.admin_key).post(
        "/api/flows", json={"name": "etl", "source": "from baton import flow\n", "entrypoint": "etl"}
    )

    assert "registered in another project" in elsewhere["message"]
    assert "is a Baton flow" in native["message"]
    assert baton_side.status_code == 422 and "is a Prefect 1 flow" in baton_side.json()["detail"]


def test_rest_starts_a_run_for_prefect_1_s_agents_that_baton_s_agents_never_claim(tenant: TenantContext) -> None:
    project = create_project(tenant, "loads")
    data(register(tenant, project, with_parameter_tasks(serialized())))
    http = tenant.raw(tenant.admin_key)
    agent = http.post("/api/agents", json={"name": "baton-agent", "type": "local", "labels": ["etl"]}).json()

    missing = http.post("/api/flow_runs", json={"flow_name": "etl", "parameters": {}})
    answer = http.post("/api/flow_runs", json={"flow_name": "etl", "parameters": {"k": 1}})
    claimed = http.post(f"/api/agents/{agent['id']}/claim", json={"limit": 5, "wait_seconds": 0})
    queue = ask(
        tenant,
        'mutation($t: UUID!) { get_runs_in_queue(input: {tenant_id: $t, labels: ["etl"]}) { flow_run_ids } }',
        variables={"t": tenant.id},
    )

    assert missing.status_code == 422 and "Required parameters were not supplied" in missing.json()["detail"]
    assert answer.status_code == 201, answer.text
    run = answer.json()
    assert run["kind"] == "prefect1" and run["parameters"] == {"n": 3, "k": 1}
    assert claimed.status_code == 200 and claimed.json()["runs"] == []
    assert data(queue)["get_runs_in_queue"]["flow_run_ids"] == [run["id"]]
    tasks = http.get(f"/api/flow_runs/{run['id']}/task_runs").json()
    assert sorted(task["task_name"] for task in tasks) == ["add-1", "n", "nums-1"]
    assert {task["state"] for task in tasks} == {"Pending"}


def test_a_project_holding_flows_is_not_deleted_and_counts_them(tenant: TenantContext) -> None:
    project = create_project(tenant, "loads")
    for _ in range(2):
        register(tenant, project, with_parameter_tasks(serialized("etl")))
    register(tenant, project, with_parameter_tasks(serialized("other")))
    counts = (
        "{ project { names: flows_aggregate(distinct_on: name) { aggregate { count } } "
        "versions: flows_aggregate { aggregate { count } } } }"
    )

    refused = error(
        ask(
            tenant,
            "mutation($input: delete_project_input!) { delete_project(input: $input) { success } }",
            variables={"input": {"project_id": project}},
        )
    )

    assert refused["extensions"]["code"] == "CONFLICT" and "'etl', 'other'" in refused["message"]
    assert data(ask(tenant, counts))["project"] == [
        {"names": {"aggregate": {"count": 2}}, "versions": {"aggregate": {"count": 3}}}
    ]


@pytest.mark.parametrize("role", ["runner", "read"])
def test_only_admin_and_user_keys_register(tenant: TenantContext, role: str) -> None:
    project = create_project(tenant, "loads")

    assert error(register(tenant, project, serialized(), key=tenant.key(role)))["extensions"]["code"] == "FORBIDDEN"


def test_another_tenants_project_and_flows_are_out_of_reach(tenant: TenantContext, other_tenant: TenantContext) -> None:
    project = create_project(tenant, "loads")
    flow_id = data(register(tenant, project, with_parameter_tasks(serialized())))["create_flow"]["id"]

    into = error(register(other_tenant, project, serialized("theirs")))
    peek = data(ask(other_tenant, f'{{ flow_by_pk(id: "{flow_id}") {{ id }} }}'))

    assert into["extensions"]["code"] == "NOT_FOUND"
    assert peek == {"flow_by_pk": None} and flows(other_tenant) == []


@pytest.mark.parametrize(
    ("flow", "words"),
    [
        (serialized(description="x"), None),  # a control: the flow below differs by one bad value each
        (serialized(extra_field="\ud800"), "surrogate"),
        (serialized(extra_field="nul\x00"), "NUL"),
        (serialized(__version__="1" * 65), "__version__"),
        (serialized("etl\n"), "not a Baton flow name"),
    ],
)
def test_values_no_database_could_serve_back_are_refused_before_storing(
    tenant: TenantContext, flow: dict[str, Any], words: str | None
) -> None:
    answer = register(tenant, create_project(tenant, "loads"), with_parameter_tasks(flow))

    if words is None:
        assert data(answer)["create_flow"]["id"]
    else:
        found = error(answer)
        assert found["extensions"]["code"] == "BAD_USER_INPUT" and words in found["message"], found
        assert flows(tenant) == []
    assert tenant.raw(tenant.admin_key).get("/api/flows").status_code == 200


@pytest.mark.parametrize(
    ("field", "value"),
    [("idempotency_key", "k" * 201), ("version_group_id", "g" * 201), ("description", "d\x00")],
)
def test_inputs_too_long_or_unstorable_are_refused_on_both_databases(
    tenant: TenantContext, field: str, value: str
) -> None:
    found = error(
        register(tenant, create_project(tenant, "loads"), with_parameter_tasks(serialized()), **{field: value})
    )

    assert found["extensions"]["code"] == "BAD_USER_INPUT" and field in found["message"], found


def test_one_registration_per_request_however_many_aliases(tenant: TenantContext) -> None:
    project = create_project(tenant, "loads")
    twice = (
        "mutation($input: create_flow_input!) { a: create_flow(input: $input) { id } b: create_flow(input: $input)"
        " { id } }"
    )
    many_reads = "{ " + " ".join(f"f{i}: flow {{ id }}" for i in range(11)) + " }"

    refused = error(ask(tenant, twice, variables={"input": {"project_id": project, "serialized_flow": serialized()}}))
    reads = error(ask(tenant, many_reads))

    assert "at most 1 root field" in refused["message"] and "at most 10 root field" in reads["message"]
    assert flows(tenant) == []


def test_edges_sent_again_are_kept_once(tenant: TenantContext) -> None:
    project = create_project(tenant, "loads")
    flow = with_parameter_tasks(serialized())
    edges = flow["edges"]
    flow_id = data(register(tenant, project, flow))["create_flow"]["id"]
    query = "mutation($input: register_edges_input!) { register_edges(input: $input) { success } }"

    for _ in range(3):
        data(ask(tenant, query, variables={"input": {"flow_id": flow_id, "serialized_edges": edges}}))

    assert len(flows(tenant)[0]["serialized_flow"]["edges"]) == 2


def test_a_version_group_of_another_flow_is_refused(tenant: TenantContext) -> None:
    project = create_project(tenant, "loads")
    data(register(tenant, project, with_parameter_tasks(serialized("a"))))
    group = flows(tenant)[0]["version_group_id"]

    found = error(register(tenant, project, with_parameter_tasks(serialized("b")), version_group_id=group))

    assert "belongs to another flow" in found["message"]
    assert [(row["name"], row["archived"]) for row in flows(tenant)] == [("a", False)]


def test_an_empty_or_matches_nothing(tenant: TenantContext) -> None:
    data(register(tenant, create_project(tenant, "loads"), with_parameter_tasks(serialized())))

    assert flows(tenant, {"_or": []}) == []
    assert len(flows(tenant, {"_and": []})) == 1


def test_a_run_token_a_flows_own_code_holds_reads_only_who_it_is(tenant: TenantContext) -> None:
    project = create_project(tenant, "loads")
    token = tenant.stage("Running").token
    assert token is not None

    who = data(ask(tenant, "{ auth_info { tenant_id api_token_scope } }", key=token))
    refused = [
        error(ask(tenant, "{ project { id } }", key=token)),
        error(ask(tenant, "{ flow { id } }", key=token)),
        error(register(tenant, project, serialized(), key=token)),
        error(
            ask(
                tenant,
                CREATE.replace("create_flow_input", "create_project_input").replace("create_flow", "create_project"),
                key=token,
                variables={"input": {"name": "by-a-run"}},
            )
        ),
    ]

    assert who == {"auth_info": {"tenant_id": tenant.id, "api_token_scope": "RUN"}}
    assert [found["extensions"]["code"] for found in refused] == ["FORBIDDEN"] * 4
    assert data(ask(tenant, "{ project { name } }"))["project"] == [{"name": "loads"}]

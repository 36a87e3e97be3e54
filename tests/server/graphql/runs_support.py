"""What the tests of Prefect 1's runs over GraphQL share (``test_graphql_runs*.py``): the operations, requests as
Prefect 1's client sends them, answers that must never be server faults, the server's log, and Prefect 1 flows."""

from __future__ import annotations

import atexit
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from server.graphql.test_graphql_flows import register, serialized, with_parameter_tasks
from server.graphql.test_graphql_projects import create as create_project
from server.harness import TenantContext, unique

CREATE_RUN = "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }"
SET_STATES = (
    "mutation($input: set_flow_run_states_input!) { set_flow_run_states(input: $input) { states { id status } } }"
)
SET_TASK_STATES = (
    "mutation($input: set_task_run_states_input!) { set_task_run_states(input: $input) { states { id status } } }"
)
TASK_INFO = (
    "mutation($input: get_or_create_task_run_info_input!) { get_or_create_task_run_info(input: $input) "
    "{ id version state } }"
)
WRITE_LOGS = "mutation($input: write_run_logs_input!) { write_run_logs(input: $input) { success error } }"
QUEUE = "mutation($input: get_runs_in_queue_input!) { get_runs_in_queue(input: $input) { flow_run_ids } }"
CANCEL = "mutation($input: cancel_flow_run_input!) { cancel_flow_run(input: $input) { state } }"
REGISTER_AGENT = "mutation($input: register_agent_input!) { register_agent(input: $input) { id } }"
HEARTBEAT = (
    "mutation($input: update_flow_run_heartbeat_input!) { update_flow_run_heartbeat(input: $input) { success } }"
)
RENAME = "mutation($input: set_flow_run_name_input!) { set_flow_run_name(input: $input) { success } }"
RENAME_TASK = "mutation($input: set_task_run_name_input!) { set_task_run_name(input: $input) { success } }"
RUN = (
    "query($id: uuid!) { flow_run_by_pk(id: $id) { id flow_id name labels parameters context run_config version "
    "state state_message agent_id idempotency_key scheduled_start_time "
    "task_runs(order_by: [{map_index: asc}, {id: asc}]) { id task_id map_index state version name } "
    "logs(order_by: {id: asc}) { level name message task_run_id } } }"
)
RUNS = "{ flow_run(limit: 1000) { id } }"
# A value graphql-core refuses while it coerces the variables (a bad uuid, time or Int) is told as either.
INVALID = {"BAD_USER_INPUT", "GRAPHQL_VALIDATION_FAILED"}
SURROGATE = "\ud800"
UNSTORABLE = "may not contain NUL characters"
MIB = 1024 * 1024


# --- requests and answers -------------------------------------------------------------------------------------

# One client for a test process's requests: a client per request costs more CPU (its SSL context) than most requests.
_HTTP: list[httpx.Client] = []


def _client() -> httpx.Client:
    if not _HTTP:
        _HTTP.append(httpx.Client(timeout=30))
        atexit.register(_HTTP[0].close)
    return _HTTP[0]


def send(
    tenant: TenantContext, query: str, variables: Any = None, key: str | None = None, agent: str | None = None
) -> httpx.Response:
    """A GraphQL request as Prefect 1's client sends it; ``agent``: its X-PREFECT-AGENT-ID header."""
    headers = {"Authorization": f"Bearer {key or tenant.admin_key}", "Content-Type": "application/json"}
    if agent is not None:
        headers["X-PREFECT-AGENT-ID"] = agent
    # ASCII JSON (json.dumps' default): a lone surrogate travels as its escape, as from any client.
    body = json.dumps({"query": query, "variables": variables}).encode()
    return _client().post(f"{tenant.server.url}/graphql", content=body, headers=headers)


def answered(response: httpx.Response) -> dict[str, Any]:
    """The body of an answer: HTTP 200, and no error of it a server fault."""
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    for found in body.get("errors") or []:
        assert found["extensions"]["code"] not in ("INTERNAL_SERVER_ERROR", "API_ERROR"), body
    return body


def ok(response: httpx.Response) -> Any:
    body = answered(response)
    assert "errors" not in body, body
    return body["data"]


def refused(response: httpx.Response, code: str | set[str], words: str | None = None) -> str:
    """The one error of an answer, of ``code`` (or one of them) and saying ``words``; its message."""
    body = answered(response)
    assert len(body.get("errors") or []) == 1, body
    found = body["errors"][0]
    assert found["extensions"]["code"] in ({code} if isinstance(code, str) else code), found
    message: str = found["message"]
    assert words is None or words in message, found
    return message


# --- the server's log ------------------------------------------------------------------------------------------

_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ ", re.MULTILINE)


class ServerLog:
    """What the worker's shared server logs from a test's start on (each pytest worker has servers of its own)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = path.stat().st_size if path.exists() else 0

    def entries(self) -> list[str]:
        with self.path.open("rb") as log:
            log.seek(self.start)
            text = log.read().decode(errors="replace")
        starts = [match.start() for match in _ENTRY.finditer(text)] + [len(text)]
        return [text[begin:end] for begin, end in itertools.pairwise(starts)]

    def faults(self) -> list[str]:
        """Entries with a traceback, but ariadne's log of refusals (``test_a_refusal_is_not_logged``)."""
        return [
            entry
            for entry in self.entries()
            if "Traceback" in entry and " baton.graphql.ariadne: " not in entry.splitlines()[0]
        ]


# --- flows and runs --------------------------------------------------------------------------------------------


@dataclass
class Prefect1Flow:
    id: str
    tasks: dict[str, str]  # slug: task id
    version_group_id: str
    project_id: str


def prefect1_flow(
    tenant: TenantContext, name: str = "etl", labels: list[str] | None = None, project: str | None = None
) -> Prefect1Flow:
    """A version of a Prefect 1 flow registered through create_flow: Parameters n (default 3) and k (required),
    tasks nums and add (mapped), run config labels ``labels`` (["etl"])."""
    project = project or create_project(tenant, unique("project"))
    flow_id = ok(register(tenant, project, with_parameter_tasks(serialized(name, labels))))["create_flow"]["id"]
    query = "query($id: uuid!) { flow_by_pk(id: $id) { version_group_id serialized_flow } }"
    found = ok(send(tenant, query, {"id": flow_id}))["flow_by_pk"]
    tasks = {task["slug"]: task["id"] for task in found["serialized_flow"]["tasks"]}
    return Prefect1Flow(flow_id, tasks, found["version_group_id"], project)


@dataclass
class Shared:
    """A tenant of a module's own with a Prefect 1 flow, for tests that count what they add (no isolation needed)."""

    tenant: TenantContext
    flow: Prefect1Flow


def create_run(tenant: TenantContext, flow: Prefect1Flow | str | None, key: str | None = None, **extra: Any) -> Any:
    flow_id = flow.id if isinstance(flow, Prefect1Flow) else flow
    return send(tenant, CREATE_RUN, {"input": {"flow_id": flow_id, "parameters": {"k": 1}, **extra}}, key=key)


def new_run(tenant: TenantContext, flow: Prefect1Flow, **extra: Any) -> str:
    run_id: str = ok(create_run(tenant, flow, **extra))["create_flow_run"]["id"]
    return run_id


def run_of(tenant: TenantContext, run_id: str, key: str | None = None) -> Any:
    return ok(send(tenant, RUN, {"id": run_id}, key=key))["flow_run_by_pk"]


def runs(tenant: TenantContext) -> list[str]:
    return [row["id"] for row in ok(send(tenant, RUNS))["flow_run"]]


def state(kind: str, message: Any = None, **extra: Any) -> dict[str, Any]:
    """A state as Prefect 1.4.1's StateSchema serializes it."""
    return {
        "type": kind,
        "message": message or f"{kind} state",
        "context": {},
        "cached_inputs": {},
        "_result": {"type": "NoResultType", "__version__": "1.4.1"},
        "__version__": "1.4.1",
        **extra,
    }


def set_state(
    tenant: TenantContext,
    run_id: str,
    value: Any,
    version: int | None = None,
    key: str | None = None,
    agent: str | None = None,
) -> httpx.Response:
    item = {"flow_run_id": run_id, "state": value, "version": version}
    return send(tenant, SET_STATES, {"input": {"states": [item]}}, key=key, agent=agent)


def now(tenant: TenantContext, run_id: str) -> tuple[str, int]:
    """The Prefect 1 state type and version of a run."""
    query = "query($id: uuid!) { flow_run_by_pk(id: $id) { state version } }"
    found = ok(send(tenant, query, {"id": run_id}))["flow_run_by_pk"]
    return found["state"], found["version"]


def set_task_state(
    tenant: TenantContext, task_run_id: str, value: Any, version: int | None = None, key: str | None = None
) -> httpx.Response:
    item = {"task_run_id": task_run_id, "state": value, "version": version}
    return send(tenant, SET_TASK_STATES, {"input": {"states": [item]}}, key=key)


def task_info(
    tenant: TenantContext, run_id: str, task_id: str, map_index: int | None = None, key: str | None = None
) -> httpx.Response:
    return send(tenant, TASK_INFO, {"input": {"flow_run_id": run_id, "task_id": task_id, "map_index": map_index}}, key)


def task_run_of(tenant: TenantContext, run_id: str, task_id: str) -> str:
    """The task run of ``task_id`` (map index -1) that the run got when it was made."""
    rows = run_of(tenant, run_id)["task_runs"]
    [found] = [row for row in rows if row["task_id"] == task_id and row["map_index"] == -1]
    task_run_id: str = found["id"]
    return task_run_id


def write_logs(tenant: TenantContext, lines: list[dict[str, Any]], key: str | None = None) -> httpx.Response:
    return send(tenant, WRITE_LOGS, {"input": {"logs": lines}}, key=key)


def queue(tenant: TenantContext, labels: list[str] | None = None, key: str | None = None, **extra: Any) -> Any:
    return send(tenant, QUEUE, {"input": {"tenant_id": tenant.id, "labels": labels, **extra}}, key=key)


def queued(tenant: TenantContext, labels: list[str] | None = None, **extra: Any) -> set[str]:
    return set(ok(queue(tenant, labels, **extra))["get_runs_in_queue"]["flow_run_ids"])


def register_agent(tenant: TenantContext, key: str, labels: list[str] | None = None) -> str:
    variables = {"input": {"type": "LocalAgent", "name": unique("agent"), "labels": labels or []}}
    agent_id: str = ok(send(tenant, REGISTER_AGENT, variables, key=key))["register_agent"]["id"]
    return agent_id


def started(tenant: TenantContext, run_id: str) -> None:
    """``run_id`` taken from the queue and running, as an agent and its flow runner move it with an admin key."""
    ok(set_state(tenant, run_id, state("Submitted")))
    ok(set_state(tenant, run_id, state("Running")))


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value

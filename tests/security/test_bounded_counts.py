"""Issue 8, item 7: what a list holds is bounded, and so is each page of it.

A run token could create task runs without end (each with a 100 KB message), and a runner key agents without end
(every one listed, and weighed against every run by ``explain``). Now a run holds at most
``MAX_TASK_RUNS_PER_RUN`` task runs and a tenant at most ``MAX_AGENTS_PER_TENANT`` agents (409 past them), and the
task-run and agent lists stop at the byte budget with an ``X-Next-Cursor``, which the client follows.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from baton.exceptions import ConflictError
from baton.schemas.responses import NEXT_CURSOR_HEADER
from security.access_support import start_server
from server.harness import TenantContext, unique
from support import ServerProcess

BUDGET = 16 * 1024
TASK_RUNS = 6
AGENTS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(
        tmp_path_factory.mktemp("bounded-counts"),
        BATON__SERVER__MAX_LIST_BYTES=str(BUDGET),
        BATON__SERVER__MAX_TASK_RUNS_PER_RUN=str(TASK_RUNS),
        BATON__SERVER__MAX_AGENTS_PER_TENANT=str(AGENTS),
    )
    yield process
    process.stop()


@pytest.fixture
def tenant(server: ServerProcess) -> Iterator[TenantContext]:
    context = TenantContext.create(server)
    yield context
    context.close()


def test_a_run_token_creates_task_runs_up_to_the_limit_and_pages_stay_in_budget(tenant: TenantContext) -> None:
    # Given a running flow whose process records task runs with long messages
    staged = tenant.stage("Running")
    assert staged.token is not None
    token = tenant.client(staged.token)
    made = [token.create_task_run(staged.id, f"task-{i}", "Running", "m" * 6_000).id for i in range(TASK_RUNS)]

    # When it records one more, it is refused
    with pytest.raises(ConflictError, match="MAX_TASK_RUNS_PER_RUN"):
        token.create_task_run(staged.id, "one-too-many", "Running")

    # And a page of the list stops at the byte budget, naming where the next one starts; the client reads them all
    first = tenant.raw(tenant.admin_key).get(f"/api/flow_runs/{staged.id}/task_runs")
    assert first.status_code == 200
    assert 1 <= len(first.json()) < TASK_RUNS and len(first.content) <= BUDGET
    assert first.headers.get(NEXT_CURSOR_HEADER)
    assert [t.id for t in tenant.admin.list_task_runs(staged.id)] == made


def test_task_runs_created_together_past_the_limit_are_refused_all_together(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")
    assert staged.token is not None
    token = tenant.client(staged.token)
    token.create_task_runs(staged.id, [{"task_name": f"a[{i}]"} for i in range(TASK_RUNS - 2)])

    with pytest.raises(ConflictError, match="MAX_TASK_RUNS_PER_RUN"):
        token.create_task_runs(staged.id, [{"task_name": f"b[{i}]"} for i in range(3)])

    assert len(tenant.admin.list_task_runs(staged.id)) == TASK_RUNS - 2
    assert len(token.create_task_runs(staged.id, [{"task_name": f"c[{i}]"} for i in range(2)])) == 2


def test_a_tenant_has_at_most_its_limit_of_agents_and_their_list_pages(tenant: TenantContext) -> None:
    runner = tenant.client(tenant.key("runner"))
    labels = [f"label-{i:02d}-" + "x" * 100 for i in range(64)]  # ~7 KB of labels: two agents fill a page
    made = [runner.register_agent(unique("agent"), "local", labels).id for _ in range(AGENTS)]

    with pytest.raises(ConflictError, match="MAX_AGENTS_PER_TENANT"):
        runner.register_agent(unique("agent"), "local", [])
    # ...while an existing identity still registers again (a restarted agent)
    again = runner.register_agent(tenant.admin.list_agents()[0].name, "local", labels)
    assert again.id == made[0]

    first = tenant.raw(tenant.admin_key).get("/api/agents")
    assert 1 <= len(first.json()) < AGENTS and first.headers.get(NEXT_CURSOR_HEADER)
    assert [a.id for a in tenant.admin.list_agents()] == made


@pytest.mark.parametrize("path", ["/api/agents", "/api/flow_runs/{run}/task_runs"])
@pytest.mark.parametrize("cursor", ["garbage", "WyJ4Il0", "Wy0xXQ", "WzEuNV0", "W3RydWVd"])
def test_forged_offset_cursors_are_422(tenant: TenantContext, path: str, cursor: str) -> None:
    run = tenant.stage("Scheduled")
    response = tenant.raw(tenant.admin_key).get(path.format(run=run.id), params={"cursor": cursor})
    assert response.status_code == 422, response.text

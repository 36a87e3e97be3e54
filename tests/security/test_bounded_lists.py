"""Issue 8, item 7: list answers are bounded in bytes.

Before, three concurrent run lists (big parameters, limit 1000) took the server to 3.2 GB. Now list items leave the
heavy fields out unless asked (``?include=parameters,states``), and an answer stops at the server's byte budget with
a cursor (``X-Next-Cursor``) where the next page starts; log pages stop at the same budget.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from baton.server.models import cursors
from security.access_support import start_server
from server.harness import TenantContext
from support import ServerProcess

BUDGET = 64 * 1024
BIG = 20_000  # characters of one run's parameters: three runs pass the budget
RUNS = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = start_server(tmp_path_factory.mktemp("bounded-lists"), BATON__SERVER__MAX_LIST_BYTES=str(BUDGET))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def tenant(server: ServerProcess) -> Iterator[TenantContext]:
    context = TenantContext.create(server)
    yield context
    context.close()


@pytest.fixture(scope="module")
def big_runs(tenant: TenantContext) -> list[str]:
    """Ids of RUNS runs with big parameters, newest first."""
    tenant.register_flow()
    user = tenant.client(tenant.key("user"))
    created = [user.create_flow_run(flow_name="hello", parameters={"name": f"{i}" * BIG}).id for i in range(RUNS)]
    return created[::-1]


@pytest.fixture
def http(tenant: TenantContext) -> httpx.Client:
    return tenant.raw(tenant.key("read"))


def test_list_items_leave_heavy_fields_out_unless_asked(http: httpx.Client, big_runs: list[str]) -> None:
    response = http.get("/api/flow_runs", params={"limit": 1000})

    items = response.json()
    assert [item["id"] for item in items] == big_runs
    assert all(item["parameters"] == {} and item["omitted"] == ["parameters", "states"] for item in items)
    assert len(response.content) < BUDGET
    assert "X-Next-Cursor" not in response.headers


def test_heavy_lists_stop_at_the_byte_budget_and_page_by_cursor(http: httpx.Client, big_runs: list[str]) -> None:
    # When a client asks for everything, parameters included, and follows the cursor
    seen: list[str] = []
    sizes: list[int] = []
    params: dict[str, str | int] = {"limit": 1000, "include": "parameters,states"}
    while True:
        response = http.get("/api/flow_runs", params=params)
        assert response.status_code == 200, response.text
        sizes.append(len(response.content))
        for item in response.json():
            assert len(item["parameters"]["name"]) == BIG and item["omitted"] == []
            assert [s["name"] for s in item["states"]] == ["Scheduled"]
            seen.append(item["id"])
        cursor = response.headers.get("X-Next-Cursor")
        if cursor is None:
            break
        params = {"limit": 1000, "include": "parameters,states", "cursor": cursor}

    # Then every answer stayed within the budget, and the pages hold every run once, newest first
    assert len(sizes) > 1
    assert max(sizes) <= BUDGET
    assert seen == big_runs


def test_the_client_follows_the_cursor(tenant: TenantContext, big_runs: list[str]) -> None:
    client = tenant.client(tenant.key("read"))

    runs = client.list_flow_runs(limit=1000, include=["parameters"])
    first_two = client.list_flow_runs(limit=2)

    assert [run.id for run in runs] == big_runs
    assert all(len(run.parameters["name"]) == BIG for run in runs)
    assert [run.id for run in first_two] == big_runs[:2]


@pytest.mark.parametrize(
    "params",
    [
        {"cursor": "not-a-cursor"},
        {"cursor": "WyJ4IiwgInkiXQ"},
        {"include": "source"},
        {"cursor": cursors.encode("x", 7)},
        {"cursor": cursors.encode("2030-01-01T00:00:00", "0b6d0f0e-9b35-4d59-9f4e-0d9c2f1f3a11")},
        {"cursor": cursors.encode("2030-01-01T00:00:00+00:00")},
        {"cursor": "WyJ4IiwgTmFOXQ"},
    ],
    ids=["garbage-cursor", "forged-cursor", "unknown-include", "id-not-text", "naive-time", "short", "nan"],
)
def test_bad_cursors_and_includes_are_422(http: httpx.Client, big_runs: list[str], params: dict[str, str]) -> None:
    response = http.get("/api/flow_runs", params=params)

    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], str)


@pytest.mark.parametrize(
    "cursor",
    [
        cursors.encode("hello", 10**30),
        cursors.encode("hello", True),
        cursors.encode("hello", 0),
        cursors.encode("x" * 300, 1),
        cursors.encode(7, 1),
        "WyJoZWxsbyIsIDEuNV0",
    ],
    ids=["huge-version", "bool-version", "version-0", "long-name", "name-not-text", "float-version"],
)
def test_forged_flow_cursors_are_422(http: httpx.Client, big_runs: list[str], cursor: str) -> None:
    response = http.get("/api/flows", params={"cursor": cursor})

    assert response.status_code == 422, response.text
    assert "invalid cursor" in response.json()["detail"]


def test_log_pages_stop_at_the_byte_budget(tenant: TenantContext, http: httpx.Client) -> None:
    # Given a run with 40 long lines
    staged = tenant.stage("Running")
    assert staged.token is not None
    lines = [{"timestamp": "2030-01-01T00:00:00Z", "message": f"{i:03d}" + "x" * 9_000} for i in range(40)]
    tenant.client(staged.token).write_logs(staged.id, lines)

    # When a reader pages through them, asking for 5000 at a time
    got: list[str] = []
    offset = 0
    sizes: list[int] = []
    while True:
        response = http.get(f"/api/flow_runs/{staged.id}/logs", params={"offset": offset, "limit": 5000})
        page = response.json()
        if not page["logs"]:
            break
        sizes.append(len(response.content))
        got.extend(line["message"][:3] for line in page["logs"])
        offset = page["next_offset"]

    # Then each page stayed within the budget and all lines came, in order
    assert len(sizes) > 1 and max(sizes) <= BUDGET
    assert got == [f"{i:03d}" for i in range(40)]


def test_flow_lists_stop_at_the_byte_budget_and_page_by_cursor(server: ServerProcess) -> None:
    # Given flows whose run configs together pass the budget
    owner = TenantContext.create(server)
    try:
        names = [f"big-{i}" for i in range(6)]
        for name in names:
            owner.register_flow(name, run_config={"type": "local", "env": {"BIG": "v" * BIG}})
        http = owner.raw(owner.key("read"))

        # When a reader lists them, following the cursor
        seen: list[str] = []
        sizes: list[int] = []
        params: dict[str, str] = {}
        for _page in range(len(names) + 1):
            response = http.get("/api/flows", params=params)
            sizes.append(len(response.content))
            seen.extend(flow["name"] for flow in response.json())
            if "X-Next-Cursor" not in response.headers:
                break
            params = {"cursor": response.headers["X-Next-Cursor"]}

        # Then each answer stayed within the budget, every flow came once, and the client follows the cursor too
        assert len(sizes) > 1 and max(sizes) <= BUDGET
        assert seen == names
        assert [flow.name for flow in owner.client(owner.key("read")).list_flows()] == names
    finally:
        owner.close()


def test_a_claim_stops_at_the_byte_budget(server: ServerProcess) -> None:
    # Given runs whose parameters together pass the budget
    owner = TenantContext.create(server)
    try:
        owner.register_flow()
        user = owner.client(owner.key("user"))
        created = {user.create_flow_run(flow_name="hello", parameters={"name": "p" * BIG}).id for _ in range(8)}
        runner = owner.client(owner.key("runner"))
        agent = runner.register_agent("bounded", "local", [])

        # When the agent claims as many as it may, again and again
        batches = [runner.claim(agent.id, limit=100).runs for _ in range(len(created))]

        # Then each claim answered within the budget, and every run was claimed once
        sizes = [sum(len(c.model_dump_json()) for c in batch) for batch in batches if batch]
        assert len(sizes) > 1 and max(sizes) <= BUDGET
        assert sorted(c.flow_run.id for batch in batches for c in batch) == sorted(created)
    finally:
        owner.close()

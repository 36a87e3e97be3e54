"""Every route of the API, swept: tenant isolation (another tenant's ids are 404, never 403, and never listed) and
the role matrix (which principal gets 2xx, 403, 404 or 401 on each route).

The routes come from the served OpenAPI spec; :data:`ROUTES` says how to call each one (its success status, its
body), and the expected outcome of each principal is derived from the access policy (``baton.server.access.POLICY``)
through the action the route declares: a route that declares none fails
:func:`test_every_route_declares_an_action`, and a route in the spec that is missing from the table fails
:func:`test_every_route_in_the_spec_is_in_the_table`, so a new route cannot go unswept.

Principals (columns of the table): ``admin``, ``user``, ``runner`` (whose agent claimed the target run),
``other_runner`` (another runner key of the same tenant), ``read``, ``token`` (the target run's run token) and
``other_token`` (the run token of another run, of another flow, in the same tenant).

The target run's flow ``hello`` is registered with a bundle of the tenant's own (``digest``), so that its run token
reads that bundle, and ``other_token`` (flow ``other``, no bundle) does not.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from baton.bundles import build_bundle
from baton.server.access import POLICY, Kind, Scope
from baton.server.app import api_routes, declared_action
from server.harness import TenantContext, unique
from support import HELLO_SOURCE

PRINCIPALS = ("admin", "user", "runner", "other_runner", "read", "token", "other_token")


@dataclass
class Target:
    """Objects of one tenant that the routes act on: a Running run, claimed by ``runner``'s agent."""

    run_id: str
    flow_id: str
    agent_id: str
    token: str
    task_run_id: str
    key_id: str  # a read key of the tenant, for the key routes
    rule_id: str  # a notification rule (its webhook never resolves: a test of it fails at once, sending nothing)
    label: str = "swept-limit"  # a label with a concurrency limit, for the limit routes
    flow_name: str = ""  # a scheduled flow of a name no other tenant has, for the schedule routes
    digest: str = ""  # the tenant's bundle, which flow ``hello`` names (no other tenant has one of that digest)
    bundle: bytes = b""  # its compressed bytes

    def params(self) -> dict[str, str]:
        return {
            "flow_name": self.flow_name,
            "key_id": self.key_id,
            "rule_id": self.rule_id,
            "flow_id": self.flow_id,
            "flow_run_id": self.run_id,
            "agent_id": self.agent_id,
            "task_run_id": self.task_run_id,
            "label": self.label,
            "digest": self.digest,
        }

    def ids(self) -> set[str]:
        return {self.run_id, self.flow_id, self.agent_id, self.task_run_id, self.key_id, self.rule_id, self.digest}


Body = Callable[[Target], dict[str, Any] | None]


def no_body(_target: Target) -> None:
    return None


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    ok: int
    body: Body = no_body
    fresh: bool = False  # the call changes the run for good: each principal gets a target of its own
    cross_body: Body | None = None  # the body another tenant sends (naming this tenant's objects)
    # What another tenant's admin gets naming this tenant's objects, when it is not 404 (or < 300 without ids).
    cross_status: int | None = None
    raw: Callable[[Target], bytes] | None = None  # a body that is not JSON (sent as application/gzip)

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path

    @property
    def has_ids(self) -> bool:
        return "{" in self.path

    @property
    def public(self) -> bool:
        return POLICY[ACTIONS[self.key]].scope == Scope.PUBLIC

    @property
    def expect(self) -> dict[str, int]:
        return {principal: expected_status(self, principal) for principal in PRINCIPALS}


# Each route's declared action, from the server's own routers.
ACTIONS = {
    (method, path): action
    for path, route in api_routes()
    if (action := declared_action(route)) is not None
    for method in route.methods
}
KINDS = {
    "admin": Kind.ADMIN,
    "user": Kind.USER,
    "runner": Kind.RUNNER,
    "other_runner": Kind.RUNNER,
    "read": Kind.READ,
    "token": Kind.RUN_TOKEN,
    "other_token": Kind.RUN_TOKEN,
}


def expected_status(route: Route, principal: str) -> int:
    """What the policy says ``principal`` gets on ``route``: its kind first (403), then the scope rule.

    The target objects are a run claimed by ``runner``'s agent: ``other_token`` does not reach it (404),
    ``other_runner`` may not change it (403), and only ``runner``, which registered the agent, may drive the agent.
    """
    rule = POLICY[ACTIONS[route.key]]
    if KINDS[principal] not in rule.kinds:
        return 403
    scoped = (Scope.FLOW, Scope.RUN, Scope.RUN_WRITE, Scope.TASK_RUN_WRITE, Scope.BUNDLE)
    if rule.scope in scoped and principal == "other_token":
        return 404
    if rule.scope in (Scope.RUN_WRITE, Scope.TASK_RUN_WRITE) and principal == "other_runner":
        return 403
    if rule.scope == Scope.AGENT and principal != "runner":
        return 403
    return route.ok


FLOW_PAYLOAD = {
    "name": "hello",
    "entrypoint": "hello",
    "source": HELLO_SOURCE,
    "source_filename": "/flows/hello.py",
    "labels": [],
    "parameters_schema": {"type": "object", "properties": {"name": {"type": "string"}}},
    "tasks": ["greet"],
}


def flow_payload(digest: str) -> dict[str, Any]:
    """Flow ``hello`` of bundle ``digest`` (whose hello.py is :func:`hello_of` that digest's tenant's source)."""
    return {
        **FLOW_PAYLOAD,
        "source": hello_of(digest),
        "storage": {"type": "api", "bundle": digest, "path": "hello.py"},
    }


_HELLO_BY_DIGEST: dict[str, str] = {}


def hello_of(digest: str) -> str:
    return _HELLO_BY_DIGEST.get(digest, HELLO_SOURCE)


LOG_LINE = {"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": "swept"}]}
GZIP = {"Content-Type": "application/gzip"}
UNRESOLVABLE_WEBHOOK = "https://hooks.example.invalid/swept"  # .invalid never resolves (RFC 6761)

ROUTES = [
    Route("GET", "/api/health", 200),
    Route("GET", "/api/whoami", 200),
    Route("POST", "/api/keys", 201, body=lambda t: {"role": "read", "name": unique("k")}),
    Route("GET", "/api/keys", 200),
    Route("DELETE", "/api/keys/{key_id}", 200, fresh=True),
    # The payload ``hello`` was registered with: the same version (200). Another tenant naming this tenant's bundle
    # is told to upload it first (422).
    Route("POST", "/api/flows", 200, body=lambda t: flow_payload(t.digest), cross_status=422),
    Route("GET", "/api/flows", 200),
    Route("GET", "/api/flows/{flow_id}", 200),
    Route(
        "POST",
        "/api/flow_runs",
        201,
        body=lambda t: {"flow_name": "hello", "labels": [unique("swept")]},
        cross_body=lambda t: {"flow_id": t.flow_id},
    ),
    Route("GET", "/api/flow_runs", 200),
    Route("GET", "/api/flow_runs/{flow_run_id}", 200),
    Route("GET", "/api/flow_runs/{flow_run_id}/with_flow", 200),
    # The target run is Running: its own token gets past access and meets the state rule (409). Another tenant's
    # admin is refused by its kind (403) before any id is looked at.
    Route("POST", "/api/flow_runs/{flow_run_id}/start", 409, cross_status=403),
    Route(
        "POST",
        "/api/flow_runs/{flow_run_id}/state",
        200,
        body=lambda t: {"name": "Failed", "message": "swept"},
        fresh=True,
    ),
    Route("POST", "/api/flow_runs/{flow_run_id}/cancel", 200, fresh=True),
    # The target run is Running: a principal allowed to retry gets past access and meets the state rule (409).
    Route("POST", "/api/flow_runs/{flow_run_id}/retry", 409),
    Route("GET", "/api/flow_runs/{flow_run_id}/explain", 200),
    Route("POST", "/api/flow_runs/{flow_run_id}/heartbeat", 200),
    Route("GET", "/api/flow_runs/{flow_run_id}/logs", 200),
    Route("POST", "/api/flow_runs/{flow_run_id}/logs", 201, body=lambda t: LOG_LINE),
    Route("GET", "/api/flow_runs/{flow_run_id}/task_runs", 200),
    Route(
        "POST",
        "/api/flow_runs/{flow_run_id}/task_runs",
        201,
        body=lambda t: {"task_name": "swept"},
    ),
    Route(
        "POST",
        "/api/task_runs/{task_run_id}/state",
        200,
        body=lambda t: {"state": "Running"},
    ),
    Route(
        "POST",
        "/api/flow_runs/{flow_run_id}/task_runs/batch",
        201,
        body=lambda t: {"task_runs": [{"task_name": "swept[0]"}, {"task_name": "swept[1]"}]},
    ),
    Route(
        "POST",
        "/api/flow_runs/{flow_run_id}/task_runs/states",
        200,
        body=lambda t: {"states": [{"task_run_id": t.task_run_id, "state": "Running"}]},
    ),
    Route(
        "POST",
        "/api/agents",
        201,
        body=lambda t: {"name": unique("agent"), "type": "local", "labels": []},
    ),
    Route("GET", "/api/agents", 200),
    Route(
        "POST",
        "/api/agents/{agent_id}/claim",
        200,
        body=lambda t: {"limit": 1, "wait_seconds": 0},
    ),
    Route(
        "POST",
        "/api/agents/{agent_id}/heartbeat",
        200,
        body=lambda t: {"deployments": [{"flow_run_id": t.run_id, "alive": True}]},
    ),
    Route("POST", "/api/notifications", 201, body=lambda t: {"on": ["late"], "webhook": UNRESOLVABLE_WEBHOOK}),
    Route("GET", "/api/notifications", 200),
    Route("DELETE", "/api/notifications/{rule_id}", 200, fresh=True),
    Route("POST", "/api/notifications/{rule_id}/test", 200),
    # The target agent holds a Running run: its own key is refused with 409 (tests/server/api/test_agent_fleet.py
    # deregisters idle agents).
    Route("DELETE", "/api/agents/{agent_id}", 409),
    Route("POST", "/api/agents/prune", 200, body=lambda t: {"dry_run": True}),
    Route("POST", "/api/limits", 200, body=lambda t: {"label": unique("limited"), "max_concurrent_runs": 2}),
    Route("GET", "/api/limits", 200),
    Route("DELETE", "/api/limits/{label}", 200, fresh=True),
]
ROUTES += [
    Route("GET", "/api/schedules", 200),
    Route("GET", "/api/schedules/{flow_name}", 200),
    Route("POST", "/api/schedules/{flow_name}/pause", 200),
    Route("POST", "/api/schedules/{flow_name}/resume", 200),
    Route(
        "POST",
        "/api/schedules/{flow_name}/backfill",
        200,
        body=lambda t: {"start": "2020-01-01T00:00:00Z", "end": "2021-06-01T00:00:00Z"},
    ),
]
ROUTES += [
    # Reads before the upload: another tenant's upload of the same bytes stores a bundle of its own (201: it learns
    # nothing of this tenant's), which it could read afterwards.
    Route("GET", "/api/bundles/{digest}", 200),
    Route("HEAD", "/api/bundles/{digest}", 200),
    Route("PUT", "/api/bundles/{digest}", 200, raw=lambda t: t.bundle, cross_status=201),
]
ROUTES_BY_KEY = {route.key: route for route in ROUTES}


def route_id(route: Route) -> str:
    return f"{route.method} {route.path}"


# --- building the world ----------------------------------------------------------------------------------


@dataclass
class World:
    """A tenant with keys of every principal, and helpers to make targets in it."""

    tenant: TenantContext
    keys: dict[str, str] = field(default_factory=dict)
    scheduled_flow: str = ""
    digest: str = ""
    bundle: bytes = b""
    _http: dict[str | None, httpx.Client] = field(default_factory=dict)

    @classmethod
    def of(cls, tenant: TenantContext) -> World:
        world = cls(tenant)
        for role in ("admin", "user", "runner", "read"):
            world.keys[role] = tenant.key(role)
        world.keys["other_runner"] = tenant.new_key("runner")
        world.keys["other_token"] = world.token_of_another_flow()
        world.upload_bundle_of_hello()
        world.scheduled_flow = unique("scheduled")
        tenant.register_flow(world.scheduled_flow, schedule="0 0 1 1 *")  # yearly: few runs, one to backfill
        return world

    def http(self, key: str | None) -> httpx.Client:
        if key not in self._http:
            self._http[key] = self.tenant.raw(key)
        return self._http[key]

    def target(self) -> Target:
        staged = self.tenant.stage("Running", runner=self.tenant.client(self.keys["runner"]))
        assert staged.token is not None and staged.agent_id is not None
        task_run = self.tenant.client(staged.token).create_task_run(staged.id, "greet")
        key_id = self.tenant.admin.create_api_key("read", name=unique("target")).id
        flow_id = self.tenant.run(staged.id).flow_id
        rule_id = self.tenant.admin.add_notification_rule(["Failed"], UNRESOLVABLE_WEBHOOK).id
        label = self.tenant.admin.set_label_limit(unique("swept-limit"), 5).label
        return Target(
            staged.id,
            flow_id,
            staged.agent_id,
            staged.token,
            task_run.id,
            key_id,
            rule_id,
            label,
            self.scheduled_flow,
            self.digest,
            self.bundle,
        )

    def upload_bundle_of_hello(self) -> None:
        """Flow ``hello``, registered before any target, names a bundle of this tenant's own (a unique one)."""
        with tempfile.TemporaryDirectory() as folder:
            flow_file = Path(folder) / "hello.py"
            source = f"{HELLO_SOURCE}\n# {unique('bundle')}\n"
            flow_file.write_text(source)
            built = build_bundle([("hello.py", flow_file)])
        _HELLO_BY_DIGEST[built.digest] = source
        self.digest, self.bundle = built.digest, built.data
        self.tenant.admin.upload_bundle(built.digest, built.data)
        self.tenant.admin.register_flow(flow_payload(built.digest))

    def token_of_another_flow(self) -> str:
        """The run token of a Running run of flow ``other``.

        Running, as the targets' runs are: a run left Pending would go back to the queue when its claim lease (30 s)
        ran out, revoking the token in the middle of a slow matrix (seen on a loaded machine: 401s, not 403s).
        """
        self.tenant.register_flow("other")
        label = unique("other")
        run = self.tenant.client(self.keys["user"]).create_flow_run(flow_name="other", labels=[label])
        runner = self.tenant.client(self.keys["runner"])
        agent = runner.register_agent(unique("other-agent"), "local", [label])
        claimed = runner.claim(agent.id).runs
        assert len(claimed) == 1
        runner.set_flow_run_state(run.id, "Submitted", "PID: 1", {"pid": 1})
        self.tenant.client(claimed[0].run_token).set_flow_run_state(run.id, "Running")
        return claimed[0].run_token

    def revoked_token(self) -> str:
        staged = self.tenant.stage("Success")
        assert staged.token is not None
        return staged.token

    def key_of(self, principal: str, target: Target) -> str:
        return target.token if principal == "token" else self.keys[principal]

    def call(self, route: Route, key: str | None, target: Target, body: Body | None = None) -> httpx.Response:
        url = route.path.format(**target.params())
        if route.raw is not None:
            return self.http(key).request(route.method, url, content=route.raw(target), headers=GZIP)
        payload = (body or route.body)(target)
        return self.http(key).request(route.method, url, json=payload)


@pytest.fixture
def world(tenant: TenantContext) -> World:
    return World.of(tenant)


def mismatches(got: dict[str, dict[str, int]], expected: dict[str, dict[str, int]]) -> list[str]:
    """``route principal: got N, expected M`` for each cell that differs (readable where a dict diff is not)."""
    return [
        f"{route} {principal}: got {status}, expected {expected[route][principal]}"
        for route, row in got.items()
        for principal, status in row.items()
        if status != expected[route][principal]
    ]


# --- the table is the spec ---------------------------------------------------------------------------------


def test_every_route_declares_an_action() -> None:
    undeclared = [f"{sorted(route.methods)} {path}" for path, route in api_routes() if declared_action(route) is None]

    assert not undeclared, "routes that declare no access.Action (Depends(access.allow(...)))"


def test_every_route_in_the_spec_is_in_the_table(tenant: TenantContext) -> None:
    spec = tenant.raw().get("/api/openapi.json").json()
    served = {(method.upper(), path) for path, operations in spec["paths"].items() for method in operations}

    assert served - set(ROUTES_BY_KEY) == set(), "routes without expected outcomes in test_isolation.ROUTES"
    assert set(ROUTES_BY_KEY) - served == set(), "routes in test_isolation.ROUTES that the server does not serve"


# --- roles ----------------------------------------------------------------------------------------------


def test_role_matrix(world: World) -> None:
    shared = world.target()
    outcomes: dict[str, dict[str, int]] = {}
    for route in ROUTES:
        row = outcomes[route_id(route)] = {}
        for principal in PRINCIPALS:
            target = world.target() if route.fresh else shared
            response = world.call(route, world.key_of(principal, target), target)
            row[principal] = response.status_code
            if response.status_code in (403, 404) and route.method != "HEAD":  # a HEAD answer has no body
                assert isinstance(response.json()["detail"], str)

    problems = mismatches(outcomes, {route_id(route): route.expect for route in ROUTES})
    assert not problems, "\n".join(problems)


def test_no_key_and_revoked_run_tokens_get_401(world: World) -> None:
    target = world.target()
    revoked = world.revoked_token()
    unknown = "bat_" + "x" * 43

    outcomes = {
        route_id(route): [world.call(route, key, target).status_code for key in (None, revoked, unknown)]
        for route in ROUTES
    }

    assert outcomes == {route_id(route): [200 if route.public else 401] * 3 for route in ROUTES}


def test_refused_writes_change_nothing(world: World) -> None:
    target = world.target()
    for route in ROUTES:
        if route.method != "POST" or not route.has_ids:
            continue
        for principal in ("read", "other_runner", "other_token"):
            if route.expect[principal] >= 400:
                world.call(route, world.key_of(principal, target), target)

    run = world.tenant.run(target.run_id)
    assert run.state == "Running"
    assert world.tenant.admin.get_logs(target.run_id).logs == []
    assert [t.state for t in world.tenant.admin.list_task_runs(target.run_id)] == ["Pending"]


# --- tenants --------------------------------------------------------------------------------------------


def test_another_tenant_gets_404_for_ids_and_never_sees_them(world: World, other_tenant: TenantContext) -> None:
    target = world.target()
    others = World.of(other_tenant)
    b_target = others.target()  # B's own objects, so that B's lists are not trivially empty
    a_ids = target.ids() | {world.tenant.id}

    for route in ROUTES:
        # B's admin, naming A's objects: unknown ids (404), never 403, and nothing of A's in any answer.
        response = others.call(route, others.keys["admin"], target, route.cross_body)
        if route.cross_status is not None:
            assert response.status_code == route.cross_status, (route_id(route), response.text)
        elif route.has_ids or route.cross_body is not None:
            assert response.status_code == 404, (route_id(route), response.text)
        else:
            assert response.status_code < 300, (route_id(route), response.text)
            leaked = {i for i in a_ids if i in response.text}
            assert not leaked, f"{route_id(route)} shows tenant A's {leaked} to tenant B"
            if route.method == "GET" and isinstance(response.json(), list):
                assert response.json(), f"{route_id(route)}: B's own objects are missing"
        # B's run token naming A's objects: as unknown as another run's token in A.
        status = others.call(route, b_target.token, target, route.cross_body).status_code
        assert status == route.expect["other_token"], route_id(route)

    run = world.tenant.run(target.run_id)
    assert run.state == "Running"
    assert world.tenant.admin.get_logs(target.run_id).logs == []
    assert [t.state for t in world.tenant.admin.list_task_runs(target.run_id)] == ["Pending"]


def test_lists_of_another_tenant_never_show_this_tenants_objects(world: World, other_tenant: TenantContext) -> None:
    target = world.target()
    mine = world.tenant.admin
    others = World.of(other_tenant)
    others.target()

    for key in ("admin", "user", "runner", "read"):
        http = others.http(others.keys[key])
        for path in ("/api/flows?all_versions=true", "/api/flow_runs?limit=1000", "/api/agents", "/api/keys"):
            response = http.get(path)
            if response.status_code == 403:
                continue
            assert response.status_code == 200
            for item in response.json():
                assert item.get("tenant_id", other_tenant.id) == other_tenant.id
                assert item["id"] not in target.ids()
    theirs = {a["id"] for a in others.http(others.keys["admin"]).get("/api/agents").json()}
    assert theirs and {a.id for a in mine.list_agents()}.isdisjoint(theirs)


def test_another_tenants_agent_never_claims_or_fails_this_tenants_runs(
    world: World, other_tenant: TenantContext
) -> None:
    target = world.target()
    waiting = world.tenant.client(world.keys["user"]).create_flow_run(flow_name="hello")  # unlabelled
    others = World.of(other_tenant)
    b_runner = other_tenant.client(others.keys["runner"])
    b_agent = b_runner.register_agent(unique("b-agent"), "local", [])

    assert b_runner.claim(b_agent.id, limit=100).runs == []
    dead = [{"flow_run_id": target.run_id, "alive": False, "exit_code": 137}]
    assert b_runner.agent_heartbeat(b_agent.id, dead).failed == []

    assert world.tenant.run(waiting.id).state == "Scheduled"
    assert world.tenant.run(target.run_id).state == "Running"

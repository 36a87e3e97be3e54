"""Issue 8, item 12: a run token reads and reports its own run only; it cannot list the tenant's agents, directly or
through ``explain`` (which describes every registered agent)."""

from __future__ import annotations

from server.harness import TenantContext

ROLES = ("admin", "user", "runner", "read")


def test_a_run_token_cannot_explain_its_run_or_list_agents(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")
    assert staged.token is not None
    http = tenant.raw(staged.token)

    explained = http.get(f"/api/flow_runs/{staged.id}/explain")
    agents = http.get("/api/agents")

    assert explained.status_code == 403, explained.text
    assert agents.status_code == 403, agents.text
    assert staged.agent_id not in explained.text + agents.text
    assert "run token may only act on its own flow run" in explained.json()["detail"]


def test_a_run_token_still_reads_and_reports_its_own_run(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")
    assert staged.token is not None
    http = tenant.raw(staged.token)

    assert http.get(f"/api/flow_runs/{staged.id}").status_code == 200
    assert http.post(f"/api/flow_runs/{staged.id}/heartbeat").status_code == 200
    assert http.post(f"/api/flow_runs/{staged.id}/state", json={"name": "Success"}).status_code == 200


def test_keys_still_explain(tenant: TenantContext) -> None:
    staged = tenant.stage("Running")

    for role in ("admin", "user", "runner", "read"):
        assert tenant.raw(tenant.key(role)).get(f"/api/flow_runs/{staged.id}/explain").status_code == 200


def test_a_run_token_reads_its_run_with_its_flow_in_one_request_and_no_other_run(tenant: TenantContext) -> None:
    staged, other = tenant.stage("Running"), tenant.stage("Running")
    assert staged.token is not None
    http = tenant.raw(staged.token)

    both = http.get(f"/api/flow_runs/{staged.id}/with_flow")
    refused = http.get(f"/api/flow_runs/{other.id}/with_flow")

    assert both.status_code == 200, both.text
    body = both.json()
    assert body["flow_run"]["id"] == staged.id
    assert body["flow"]["id"] == body["flow_run"]["flow_id"]
    assert body["flow"]["source"]  # the code the flow-run process loads, as GET /api/flows/{id}?include_source=true
    assert refused.status_code == 404, refused.text
    assert other.id in refused.json()["detail"] and "source" not in refused.text
    for role in ("admin", "user", "runner", "read"):  # every key reads the tenant's runs and flows
        assert tenant.raw(tenant.key(role)).get(f"/api/flow_runs/{other.id}/with_flow").status_code == 200


def test_a_run_token_starts_its_own_run_only_and_no_key_starts_a_run(tenant: TenantContext) -> None:
    staged, other = tenant.stage("Submitted"), tenant.stage("Submitted")
    assert staged.token is not None
    http = tenant.raw(staged.token)

    refused = http.post(f"/api/flow_runs/{other.id}/start")
    keys = {role: tenant.raw(tenant.key(role)).post(f"/api/flow_runs/{other.id}/start") for role in ROLES}
    started = http.post(f"/api/flow_runs/{staged.id}/start")
    again = http.post(f"/api/flow_runs/{staged.id}/start")

    assert refused.status_code == 404, refused.text
    assert "source" not in refused.text
    assert {role: response.status_code for role, response in keys.items()} == dict.fromkeys(ROLES, 403)
    assert "only a run's own run token" in keys["admin"].json()["detail"]
    assert tenant.run(other.id).state == "Submitted"
    assert started.status_code == 200, started.text
    body = started.json()
    assert body["flow_run"]["id"] == staged.id and body["flow_run"]["state"] == "Running"
    assert body["flow"]["id"] == body["flow_run"]["flow_id"] and body["flow"]["source"]
    assert tenant.run(staged.id).state == "Running"
    assert again.status_code == 409, again.text  # already Running: the refusal names the state
    assert "Running" in again.text

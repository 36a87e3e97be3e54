"""The web UI's pages against a hostile user: no session, forged writes (CSRF), the wrong role, another tenant's
ids. Each refusal is checked in the answer and in the database (nothing changed). Sign-in and sessions are in
``test_pages_sessions``, hostile input in ``test_pages_input``.

One server for the module (``conftest.server``, SQLite), a fresh tenant per test.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from server.harness import Staged, TenantContext
from support import ServerProcess
from ui.ui_support import (
    PAGES,
    Database,
    browser,
    csrf_of,
    post_form,
    sign_in,
)


def state_of(tenant: TenantContext, run_id: str) -> str:
    return str(tenant.run(run_id).state)


# --- not signed in ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [*PAGES, "/runs/some-run", "/runs/some-run/logs/stream"])
def test_pages_without_session_redirect_to_sign_in_with_next(server: ServerProcess, path: str) -> None:
    with browser(server) as client:
        response = client.get(path)

    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=" + quote(path, safe="")
    assert response.headers["cache-control"] == "no-store"


def test_htmx_request_without_session_gets_401_and_hx_redirect(server: ServerProcess) -> None:
    with browser(server) as client:
        response = client.get("/runs?fragment=rows", headers={"HX-Request": "true"})

    assert response.status_code == 401
    assert response.headers["hx-redirect"].startswith("/login?next=")
    assert "<table" not in response.text


def test_log_stream_without_session_is_refused(server: ServerProcess, tenant: TenantContext) -> None:
    run = tenant.admin.create_flow_run(flow_name="hello")
    with browser(server) as client:
        response = client.get(f"/runs/{run.id}/logs/stream", headers={"Accept": "text/event-stream"})

    assert response.status_code == 303
    assert "text/event-stream" not in response.headers.get("content-type", "")


@pytest.mark.parametrize("path", ["/logout", "/keys", "/flows/hello/runs", "/runs/x/cancel", "/runs/x/retry"])
def test_writes_without_session_are_refused(server: ServerProcess, path: str) -> None:
    with browser(server) as client:
        response = client.post(path, data={"csrf_token": "x"})

    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=")


# --- CSRF ---------------------------------------------------------------------------------------------------------

FORGERIES = ["no token", "wrong token", "other session's token", "cross origin", "wrong header"]


def _forged(
    admin_ui: httpx.Client, server: ServerProcess, tenant: TenantContext, forgery: str
) -> tuple[dict[str, str], dict[str, str]]:
    """The form fields and headers of a write forged as ``forgery``."""
    data: dict[str, str] = {}
    headers: dict[str, str] = {}
    if forgery == "wrong token":
        data["csrf_token"] = "A" * 43
    elif forgery == "other session's token":
        with sign_in(server, tenant.admin_key) as second:
            data["csrf_token"] = csrf_of(second)
    elif forgery == "cross origin":
        data["csrf_token"] = csrf_of(admin_ui)
        headers["Origin"] = "http://evil.example"
    elif forgery == "wrong header":
        headers["X-CSRF-Token"] = "A" * 43
    return data, headers


@pytest.mark.parametrize("forgery", FORGERIES)
def test_forged_writes_are_refused_and_change_nothing(
    server: ServerProcess, db: Database, tenant: TenantContext, admin_ui: httpx.Client, forgery: str
) -> None:
    scheduled = tenant.stage("Scheduled")
    cancelled = tenant.stage("Cancelled")
    tenant.register_flow("timed", schedule="0 9 * * *")
    key = tenant.admin.create_api_key("read", name="victim")
    data, headers = _forged(admin_ui, server, tenant, forgery)
    runs, keys, sessions = db.runs_of(tenant), db.live_keys_of(tenant), db.sessions_of(tenant)
    writes = [
        (f"/runs/{scheduled.id}/cancel", {}),
        (f"/runs/{cancelled.id}/retry", {}),
        ("/flows/hello/runs", {"p.name": "forged", "idempotency_key": "forged-1"}),
        ("/flows/timed/schedule/pause", {}),
        ("/keys", {"role": "admin", "name": "forged"}),
        (f"/keys/{key.id}/revoke", {}),
        ("/logout", {}),
    ]

    statuses = {path: post_form(admin_ui, path, {**fields, **data}, headers).status_code for path, fields in writes}

    assert statuses == {path: 403 for path, _ in writes}
    assert state_of(tenant, scheduled.id) == "Scheduled"
    assert db.runs_of(tenant) == runs
    assert tenant.admin.get_schedule("timed").active
    assert (db.live_keys_of(tenant), db.key_revoked(key.id)) == (keys, False)
    assert db.sessions_of(tenant) == sessions
    assert admin_ui.get("/").status_code == 200


def test_writes_with_the_session_token_work(
    server: ServerProcess, db: Database, tenant: TenantContext, admin_ui: httpx.Client
) -> None:
    scheduled = tenant.stage("Scheduled")
    keys = db.live_keys_of(tenant)
    token = csrf_of(admin_ui)

    by_field = post_form(admin_ui, f"/runs/{scheduled.id}/cancel", {"csrf_token": token})
    headers = {"X-CSRF-Token": token, "Origin": server.url, "HX-Request": "true"}
    created = post_form(admin_ui, "/keys", {"role": "read", "name": "by-htmx"}, headers)

    assert by_field.status_code == 303
    assert by_field.headers["location"] == f"/runs/{scheduled.id}"
    assert state_of(tenant, scheduled.id) == "Cancelled"
    assert created.status_code == 201
    assert "by-htmx" in created.text
    assert db.live_keys_of(tenant) == keys + 1


# --- roles --------------------------------------------------------------------------------------------------------


def test_read_key_sees_no_write_controls(reader_ui: httpx.Client, tenant: TenantContext) -> None:
    failed = tenant.stage("Cancelled")
    scheduled = tenant.stage("Scheduled")

    flow_page = reader_ui.get("/flows/hello").text
    cancellable = reader_ui.get(f"/runs/{scheduled.id}").text
    retryable = reader_ui.get(f"/runs/{failed.id}").text
    nav = reader_ui.get("/").text

    assert 'action="/flows/hello/runs"' not in flow_page
    assert "may not start runs" in flow_page
    assert "/cancel" not in cancellable
    assert "/retry" not in retryable
    assert 'href="/keys"' not in nav
    assert reader_ui.get("/keys").status_code == 403


def test_user_key_may_run_and_cancel_but_not_manage_keys(server: ServerProcess, tenant: TenantContext) -> None:
    scheduled = tenant.stage("Scheduled")
    with sign_in(server, tenant.key("user")) as user_ui:
        flow_page = user_ui.get("/flows/hello").text
        run_page = user_ui.get(f"/runs/{scheduled.id}").text
        keys = user_ui.get("/keys")

    assert 'action="/flows/hello/runs"' in flow_page
    assert f'action="/runs/{scheduled.id}/cancel"' in run_page
    assert keys.status_code == 403
    assert 'href="/keys"' not in flow_page


def test_read_key_writes_are_refused_even_with_its_csrf_token(
    db: Database, tenant: TenantContext, reader_ui: httpx.Client
) -> None:
    scheduled = tenant.stage("Scheduled")
    cancelled = tenant.stage("Cancelled")
    tenant.register_flow("timed", schedule="0 9 * * *")
    user_key = tenant.admin.create_api_key("user")
    runs, keys = db.runs_of(tenant), db.live_keys_of(tenant)
    token = {"csrf_token": csrf_of(reader_ui)}
    writes = [
        f"/runs/{scheduled.id}/cancel",
        f"/runs/{cancelled.id}/retry",
        "/flows/hello/runs",
        "/flows/timed/schedule/pause",
        "/keys",
        f"/keys/{user_key.id}/revoke",
    ]

    statuses = [post_form(reader_ui, path, {**token, "role": "admin", "p.name": "x"}).status_code for path in writes]

    assert statuses == [403] * len(writes)
    assert state_of(tenant, scheduled.id) == "Scheduled"
    assert (db.runs_of(tenant), db.live_keys_of(tenant)) == (runs, keys)
    assert tenant.admin.get_schedule("timed").active


def test_read_key_sees_env_values_masked_as_rest_does(
    server: ServerProcess, tenant: TenantContext, admin_ui: httpx.Client, reader_ui: httpx.Client
) -> None:
    secret = "s3cr3t-v4lue"
    tenant.register_flow("envy", run_config={"env": {"DB_PASSWORD": secret}})
    run = tenant.admin.create_flow_run(flow_name="envy")
    rest = tenant.raw(tenant.key("read")).get(f"/api/flow_runs/{run.id}").json()

    page = reader_ui.get(f"/runs/{run.id}").text

    masked = rest["run_config"]["env"]["DB_PASSWORD"]
    assert masked != secret
    assert secret not in page
    assert f"&#34;DB_PASSWORD&#34;: &#34;{masked}&#34;" in page or f'"DB_PASSWORD": "{masked}"' in page
    assert secret in admin_ui.get(f"/runs/{run.id}").text


# --- tenants ------------------------------------------------------------------------------------------------------


def test_another_tenants_ids_are_not_found(
    db: Database, tenant: TenantContext, other: TenantContext, admin_ui: httpx.Client
) -> None:
    theirs: Staged = other.stage("Scheduled")
    their_cancelled = other.stage("Cancelled")
    other.register_flow("theirs-only", schedule="0 9 * * *")
    their_key = other.admin.create_api_key("read")
    runs = db.runs_of(other)
    token = {"csrf_token": csrf_of(admin_ui)}
    reads = [f"/runs/{theirs.id}", f"/runs/{theirs.id}?fragment=live", f"/runs/{theirs.id}/logs/stream"]
    reads += ["/flows/theirs-only"]
    writes = [f"/runs/{theirs.id}/cancel", f"/runs/{their_cancelled.id}/retry", "/flows/theirs-only/runs"]
    writes += ["/flows/theirs-only/schedule/pause", f"/keys/{their_key.id}/revoke"]

    read_statuses = [admin_ui.get(path, headers={"HX-Request": "true"}).status_code for path in reads]
    write_statuses = [post_form(admin_ui, path, token).status_code for path in writes]

    assert read_statuses == [404] * len(reads)
    assert write_statuses == [404] * len(writes)
    assert state_of(other, theirs.id) == "Scheduled"
    assert db.runs_of(other) == runs
    assert not db.key_revoked(their_key.id)
    assert other.admin.get_schedule("theirs-only").active


def test_lists_show_nothing_of_another_tenant(
    tenant: TenantContext, other: TenantContext, admin_ui: httpx.Client
) -> None:
    pending = other.stage("Pending")
    other.register_flow("theirs-only")
    their_key = other.admin.create_api_key("read", name="their-secret-key-name")
    agent = next(a for a in other.admin.list_agents() if a.id == pending.agent_id)

    pages = {path: admin_ui.get(path).text for path in ["/", "/runs", "/flows", "/agents", "/keys"]}

    for path, page in pages.items():
        for theirs in [pending.id, "theirs-only", their_key.name or "", their_key.prefix, agent.name, other.name]:
            assert theirs not in page, f"{theirs} of another tenant shown on {path}"

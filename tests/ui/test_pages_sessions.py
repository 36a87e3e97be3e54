"""The web UI's sign-in and sessions against a hostile user: keys that are not for people, forged sign-in forms,
open redirects, guessing (rate limit), cookie flags, and sessions that must end (sign-out, revoked key, expiry).

One server for the module (``conftest.server``); the rate-limit test starts one with a small limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from baton.server.database.orm import utcnow
from server.harness import TenantContext
from support import ServerProcess
from ui.ui_support import (
    LOGIN_COOKIE,
    PAGES,
    SESSION_COOKIE,
    Database,
    browser,
    csrf_of,
    login_form,
    post_form,
    sign_in,
    token_in,
    try_sign_in,
)

# --- sign-in ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credential", "status"), [("wrong", 401), ("runner", 403), ("run token", 403), ("revoked", 401)]
)
def test_sign_in_refuses_keys_that_are_not_for_people(
    server: ServerProcess, db: Database, tenant: TenantContext, credential: str, status: int
) -> None:
    if credential == "wrong":
        key = "bk_" + "A" * 43
    elif credential == "runner":
        key = tenant.key("runner")
    elif credential == "run token":
        key = tenant.stage("Running").token or ""
    else:
        key = tenant.new_key("user")
        tenant.admin.revoke_api_key(next(k.id for k in tenant.admin.list_api_keys() if key.startswith(k.prefix)))
    sessions = db.all_sessions()

    with browser(server) as client:
        response = try_sign_in(client, key)

        assert response.status_code == status
        assert SESSION_COOKIE not in client.cookies
    assert db.sessions_of(tenant) == 0
    assert db.all_sessions() == sessions
    assert key not in response.text
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize("forgery", ["no cookie", "other token", "no token", "cross origin", "null origin"])
def test_sign_in_without_its_own_form_is_refused(
    server: ServerProcess, db: Database, tenant: TenantContext, forgery: str
) -> None:
    with browser(server) as client:
        token = login_form(client)
        data = {"api_key": tenant.admin_key, "csrf_token": token, "next": "/"}
        headers = {}
        if forgery == "no cookie":
            client.cookies.delete(LOGIN_COOKIE)
        elif forgery == "other token":
            data["csrf_token"] = token[:-2] + "xx"
        elif forgery == "no token":
            del data["csrf_token"]
        elif forgery == "cross origin":
            headers["Origin"] = "https://evil.example"
        else:
            headers["Origin"] = "null"
        response = client.post("/login", data=data, headers=headers)

        assert response.status_code == 403
        assert SESSION_COOKIE not in client.cookies
    assert db.sessions_of(tenant) == 0


@pytest.mark.parametrize(
    ("sent", "lands"),
    [
        ("//evil.example", "/"),
        ("https://x", "/"),
        ("/\\evil.example", "/"),
        ("\\\\evil.example", "/"),
        ("/\t/evil.example", "/"),
        ("javascript:alert(1)", "/"),
        ("", "/"),
        ("/runs?state=Failed", "/runs?state=Failed"),
    ],
)
def test_sign_in_goes_only_to_a_path_of_this_site(
    server: ServerProcess, tenant: TenantContext, sent: str, lands: str
) -> None:
    with browser(server) as client:
        response = try_sign_in(client, tenant.admin_key, next_url=sent)

    assert response.status_code == 303
    assert response.headers["location"] == lands


def test_sign_in_with_a_non_latin_next_path_does_not_fail(server: ServerProcess, tenant: TenantContext) -> None:
    with browser(server) as client:
        response = try_sign_in(client, tenant.admin_key, next_url="/flows/日本")

    assert response.status_code == 303


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server that blocks an address after 3 failed authentications."""
    started = ServerProcess(tmp_path_factory.mktemp("ui-limited"), BATON__SERVER__FAILED_AUTH_LIMIT="3").start()
    yield started
    started.stop()


def test_failed_sign_ins_are_rate_limited(limited: ServerProcess) -> None:
    with browser(limited) as client:
        statuses = [try_sign_in(client, "bk_" + "B" * 43).status_code for _ in range(4)]
        blocked = try_sign_in(client, "not even a key")
        key_still_works = try_sign_in(client, limited.admin_key)

    assert statuses == [401, 401, 401, 429]
    assert blocked.status_code == 429
    assert "too many failed" in blocked.text
    # As REST: a blocked address is not starved of a valid key (authentication.py).
    assert key_still_works.status_code == 303


def test_rate_limited_sign_in_says_when_to_retry(limited: ServerProcess) -> None:
    with browser(limited) as client:
        statuses = [try_sign_in(client, "bk_" + "C" * 43).status_code for _ in range(4)]
        rest = client.get("/api/flows", headers={"Authorization": "Bearer bk_" + "C" * 43})

        assert statuses[-1] == rest.status_code == 429
        assert rest.headers["retry-after"].isdigit()
        assert try_sign_in(client, "bk_" + "C" * 43).headers["retry-after"].isdigit()


# --- cookies and headers ------------------------------------------------------------------------------------------


def test_session_cookie_is_httponly_strict_and_site_wide(server: ServerProcess, tenant: TenantContext) -> None:
    with browser(server) as client:
        response = try_sign_in(client, tenant.admin_key)

    cookies = [value for name, value in response.headers.multi_items() if name == "set-cookie"]
    session = next(c for c in cookies if c.startswith(SESSION_COOKIE + "="))
    attributes = {part.strip().split("=")[0].lower(): part.strip() for part in session.split(";")[1:]}
    assert "httponly" in attributes
    assert attributes["samesite"].lower() == "samesite=strict"
    assert attributes["path"] == "Path=/"
    assert any(c.startswith(LOGIN_COOKIE + '=""') or f"{LOGIN_COOKIE}=;" in c for c in cookies), cookies


@pytest.mark.parametrize("path", ["/login", *PAGES, "/runs/nope"])
def test_pages_carry_security_headers(admin_ui: httpx.Client, path: str) -> None:
    response = admin_ui.get(path)

    assert response.status_code in (200, 303, 404)
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


# --- sessions -----------------------------------------------------------------------------------------------------


def test_sign_out_deletes_the_session_and_its_cookie(
    server: ServerProcess, db: Database, tenant: TenantContext, admin_ui: httpx.Client
) -> None:
    old_cookie = admin_ui.cookies[SESSION_COOKIE]

    response = post_form(admin_ui, "/logout", {"csrf_token": csrf_of(admin_ui)})

    assert response.status_code == 303
    assert response.headers["location"] == "/login"
    assert SESSION_COOKIE not in admin_ui.cookies
    assert db.sessions_of(tenant) == 0
    with browser(server) as replay:
        replay.cookies.set(SESSION_COOKIE, old_cookie)
        assert replay.get("/").status_code == 303


def test_revoking_the_key_ends_its_session_at_once(server: ServerProcess, tenant: TenantContext) -> None:
    user_key = tenant.admin.create_api_key("user", name="leaving")
    with sign_in(server, user_key.key) as client:
        assert client.get("/").status_code == 200

        tenant.admin.revoke_api_key(user_key.id)

        assert client.get("/").status_code == 303
        assert client.post("/runs/x/cancel", headers={"HX-Request": "true"}).status_code == 401


def test_a_session_cannot_revoke_its_own_key(db: Database, tenant: TenantContext, admin_ui: httpx.Client) -> None:
    own = next(key for key in tenant.admin.list_api_keys() if tenant.admin_key.startswith(key.prefix))

    response = post_form(admin_ui, f"/keys/{own.id}/revoke", {"csrf_token": csrf_of(admin_ui)})

    assert response.status_code == 409
    assert not db.key_revoked(own.id)
    assert "this session's key" in admin_ui.get("/keys").text


def test_revoking_another_key_in_the_ui_ends_that_keys_sessions(
    server: ServerProcess, tenant: TenantContext, admin_ui: httpx.Client
) -> None:
    user_key = tenant.admin.create_api_key("user", name="fired")
    with sign_in(server, user_key.key) as fired:
        response = post_form(admin_ui, f"/keys/{user_key.id}/revoke", {"csrf_token": csrf_of(admin_ui)})

        assert response.status_code == 303
        assert fired.get("/runs").status_code == 303


def test_a_session_in_use_stays_alive(db: Database, tenant: TenantContext, admin_ui: httpx.Client) -> None:
    # Idle for all but the last minute of the 2-hour default: a page view moves last_seen to now.
    almost_idle = utcnow() - timedelta(hours=2) + timedelta(minutes=1)
    db.age_sessions(tenant, last_seen=almost_idle)

    assert admin_ui.get("/runs").status_code == 200
    assert db.last_seen_of(tenant) > almost_idle + timedelta(minutes=30)


def test_sign_out_by_htmx_is_told_where_to_go(db: Database, tenant: TenantContext, admin_ui: httpx.Client) -> None:
    response = post_form(admin_ui, "/logout", {}, {"HX-Request": "true", "X-CSRF-Token": csrf_of(admin_ui)})

    assert response.status_code == 204
    assert response.headers["hx-redirect"] == "/login"
    assert db.sessions_of(tenant) == 0


@pytest.mark.parametrize("column", ["last_seen", "expires_at"])
def test_an_expired_session_is_refused_and_deleted(
    db: Database, tenant: TenantContext, admin_ui: httpx.Client, column: str
) -> None:
    long_ago = utcnow() - timedelta(days=31)
    db.age_sessions(tenant, **{column: long_ago})

    response = admin_ui.get("/runs")

    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=%2Fruns"
    assert db.sessions_of(tenant) == 0


def test_a_made_up_session_cookie_is_refused(server: ServerProcess) -> None:
    with browser(server) as client:
        for cookie in ["bsn_" + "A" * 43, "x", "bsn_" + "A" * 200, "bsn_%00"]:
            client.cookies.set(SESSION_COOKIE, cookie)
            assert client.get("/").status_code == 303
        client.cookies.set(SESSION_COOKIE, "bsn_abc")
        assert token_in(client.get("/login").text)

"""Helpers of the web UI's HTTP tests: a browser-like client signed in with an API key, and database look-ups.

The tests talk to a real server process (``support.ServerProcess``) over HTTP, as a browser would: a sign-in is a
GET of the form (which sets the double-submit cookie) and a POST of the key with that token; the answer's session
cookie stays in the ``httpx.Client``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import httpx
from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.connection import create_database_engine, create_session_factory, transaction
from baton.server.database.orm import ApiKey, Flow, FlowRun, TaskRun, UiSession, new_id
from server.harness import TenantContext
from support import ServerProcess

_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')
SESSION_COOKIE = "baton_session"
LOGIN_COOKIE = "baton_login_csrf"
XSS = "<script>alert(1)</script>"
XSS_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
# Every page a signed-in browser may GET (with filters), for the header and redirect tests.
PAGES = ["/", "/runs", "/runs?state=Failed&window=24h", "/flows", "/flows/hello", "/agents", "/keys"]


def browser(server: ServerProcess) -> httpx.Client:
    """A cookie-keeping client that does not follow redirects (the tests look at each 303)."""
    return httpx.Client(base_url=server.url, follow_redirects=False, timeout=30, verify=False)


def token_in(html: str) -> str:
    """The first ``csrf_token`` hidden field of a page."""
    found = _TOKEN.search(html)
    assert found is not None, f"no csrf_token field in the page: {html[:300]}"
    return found.group(1)


def login_form(client: httpx.Client) -> str:
    """GET /login: the form's token (its cookie is now in ``client``)."""
    page = client.get("/login")
    assert page.status_code == 200, page.text
    return token_in(page.text)


def try_sign_in(client: httpx.Client, key: str, next_url: str = "/", **headers: str) -> httpx.Response:
    token = login_form(client)
    return client.post("/login", data={"api_key": key, "csrf_token": token, "next": next_url}, headers=headers)


@contextmanager
def sign_in(server: ServerProcess, key: str) -> Iterator[httpx.Client]:
    """A client signed in with ``key``, closed on leaving."""
    with browser(server) as client:
        response = try_sign_in(client, key)
        assert response.status_code == 303, response.text
        assert client.cookies.get(SESSION_COOKIE), "no session cookie after sign-in"
        yield client


def csrf_of(client: httpx.Client) -> str:
    """The session's CSRF token, as its pages carry it (the sign-out form of every page)."""
    page = client.get("/flows")
    assert page.status_code == 200, page.text
    return token_in(page.text)


def post_form(
    client: httpx.Client, path: str, fields: dict[str, str], headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST ``fields`` urlencoded, with the form content type even when empty (as a browser and htmx send it)."""
    form_headers = {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})}
    return client.post(path, content=urlencode(fields), headers=form_headers)


class Database:
    """Reads (and, to age a session, writes) the server's database directly."""

    def __init__(self, server: ServerProcess) -> None:
        self.engine = create_database_engine(server.database_url, 2)
        self.factory: sessionmaker[Session] = create_session_factory(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with transaction(self.factory) as session:
            yield session

    def sessions_of(self, tenant: TenantContext) -> int:
        with self.session() as session:
            count = session.scalar(select(func.count()).select_from(UiSession).where(UiSession.tenant_id == tenant.id))
        return int(count or 0)

    def all_sessions(self) -> int:
        with self.session() as session:
            return int(session.scalar(select(func.count()).select_from(UiSession)) or 0)

    def runs_of(self, tenant: TenantContext, flow_name: str = "hello") -> int:
        """How many runs ``tenant`` has of ``flow_name`` (scheduled flows add runs of their own)."""
        with self.session() as session:
            count = session.scalar(
                select(func.count())
                .select_from(FlowRun)
                .join(Flow, Flow.id == FlowRun.flow_id)
                .where(FlowRun.tenant_id == tenant.id, Flow.name == flow_name)
            )
        return int(count or 0)

    def live_keys_of(self, tenant: TenantContext) -> int:
        with self.session() as session:
            count = session.scalar(
                select(func.count())
                .select_from(ApiKey)
                .where(ApiKey.tenant_id == tenant.id, ApiKey.revoked_at.is_(None))
            )
        return int(count or 0)

    def key_revoked(self, key_id: str) -> bool:
        with self.session() as session:
            return session.scalar(select(ApiKey.revoked_at).where(ApiKey.id == key_id)) is not None

    def last_seen_of(self, tenant: TenantContext) -> datetime:
        with self.session() as session:
            seen = session.scalar(select(func.max(UiSession.last_seen)).where(UiSession.tenant_id == tenant.id))
        assert seen is not None, "the tenant has no session"
        return seen

    def age_sessions(self, tenant: TenantContext, **values: datetime) -> None:
        """Set columns (``last_seen``, ``expires_at``) of every session of ``tenant``."""
        with self.session() as session:
            session.execute(update(UiSession).where(UiSession.tenant_id == tenant.id).values(**values))

    def add_task_runs(
        self, tenant: TenantContext, run_id: str, runs: list[tuple[str, str, float | None, float | None]]
    ) -> None:
        """Task runs ``(name, state, start, end)`` of ``run_id`` (seconds after a minute ago; None: not yet), in
        this order, straight in the database: a thousand through the API would take the test's time."""
        t0 = datetime.now(UTC) - timedelta(minutes=1)
        rows = [
            {
                "id": new_id(),
                "tenant_id": tenant.id,
                "flow_run_id": run_id,
                "task_name": name,
                "state": state,
                "message": None,
                "attempt": 1,
                "start_time": None if start is None else t0 + timedelta(seconds=start),
                "end_time": None if end is None else t0 + timedelta(seconds=end),
                "created": t0 + timedelta(microseconds=position),  # the pages list task runs in created order
            }
            for position, (name, state, start, end) in enumerate(runs)
        ]
        with self.session() as session:
            session.execute(insert(TaskRun), rows)

    def close(self) -> None:
        self.engine.dispose()

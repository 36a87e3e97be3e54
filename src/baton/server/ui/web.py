"""What every web UI page shares: who is signed in (``Viewer``), CSRF checks, form bodies, templates, headers.

A page acts as its session's API key: the same ``Principal``, the same ``access`` rules (``Viewer.can``) and the
same response shaping as REST, so a read key sees masked env values and no write buttons, and a write it is not
allowed is refused with the REST API's own message.

Writes (POST) must carry the session's CSRF token (a hidden form field, or the ``X-CSRF-Token`` header that htmx
sends), and a browser's ``Origin``, when sent, must be this server. The session cookie is HttpOnly and
SameSite=Strict besides.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from baton.server.access import AccessDenied, Action, allows, denial, kind_of
from baton.server.database.connection import transaction
from baton.server.database.orm import utcnow
from baton.server.models import ui_sessions
from baton.server.models.tenants import Principal
from baton.server.ui import charts
from baton.server.ui.assets import asset_url

COOKIE = "baton_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
MAX_FORM_FIELDS = 200
# A Run form's JSON inputs may be large; the sign-in form is small, and is read before any credential is checked.
MAX_FORM_BYTES = 4 * 1024 * 1024
MAX_SIGN_IN_BYTES = 4096
TEMPLATES = Path(__file__).parent / "templates"
# Pages load nothing from elsewhere and run only this server's scripts; no framing (clickjacking).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class NotSignedIn(Exception):
    """No live session: pages redirect to the sign-in page, htmx requests are told to go there."""


class BadForm(Exception):
    """A write's body is not a form this UI sent (400)."""


class CsrfRefused(Exception):
    """A write without this session's CSRF token, or from another origin (403)."""


@dataclass(frozen=True)
class Viewer:
    """The signed-in browser: who acts, and what the page may offer it."""

    principal: Principal
    csrf_token: str
    expires_at: datetime
    cookie: str = field(repr=False)

    def can(self, action: Action | str) -> bool:
        return allows(self.principal, Action(action))


def session_policy(request: Request) -> ui_sessions.SessionPolicy:
    server = request.app.state.settings.server
    return ui_sessions.SessionPolicy.of(server.ui_session_idle_seconds, server.ui_session_max_seconds)


def factory_of(request: Request) -> sessionmaker[Session]:
    """Sessions for writes."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def reader_of(request: Request) -> sessionmaker[Session]:
    """Sessions for pages that only read (on SQLite they do not queue behind agents' writes)."""
    factory: sessionmaker[Session] = request.app.state.read_session_factory
    return factory


def _in_background(request: Request) -> bool:
    """A page's own refresh (an htmx poll, the log stream): not the user at work, so it keeps no session alive."""
    polling = request.method == "GET" and request.headers.get("hx-request") == "true"
    return polling or request.url.path.endswith("/logs/stream")


def current_viewer(request: Request) -> Viewer:
    """The request's live session (a FastAPI dependency); raises NotSignedIn."""
    secret = request.cookies.get(COOKIE)
    if not secret:
        raise NotSignedIn
    now = utcnow()
    with transaction(reader_of(request)) as session:
        signed_in, state = ui_sessions.resolve(session, secret, now, session_policy(request))
    if state is ui_sessions.SessionState.ENDED:
        with transaction(factory_of(request)) as session:
            ui_sessions.end(session, secret)
    if signed_in is None:
        raise NotSignedIn
    if state is ui_sessions.SessionState.STALE and not _in_background(request):
        with transaction(factory_of(request)) as session:
            ui_sessions.touch(session, secret, now)
    return Viewer(signed_in.principal, signed_in.csrf_token, signed_in.expires_at, secret)


def require(viewer: Viewer, action: Action) -> None:
    """Refuse ``action`` with the REST API's own message when the session's key may not do it."""
    if not viewer.can(action):
        raise AccessDenied(denial(kind_of(viewer.principal), action))


def validation_message(exc: ValidationError) -> str:
    """A request model's refusal as one line, as REST's 422 details name them: ``field: problem``."""
    return "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


async def read_form(request: Request, max_bytes: int = MAX_FORM_BYTES) -> dict[str, str]:
    """The urlencoded body of a write, at most ``max_bytes``; raises BadForm."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        raise BadForm("send the form as application/x-www-form-urlencoded")
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdecimal() and int(declared) > max_bytes:
        raise BadForm(f"the form is larger than {max_bytes} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > max_bytes:
            raise BadForm(f"the form is larger than {max_bytes} bytes")
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadForm(f"unreadable form: {exc}") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise BadForm(f"field {name[:40]!r} sent twice")
        form[name] = value
    return form


def same_origin(request: Request) -> bool:
    """Whether the browser's ``Origin`` (when it sends one) is this server: ``ui_public_url``'s host when the
    operator set it (behind a proxy that rewrites ``Host``), else the request's ``Host``."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    public_url = request.app.state.settings.server.ui_public_url
    expected = urlsplit(public_url).netloc if public_url else request.headers.get("host", "")
    return urlsplit(origin).netloc.lower() == expected.lower()


def check_csrf(request: Request, viewer: Viewer, form: Mapping[str, str]) -> None:
    """Refuse a write that lacks this session's CSRF token or comes from another origin."""
    sent = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or ""
    if not same_origin(request) or not hmac.compare_digest(sent.encode(), viewer.csrf_token.encode()):
        raise CsrfRefused("this form has expired or did not come from this page: reload the page and try again")


async def sign_in_form(request: Request) -> dict[str, str]:
    return await read_form(request, MAX_SIGN_IN_BYTES)


async def checked_form(request: Request, viewer: ViewerDep) -> dict[str, str]:
    """A write's form, CSRF-checked (a dependency: the route itself runs in the thread pool, as its database
    work must not block the event loop)."""
    form = await read_form(request)
    check_csrf(request, viewer, form)
    return form


CheckedForm = Annotated[dict[str, str], Depends(checked_form)]
SignInForm = Annotated[dict[str, str], Depends(sign_in_form)]


# --- templates ---------------------------------------------------------------------------------------------------


def timestamp(value: datetime | None) -> Markup:
    """A ``<time>`` shown in UTC; ``ui.js`` rewrites it to the viewer's time zone, the UTC value stays on hover."""
    if value is None:
        return Markup('<span class="muted">—</span>')
    utc = value.astimezone(UTC)
    shown = utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{0}" title="{1}">{1}</time>').format(utc.isoformat(), shown)


def duration(seconds: float | None) -> str:
    return "—" if seconds is None else charts.duration(seconds)


def between(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "—"
    return duration(((end or utcnow()) - start).total_seconds())


LEVEL_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}


def level_name(level: int) -> str:
    """A log line's level as the Python logging name (the page and the log stream both show this)."""
    return LEVEL_NAMES.get(level, str(level))


def page_url(path: str, **query: Any) -> str:
    """``path`` with the non-empty ``query`` values, percent-encoded (links that keep a list's filters)."""
    parts = [f"{quote(name)}={quote(str(value), safe='')}" for name, value in query.items() if value not in (None, "")]
    return path + ("?" + "&".join(parts) if parts else "")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ts=timestamp, duration=duration, state_class=charts.state_class, level_name=level_name)
    env.globals.update(asset_url=asset_url, between=between, page_url=page_url, Action=Action)
    return env


ENVIRONMENT = _environment()


def render(
    request: Request, template: str, viewer: Viewer | None, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """A page (or an htmx fragment) of ``template`` for ``viewer``, with the UI's security headers."""
    html = ENVIRONMENT.get_template(template).render(request=request, viewer=viewer, **context)
    return HTMLResponse(html, status_code=status_code, headers=SECURITY_HEADERS)


def redirect(url: str, request: Request) -> Response:
    """Go to ``url`` after a write: a 303 for a form, an ``HX-Redirect`` for htmx (which does not follow 303s
    into a full page)."""
    if request.headers.get("hx-request") == "true":
        return Response(status_code=204, headers={"HX-Redirect": url, **SECURITY_HEADERS})
    return Response(status_code=303, headers={"Location": url, **SECURITY_HEADERS})

"""Sign-in and sign-out: an API key becomes a server-side session (``models.ui_sessions``).

The sign-in form has no session yet, so its CSRF defence is a double-submit token (a cookie scoped to /login
and the same value in a hidden field) plus the same-origin check: another site cannot sign a visitor in under
the attacker's key. Failed sign-ins count against the address in the same failed-authentication limit as REST.
"""

from __future__ import annotations

import hmac
import secrets
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response

from baton.server.authentication import UNKNOWN_ADDRESS, Refusal, authenticate_request
from baton.server.database.connection import transaction
from baton.server.database.orm import utcnow
from baton.server.models import ui_sessions
from baton.server.ui.routing import UiRoute
from baton.server.ui.web import (
    COOKIE,
    CSRF_FIELD,
    CheckedForm,
    NotSignedIn,
    SignInForm,
    ViewerDep,
    current_viewer,
    factory_of,
    redirect,
    render,
    same_origin,
    session_policy,
)

router = APIRouter(route_class=UiRoute)
LOGIN_COOKIE = "baton_login_csrf"
MAX_KEY_LENGTH = 200


def safe_next(target: str | None) -> str:
    """Where to land after sign-in: a path of this site only (never ``//host`` or a full URL: open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > 2000:
        return "/"
    if any(ord(char) < 0x20 for char in target):
        return "/"
    # Percent-encoded: a Location header is latin-1 only, and the path may hold any character (a flow's name).
    return quote(target, safe="/?&=%#;:@+,$!*'()~-._")


def _login_page(request: Request, error: str | None = None, status_code: int = 200) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        None,
        status_code=status_code,
        login_token=token,
        error=error,
        next=safe_next(request.query_params.get("next")),
    )
    response.set_cookie(
        LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https", path="/login"
    )
    return response


@router.get("/login", include_in_schema=False)
def login_page(request: Request) -> Response:
    try:
        current_viewer(request)
    except NotSignedIn:
        return _login_page(request)
    return redirect("/", request)


@router.post("/login", include_in_schema=False)
def login(request: Request, form: SignInForm) -> Response:
    sent = form.get(CSRF_FIELD, "")
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not same_origin(request) or not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
        return _login_page(request, "The sign-in form expired: try again.", 403)
    key = form.get("api_key", "").strip()
    if not key or len(key) > MAX_KEY_LENGTH:
        return _login_page(request, "Paste an API key (user, admin or read).", 422)
    client = request.client
    address = client.host if client and client.host else UNKNOWN_ADDRESS
    factory = factory_of(request)
    outcome = authenticate_request(
        request.app.state.read_engine, request.app.state.auth_limiter, address, f"Bearer {key}"
    )
    if isinstance(outcome, Refusal):
        refused = _login_page(request, f"Not signed in: {outcome.detail}.", outcome.status)
        if outcome.retry_after is not None:
            refused.headers["Retry-After"] = outcome.retry_after
        return refused
    try:
        with transaction(factory) as session:
            secret, _csrf = ui_sessions.start(session, outcome, utcnow(), session_policy(request))
    except ui_sessions.SignInRefused as exc:
        return _login_page(request, f"Not signed in: {exc}.", 403)
    response = redirect(safe_next(form.get("next")), request)
    response.set_cookie(
        COOKIE,
        secret,
        max_age=int(request.app.state.settings.server.ui_session_max_seconds),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout", include_in_schema=False)
def logout(request: Request, viewer: ViewerDep, form: CheckedForm) -> Response:
    with transaction(factory_of(request)) as session:
        ui_sessions.end(session, viewer.cookie)
    response = redirect("/login", request)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response

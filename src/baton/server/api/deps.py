"""FastAPI dependencies: database sessions, the calling principal and role checks."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from sqlalchemy.orm import Session, sessionmaker

from baton.schemas.core import Role
from baton.server.auth_limits import FailedAuthLimiter, retry_after_header
from baton.server.database.connection import transaction
from baton.server.models.tenants import Principal, authenticate
from baton.server.notifier import RunNotifier

__all__ = ["transaction"]

# The limiter's key when the ASGI server gives no peer address (e.g. a Unix socket).
UNKNOWN_ADDRESS = "unknown"


def session_factory(request: Request) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def get_notifier(request: Request) -> RunNotifier:
    notifier: RunNotifier = request.app.state.notifier
    return notifier


def client_address(request: Request) -> str:
    return request.client.host if request.client and request.client.host else UNKNOWN_ADDRESS


def get_principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller, from its bearer key or run token.

    An address with too many recent failed authentications gets 429 before its key is looked at, so that
    guessing keys stops there, unless the credential already authenticated from that address (see
    ``auth_limits``); every 401 counts as one failure of the address.
    """
    limiter: FailedAuthLimiter = request.app.state.auth_limiter
    address = client_address(request)
    digest = hashlib.sha256((authorization or "").encode()).hexdigest()
    wait = limiter.retry_after(address)
    if wait is not None and not limiter.is_known(address, digest):
        seconds = retry_after_header(wait)
        raise HTTPException(
            429,
            f"too many failed authentication attempts from this address; retry in {seconds} s",
            headers={"Retry-After": seconds},
        )
    try:
        principal = _authenticate(request, authorization)
    except HTTPException:
        limiter.record_failure(address)
        raise
    limiter.record_success(address, digest)
    return principal


def _authenticate(request: Request, authorization: str | None) -> Principal:
    if not authorization:
        raise HTTPException(401, "missing Authorization header: send 'Bearer <API key>'")
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise HTTPException(401, "malformed Authorization header: send 'Bearer <API key>'")
    with session_factory(request)() as session:
        principal = authenticate(session, secret.strip())
    if principal is None:
        raise HTTPException(401, "invalid, revoked or expired API key")
    return principal


def require(*roles: Role, run_token: bool = False) -> Callable[[Principal], Principal]:
    """A dependency that lets through keys with one of ``roles`` (admin always) and, if asked, run tokens."""
    allowed = {Role.ADMIN, *roles}

    def check(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        if principal.is_run_token:
            if run_token:
                return principal
            raise HTTPException(403, "a run token may only act on its own flow run")
        if principal.role not in allowed:
            needed = ", ".join(sorted(r.value for r in allowed))
            raise HTTPException(403, f"this key's role ({principal.role}) may not do this; needs one of: {needed}")
        return principal

    return check


Db = Annotated[sessionmaker[Session], Depends(session_factory)]
NotifierDep = Annotated[RunNotifier, Depends(get_notifier)]
AnyPrincipal = Annotated[Principal, Depends(get_principal)]
Reader = Annotated[Principal, Depends(require(Role.USER, Role.RUNNER, Role.READ, run_token=True))]
KeyReader = Annotated[Principal, Depends(require(Role.USER, Role.RUNNER, Role.READ))]
Author = Annotated[Principal, Depends(require(Role.USER))]
Runner = Annotated[Principal, Depends(require(Role.RUNNER))]
RunWriter = Annotated[Principal, Depends(require(Role.USER, Role.RUNNER, run_token=True))]
Admin = Annotated[Principal, Depends(require())]


def check_run_scope(principal: Principal, flow_run_id: str) -> None:
    """A run token sees only its own run: anything else is 404, as if it did not exist."""
    if principal.is_run_token and principal.flow_run_id != flow_run_id:
        raise HTTPException(404, f"flow run {flow_run_id} not found")

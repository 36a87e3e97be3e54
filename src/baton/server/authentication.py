"""Authentication before anything else: a pure-ASGI middleware that checks the bearer credential from the request's
headers, before any route reads (let alone parses) its body.

An unauthenticated request costs the server its headers only: no body is received, so a stranger cannot make the
server buffer and parse megabytes (issue 8, item 7). The principal found is left in ``scope["state"]`` for the
route's :class:`baton.server.access.Authorize` dependency, which decides what it may do.

The failed-authentication limit (``auth_limits``) is keyed on the peer address the ASGI server reports: uvicorn
rewrites it from ``X-Forwarded-For`` only for the proxies the operator names (``--forwarded-allow-ips``).
A blocked address is never starved of valid credentials: its credential is still checked against the database
(one indexed lookup of its sha256), and only a credential that fails is refused, with 429 instead of 401. Guessing
gains nothing from that: keys and run tokens carry 256 random bits, so the limit's worth is in slowing down and
flagging a guesser, not in guarding the keyspace; and a credential that is not even of the form Baton issues is
refused without a database lookup, so a blocked guesser costs no more than before.

Usage::

    app.add_middleware(AuthenticateFirst, public_paths=frozenset({"/api/health"}))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from sqlalchemy import Engine
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from baton.server.auth_limits import FailedAuthLimiter, retry_after_header
from baton.server.models.tenants import API_KEY_PREFIX, RUN_TOKEN_PREFIX, Principal, authenticate
from baton.server.worker_threads import run_in_worker

# The limiter's key when the ASGI server gives no peer address (e.g. a Unix socket).
UNKNOWN_ADDRESS = "unknown"
# What is read and dropped of a refused request's body after the answer (see ``_drain``).
DRAIN_BYTES = 64 * 1024
DRAIN_SECONDS = 1.0
# What ``tenants.new_secret`` issues: a prefix and 32 random bytes in url-safe base64 (43 characters).
_WELL_FORMED = re.compile(rf"^(?:{API_KEY_PREFIX}|{RUN_TOKEN_PREFIX})[A-Za-z0-9_-]{{43}}$")


@dataclass(frozen=True)
class Refusal:
    status: int
    detail: str
    retry_after: str | None = None


def _secret(authorization: str | None) -> str | Refusal:
    if not authorization:
        return Refusal(401, "missing Authorization header: send 'Bearer <API key>'")
    scheme, _, secret = authorization.partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        return Refusal(401, "malformed Authorization header: send 'Bearer <API key>'")
    return secret.strip()


def authenticate_request(
    engine: Engine, limiter: FailedAuthLimiter, address: str, authorization: str | None
) -> Principal | Refusal:
    """The principal of ``authorization`` sent from ``address``, or why it is refused (401, or 429 when blocked).
    ``engine``: one whose connections only read (``read_only_engine``: on SQLite they never wait for the write lock).
    """
    wait = limiter.retry_after(address)
    secret = _secret(authorization)
    principal: Principal | None = None
    if isinstance(secret, str) and (wait is None or _WELL_FORMED.match(secret)):
        with engine.connect() as connection:
            principal = authenticate(connection, secret)
    if principal is not None:
        return principal
    limiter.record_failure(address)
    if wait is not None:
        seconds = retry_after_header(wait)
        return Refusal(429, f"too many failed authentication attempts from this address; retry in {seconds} s", seconds)
    return secret if isinstance(secret, Refusal) else Refusal(401, "invalid, revoked or expired API key")


class AuthenticateFirst:
    """Refuses requests without a valid credential (401/429) before the app receives a byte of their body.

    ``graphql_path`` (Prefect 1's GraphQL API) is protected too, its refusals told as Prefect Cloud 1 told them
    (:func:`_graphql_refusal`)."""

    def __init__(
        self,
        app: ASGIApp,
        public_paths: frozenset[str],
        protected_prefix: str = "/",
        graphql_path: str | None = None,
    ) -> None:
        self.app = app
        self.public_paths = public_paths
        # Only the APIs take bearer credentials; the web UI's pages check their session cookie themselves.
        self.protected_prefix = protected_prefix
        self.graphql_path = graphql_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        graphql = path == self.graphql_path and scope.get("method") == "POST"  # the only method it serves (else 405)
        protected = graphql or (path.startswith(self.protected_prefix) and path not in self.public_paths)
        if scope["type"] != "http" or not protected:
            await self.app(scope, receive, send)
            return
        fastapi_app: FastAPI = scope["app"]
        client = scope.get("client")
        address = client[0] if client and client[0] else UNKNOWN_ADDRESS
        outcome = await run_in_worker(
            authenticate_request,
            fastapi_app.state.read_engine,
            fastapi_app.state.auth_limiter,
            address,
            Headers(scope=scope).get("authorization"),
        )
        if isinstance(outcome, Refusal):
            rest = (outcome.status, {"detail": outcome.detail}, outcome.retry_after)
            await _refuse(send, *(_graphql_refusal(outcome) if graphql else rest))
            await _drain(receive)
            return
        scope.setdefault("state", {})["principal"] = outcome
        await self.app(scope, receive, send)


async def _drain(receive: Receive) -> None:
    """After the answer, read (and drop) what is already on its way of a small body, for a short while.

    Closing a socket with unread data makes the kernel reset the connection, which can destroy the answer before the
    client reads it; a client sending a large body gets the reset anyway: nothing of such a body is read.
    """
    received = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            while received <= DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request":
                    return
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return


def _graphql_refusal(refusal: Refusal) -> tuple[int, dict[str, Any], str | None]:
    """A refusal as Prefect 1's client expects it: HTTP 200 whose error message starts with UNAUTHENTICATED (the
    client turns that word into its AuthorizationError); a 429 stays a 429, which the client waits out."""
    if refusal.status == 429:
        error = {"message": refusal.detail, "extensions": {"code": "RATE_LIMITED"}}
        return 429, {"errors": [error]}, refusal.retry_after or "1"
    error = {"message": f"UNAUTHENTICATED: {refusal.detail}", "extensions": {"code": "UNAUTHENTICATED"}}
    return 200, {"data": None, "errors": [error]}, None


async def _refuse(send: Send, status: int, body: dict[str, Any], retry_after: str | None = None) -> None:
    headers = [(b"content-type", b"application/json")]
    if retry_after is not None:
        headers.append((b"retry-after", retry_after.encode()))
    # The body is not parsed, and at most a little of it read (``_drain``): the connection closes after this answer.
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})

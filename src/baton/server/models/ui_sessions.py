"""Web UI sessions: an API key exchanged for a browser session kept in the database.

Each replica serves every session (they live in the database, not in a process), and a session acts exactly as
its key: same tenant, same role, through the same access rules and response shaping as REST. The browser holds
only a random secret in an HttpOnly cookie; the database holds its sha256, like API keys. A session ends when
signed out, when idle for ``ui_session_idle_seconds``, at ``ui_session_max_seconds`` after sign-in, and at once
when its key is revoked (``resolve`` joins the key on every request).

Usage::

    secret, csrf = start(session, principal, now, policy)     # sign-in: set the cookie to ``secret``
    signed_in, state = resolve(session, secret, now, policy)  # each request: None when it has ended
    end(session, secret)                                      # sign-out
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from baton.schemas.core import Role
from baton.server.database.orm import ApiKey, Tenant, UiSession
from baton.server.models.tenants import Principal, hash_secret

SESSION_PREFIX = "bsn_"
# A session's last_seen is written at most this often: a page view is a read, not a write per request.
TOUCH_EVERY = timedelta(seconds=60)
# Roles that may sign in to the UI: runner keys belong to agents, run tokens to one flow-run process.
UI_ROLES = frozenset({Role.ADMIN, Role.USER, Role.READ})


class SignInRefused(Exception):
    """The key may not open a UI session (a runner key or a run token)."""


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta
    max_age: timedelta

    @classmethod
    def of(cls, idle_seconds: float, max_seconds: float) -> SessionPolicy:
        return cls(timedelta(seconds=idle_seconds), timedelta(seconds=max_seconds))


@dataclass(frozen=True)
class SignedIn:
    """A live session: who acts, and the CSRF token its writes must carry."""

    principal: Principal
    csrf_token: str
    expires_at: datetime


def start(session: Session, principal: Principal, now: datetime, policy: SessionPolicy) -> tuple[str, str]:
    """A new session for ``principal``'s key; returns the cookie secret and the CSRF token.

    Ended sessions are deleted here too: sign-ins are rare, so this keeps the table small without a service.
    """
    if principal.is_run_token or principal.key_id is None or principal.role not in UI_ROLES:
        raise SignInRefused("sign in with a user, admin or read key: runner keys and run tokens are for agents")
    purge(session, now, policy)
    secret = SESSION_PREFIX + secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(32)
    session.add(
        UiSession(
            id_hash=hash_secret(secret),
            tenant_id=principal.tenant_id,
            api_key_id=principal.key_id,
            csrf_token=csrf,
            created=now,
            expires_at=now + policy.max_age,
            last_seen=now,
        )
    )
    return secret, csrf


class SessionState(Enum):
    LIVE = "live"
    STALE = "stale"  # live, and its last_seen is older than TOUCH_EVERY: refresh it (``touch``)
    ENDED = "ended"  # idle too long or past its end: delete it (``end``)
    UNKNOWN = "unknown"  # no such live session (never was, signed out, or its key revoked)


def resolve(
    session: Session, secret: str, now: datetime, policy: SessionPolicy
) -> tuple[SignedIn | None, SessionState]:
    """The live session of cookie ``secret`` (None: unknown, signed out, ended, or its key revoked), and what the
    caller should write about it. Reads only: page views run in read transactions, which on SQLite do not queue
    behind agents' writes; the rare write (``touch``, ``purge``) takes a transaction of its own."""
    if not secret.startswith(SESSION_PREFIX) or len(secret) > 100:
        return None, SessionState.UNKNOWN
    row = session.execute(
        select(UiSession, ApiKey, Tenant.name)
        .join(ApiKey, ApiKey.id == UiSession.api_key_id)
        .join(Tenant, Tenant.id == UiSession.tenant_id)
        .where(UiSession.id_hash == hash_secret(secret), ApiKey.revoked_at.is_(None))
    ).first()
    if row is None:
        return None, SessionState.UNKNOWN
    ui_session, key, tenant_name = row
    if ui_session.expires_at <= now or ui_session.last_seen + policy.idle <= now:
        return None, SessionState.ENDED
    principal = Principal(
        tenant_id=key.tenant_id, tenant_name=tenant_name, role=Role(key.role), key_id=key.id, key_name=key.name
    )
    state = SessionState.STALE if now - ui_session.last_seen >= TOUCH_EVERY else SessionState.LIVE
    return SignedIn(principal, ui_session.csrf_token, ui_session.expires_at), state


def touch(session: Session, secret: str, now: datetime) -> None:
    """The user did something: the idle clock starts again."""
    session.execute(update(UiSession).where(UiSession.id_hash == hash_secret(secret)).values(last_seen=now))


def purge(session: Session, now: datetime, policy: SessionPolicy) -> None:
    """Delete every ended session: past its end, or idle too long (statements, so two racing purges are fine)."""
    ended = (UiSession.expires_at <= now) | (UiSession.last_seen <= now - policy.idle)
    session.execute(delete(UiSession).where(ended))


def end(session: Session, secret: str) -> None:
    """Sign out: the session is deleted (a copied cookie is worthless afterwards)."""
    session.execute(delete(UiSession).where(UiSession.id_hash == hash_secret(secret)))

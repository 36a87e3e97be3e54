"""Helpers of the access tests (issue 8, items 5, 6, 7 and 12): servers of their own, with settings per module."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import update

from baton.server.database.connection import create_database_engine, create_session_factory, transaction
from baton.server.database.orm import ApiKey
from server.harness import TenantContext
from support import ServerProcess

# Loopback addresses of their own for tests that get an address blocked (127.0.0.0/8 is all loopback on Linux).
_addresses = (f"127.0.{n // 250 + 100}.{n % 250 + 2}" for n in itertools.count())


def next_loopback_address() -> str:
    return next(_addresses)


def start_server(home: Path, **settings_env: str) -> ServerProcess:
    """A SQLite server of its own; ``settings_env`` are ``BATON__SERVER__...`` variables."""
    return ServerProcess(home, **settings_env).start()


def revoke_key(server: ServerProcess, key_id: str) -> None:
    """Revoke an API key the way an operator does: in the database (there is no route for it)."""
    engine = create_database_engine(server.database_url, 1)
    try:
        with transaction(create_session_factory(engine)) as session:
            session.execute(update(ApiKey).where(ApiKey.id == key_id).values(revoked_at=datetime.now(UTC)))
    finally:
        engine.dispose()


def key_id_of(tenant: TenantContext, key: str) -> str:
    key_id = tenant.client(key).whoami().key_id
    assert key_id is not None
    return key_id

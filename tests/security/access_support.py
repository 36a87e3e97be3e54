"""Helpers of the access tests (issue 8, items 5, 6, 7 and 12): servers of their own, with settings per module."""

from __future__ import annotations

import itertools
from pathlib import Path

from server.harness import TenantContext
from support import ServerProcess

# Loopback addresses of their own for tests that get an address blocked (127.0.0.0/8 is all loopback on Linux).
_addresses = (f"127.0.{n // 250 + 100}.{n % 250 + 2}" for n in itertools.count())


def next_loopback_address() -> str:
    return next(_addresses)


def start_server(home: Path, **settings_env: str) -> ServerProcess:
    """A SQLite server of its own; ``settings_env`` are ``BATON__SERVER__...`` variables."""
    return ServerProcess(home, **settings_env).start()


def key_id_of(tenant: TenantContext, key: str) -> str:
    key_id = tenant.client(key).whoami().key_id
    assert key_id is not None
    return key_id

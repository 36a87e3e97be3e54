"""Fixtures of the security tests: the server tests' chain (a real server on SQLite and on PostgreSQL, a fresh
tenant per test, keys of each role, a flow, a run), shared rather than declared again."""

from __future__ import annotations

from server.conftest import (
    admin,
    agent,
    api_database,
    api_server,
    claimed,
    flow,
    other_tenant,
    reader,
    run,
    runner,
    tenant,
    user,
)

__all__ = [
    "admin",
    "agent",
    "api_database",
    "api_server",
    "claimed",
    "flow",
    "other_tenant",
    "reader",
    "run",
    "runner",
    "tenant",
    "user",
]

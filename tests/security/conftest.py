"""Fixtures of the security tests: the server tests' chain (a real server on SQLite and on PostgreSQL, a fresh
tenant per test, keys of each role, a flow, a run), shared rather than declared again. ``admin`` is not among
them: here it is the root conftest's, bound to ``server`` (a server of the test's own), as the agent tests use."""

from __future__ import annotations

from server.conftest import (
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

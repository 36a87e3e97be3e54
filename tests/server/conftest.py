"""Fixtures of the API server tests: the worker's shared servers (one per database), a fresh tenant per test.

The chain: ``api_server`` → ``tenant`` → role keys (``admin``, ``user``, ``runner``, ``reader``) → ``flow`` →
``run`` → ``agent`` → ``claimed``. Tests that need server settings of their own start their own server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from baton.client import Client
from baton.schemas.responses import AgentRead, ClaimedRun, FlowRead, FlowRunRead
from baton.server.database.connection import create_database_engine
from server.harness import TenantContext, migrated_database_url
from shared_servers import SharedServers
from support import ServerProcess, migrate_to_head


@pytest.fixture(scope="package", params=["sqlite", "postgresql"])
def api_server(request: pytest.FixtureRequest, shared_servers: SharedServers) -> ServerProcess:
    """The shared server on SQLite, then on PostgreSQL: every server test runs on both."""
    return shared_servers.get(request.param, request)


@pytest.fixture(scope="session")
def _migrated_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite database migrated to head once per worker, which each ``migrated_engine`` copies."""
    path = tmp_path_factory.mktemp("migrated-sqlite") / "head.db"
    migrate_to_head(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database of the test's own, migrated to head, with no server on it (the test drives the models and
    services itself): a SQLite file, or a fresh PostgreSQL database (each a copy of one migrated once)."""
    engine = create_database_engine(migrated_database_url(request, tmp_path, request.param), 6)
    yield engine
    engine.dispose()


@pytest.fixture(scope="package")
def api_database(api_server: ServerProcess, shared_servers: SharedServers) -> sessionmaker[Session]:
    """Sessions on ``api_server``'s database, for setting up tenants without a round trip."""
    return shared_servers.sessions(api_server)


@pytest.fixture
def tenant(api_server: ServerProcess, api_database: sessionmaker[Session]) -> Iterator[TenantContext]:
    context = TenantContext.create(api_server, api_database)
    yield context
    context.close()


@pytest.fixture
def other_tenant(api_server: ServerProcess) -> Iterator[TenantContext]:
    """A second tenant, made with ``bootstrap.create_tenant`` against the server's database file."""
    context = TenantContext.create(api_server)
    yield context
    context.close()


@pytest.fixture
def admin(tenant: TenantContext) -> Client:
    return tenant.admin


@pytest.fixture
def user(tenant: TenantContext) -> Client:
    return tenant.client(tenant.key("user"))


@pytest.fixture
def runner(tenant: TenantContext) -> Client:
    return tenant.client(tenant.key("runner"))


@pytest.fixture
def reader(tenant: TenantContext) -> Client:
    return tenant.client(tenant.key("read"))


@pytest.fixture
def flow(tenant: TenantContext) -> FlowRead:
    """Flow ``hello`` (no labels, one optional string parameter ``name``)."""
    return tenant.register_flow()


@pytest.fixture
def run(user: Client, flow: FlowRead) -> FlowRunRead:
    """A Scheduled, unlabelled run of ``flow``."""
    return user.create_flow_run(flow_name=flow.name, parameters={"name": "Ada"})


@pytest.fixture
def agent(runner: Client) -> AgentRead:
    """An unlabelled local agent registered with the ``runner`` key."""
    return runner.register_agent("agent-1", "local", [])


@pytest.fixture
def claimed(runner: Client, agent: AgentRead, run: FlowRunRead) -> ClaimedRun:
    """``run`` claimed by ``agent``: Pending, with its run token."""
    return TenantContext.claim_one(runner, agent.id, run.id)

"""Fixtures of the web UI's HTTP tests: one real server per test module, a fresh tenant per test (with flow
``hello``), and browsers signed in with its keys (see ``ui_support``)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from server.harness import TenantContext
from support import ServerProcess
from ui.ui_support import Database, sign_in


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    started = ServerProcess(tmp_path_factory.mktemp("ui-pages")).start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def db(server: ServerProcess) -> Iterator[Database]:
    database = Database(server)
    yield database
    database.close()


@pytest.fixture
def tenant(server: ServerProcess, db: Database) -> Iterator[TenantContext]:
    context = TenantContext.create(server, db.factory)
    context.register_flow()
    yield context
    context.close()


@pytest.fixture
def other(server: ServerProcess, db: Database) -> Iterator[TenantContext]:
    context = TenantContext.create(server, db.factory)
    context.register_flow()
    yield context
    context.close()


@pytest.fixture
def admin_ui(server: ServerProcess, tenant: TenantContext) -> Iterator[httpx.Client]:
    with sign_in(server, tenant.admin_key) as client:
        yield client


@pytest.fixture
def reader_ui(server: ServerProcess, tenant: TenantContext) -> Iterator[httpx.Client]:
    with sign_in(server, tenant.key("read")) as client:
        yield client

"""Fixtures of the GraphQL tests of Prefect 1's runs (``runs_support`` has their helpers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from server.graphql.runs_support import ServerLog, Shared, prefect1_flow
from server.harness import TenantContext
from support import ServerProcess


@pytest.fixture
def server_log(api_server: ServerProcess) -> ServerLog:
    return ServerLog(api_server.log_path)


@pytest.fixture(scope="module")
def shared(api_server: ServerProcess, api_database: sessionmaker[Session]) -> Iterator[Shared]:
    tenant = TenantContext.create(api_server, api_database)
    yield Shared(tenant, prefect1_flow(tenant))
    tenant.close()

"""The API servers that a pytest worker's tests share (``shared_servers`` in ``tests/conftest.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from baton.server.bootstrap import create_tenant
from baton.server.database.connection import create_database_engine, create_session_factory
from server.harness import database_settings, unique
from support import ServerProcess, TenantServer


class SharedServers:
    """The servers this worker's tests share, one per database, each started when first asked for and stopped when
    the session ends.

    A package-scoped server was stopped and started again each time a worker moved to a file of another package, and
    each time the tests switched databases: about 85 starts of ~1.7 s of CPU in each ``make test`` (issue 12). Each
    test has a tenant of its own (``tenant``), so sharing across files is what running one package already did.
    """

    def __init__(self, tmp_path_factory: pytest.TempPathFactory) -> None:
        self._tmp = tmp_path_factory
        self._servers: dict[str, tuple[ServerProcess, sessionmaker[Session], Engine]] = {}

    def get(self, database: str, request: pytest.FixtureRequest) -> ServerProcess:
        """The server on ``database`` ("sqlite" or "postgresql")."""
        if database not in self._servers:
            settings_env = {}
            if database == "postgresql":
                # The cluster through a fixture that stops this server before the cluster stops (a server whose
                # database vanished first logs connection errors until it is stopped).
                cluster = request.getfixturevalue("shared_postgres_server")
                settings_env["BATON__SERVER__DATABASE_URL"] = cluster.create_database()
            server = ServerProcess(self._tmp.mktemp(f"api-server-{database}"), **settings_env).start()
            engine = create_database_engine(server.database_url, 2)
            self._servers[database] = (server, create_session_factory(engine), engine)
        return self._servers[database][0]

    def sessions(self, server: ServerProcess) -> sessionmaker[Session]:
        """Sessions on the database of ``server``, one of these shared servers."""
        return next(sessions for shared, sessions, _ in self._servers.values() if shared is server)

    def stop(self, database: str | None = None) -> None:
        """Stop the server on ``database``, or all of them."""
        for name in [database] if database is not None else list(self._servers):
            started = self._servers.pop(name, None)
            if started is not None:
                server, _, engine = started
                engine.dispose()
                server.stop()

    def tenant(self, request: pytest.FixtureRequest, home: Path, database: str = "sqlite") -> TenantServer:
        """A new tenant on the server on ``database``, seen as a server of its own with ``home`` as its home."""
        shared = self.get(database, request)
        created = create_tenant(database_settings(shared), unique("tenant"))
        return TenantServer(shared, home, created.admin_key)

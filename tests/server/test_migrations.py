"""The migrations and the ORM describe one schema: a database made by migrating has every table, column, index
and unique key the ORM declares, and nothing else (several sessions add migrations; drift would show only in
production, where the database is migrated while the tests' ORM is not)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from baton.server.database.migrate import current_revision, head_revision, upgrade
from baton.server.database.orm import Base


def _differences(url: str) -> list[Any]:
    engine = create_engine(url)
    try:
        upgrade(engine)
        assert current_revision(engine) == head_revision()
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": False})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_sqlite_migrations_match_the_orm(tmp_path: Path) -> None:
    assert _differences(f"sqlite:///{tmp_path / 'schema.db'}") == []

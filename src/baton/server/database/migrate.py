"""Run Alembic migrations programmatically: a fresh database is made by migrating, never by ``create_all``.

Every server start migrates, and almost always finds the database at head already. That case is answered with one
query and no Alembic: importing Alembic (and Mako, which it pulls in) and loading the migration scripts cost
~0.3 s of CPU, an eighth of a server's start (issue 12). The head is the newest script's revision, which the
scripts' names carry (``NNNN_name.py`` holds ``revision = "NNNN"``, each revising the one before: one line of
history; ``tests/server/test_migration_head.py`` holds the scripts to it).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_SCRIPT_NAME = re.compile(r"^(\d{4})_\w+\.py$")


def alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database up to ``revision`` in one transaction (a query and nothing else when it is at head)."""
    if revision == "head" and at_head(engine):
        return
    from alembic import command

    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


@cache
def newest_script_revision() -> str | None:
    """The head revision, from the scripts' names (see the module's docstring); None without such scripts (an
    install of compiled files only), which leaves every check to Alembic."""
    numbers = [match[1] for path in (MIGRATIONS_DIR / "versions").iterdir() if (match := _SCRIPT_NAME.match(path.name))]
    return max(numbers, default=None)


def at_head(engine: Engine) -> bool:
    """Whether the database's recorded revision is the newest script's (False when it has none, or no table)."""
    try:
        with engine.connect() as connection:
            versions = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except SQLAlchemyError:  # no alembic_version table: a new database
        return False
    newest = newest_script_revision()
    return newest is not None and versions == [newest]


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()

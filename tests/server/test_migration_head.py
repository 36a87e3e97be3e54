"""A server start at head migrates with one query and no Alembic (issue 12): the head it compares with is read from
the scripts' names, so those must say what Alembic says."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text

from baton.server.database.migrate import MIGRATIONS_DIR, at_head, head_revision, newest_script_revision, upgrade


def _revisions(path: Path) -> dict[str, Any]:
    """The module-level ``revision`` and ``down_revision`` of a migration script."""
    found: dict[str, Any] = {}
    for node in ast.parse(path.read_text()).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id in ("revision", "down_revision"):
            found[target.id] = ast.literal_eval(node.value)  # type: ignore[attr-defined]
    return found


def test_each_script_is_named_by_its_revision_and_revises_the_one_before() -> None:
    scripts = sorted(path for path in (MIGRATIONS_DIR / "versions").glob("*.py") if path.name != "__init__.py")
    previous = None
    for path in scripts:
        assert _revisions(path) == {"revision": path.name[:4], "down_revision": previous}, path.name
        previous = path.name[:4]
    assert newest_script_revision() == previous == head_revision()


def test_at_head_only_once_migrated_and_then_upgrade_is_one_query(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'head.db'}")
    try:
        assert at_head(engine) is False  # a new database: no alembic_version table
        upgrade(engine)
        assert at_head(engine) is True
        statements: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
        upgrade(engine)
        assert statements == ["SELECT version_num FROM alembic_version"]
        with engine.begin() as connection:  # a database one script behind is migrated by Alembic again
            connection.execute(text("UPDATE alembic_version SET version_num = '0001'"))
        assert at_head(engine) is False
    finally:
        engine.dispose()


def test_a_process_that_upgrades_a_database_at_head_never_imports_alembic(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'quiet.db'}"
    engine = create_engine(url)
    upgrade(engine)
    engine.dispose()
    script = (
        "import sys\n"
        "from sqlalchemy import create_engine\n"
        "from baton.server.database.migrate import upgrade\n"
        f"upgrade(create_engine({url!r}))\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] in ('alembic', 'mako')))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

"""Flow-run logs: idempotent batch writes (each line carries a sender-chosen key) and paged reads."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from baton.schemas.actions import LogEntry
from baton.server.database.orm import Log


def write_logs(session: Session, tenant_id: str, flow_run_id: str, entries: list[LogEntry]) -> int:
    """Store the lines; a line whose key is already stored for this run is skipped. Returns lines stored."""
    if not entries:
        return 0
    rows = [
        {
            "tenant_id": tenant_id,
            "flow_run_id": flow_run_id,
            "task_run_id": entry.task_run_id,
            "key": entry.key or uuid.uuid4().hex,
            "timestamp": entry.timestamp,
            "level": entry.level,
            "name": entry.name,
            "message": entry.message,
        }
        for entry in entries
    ]
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(Log).values(rows).on_conflict_do_nothing(index_elements=["flow_run_id", "key"]).returning(Log.id)
    # Counted from RETURNING: rowcount of a multi-row insert is -1 on some drivers (psycopg).
    return len(session.execute(stmt).all())


def read_logs(session: Session, tenant_id: str, flow_run_id: str, offset: int, limit: int) -> list[Log]:
    """Lines with id > offset, oldest first: pass the last id back as the next offset to follow a run."""
    stmt = (
        select(Log)
        .where(Log.tenant_id == tenant_id, Log.flow_run_id == flow_run_id, Log.id > offset)
        .order_by(Log.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))

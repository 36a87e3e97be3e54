"""Flow-run logs: idempotent batch writes under a per-run quota, and paged reads.

Each line carries a sender-chosen key, so a retried batch never stores a line twice. A run stores at most
``LogQuota.max_lines`` lines and ``max_bytes`` bytes (message and logger name, UTF-8); the lines past either bound
are not stored but counted in ``flow_runs.logs_dropped``, and never silently (issue 8, items 7 and 8): one stored
marker line (key :data:`MARKER_KEY`, placed where the first line was dropped) says how many were dropped and why,
and the run's final state message says it too (:func:`with_dropped_note`). A run that ended more than
``LogQuota.grace_seconds`` ago takes no more lines (:class:`LogsClosed`, 409).

Stored lines are idempotent (a line's key is stored once); dropped lines leave no key behind, so a batch past the
quota that is sent again (its answer was lost) is counted again: the dropped count may exceed the truth by such
batches, never fall short of it.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, cast

from sqlalchemy import Table, select, text, update
from sqlalchemy.orm import Session

from baton.schemas.actions import RESERVED_LOG_KEY_PREFIX, LogEntry
from baton.schemas.states import FINAL_STATES
from baton.server.database.connection import upsert_insert
from baton.server.database.orm import FlowRun, Log, UTCDateTime, utcnow
from baton.server.models.errors import LogsClosed
from baton.settings import ServerSettings

MARKER_KEY = f"{RESERVED_LOG_KEY_PREFIX}log-quota"
MARKER_LEVEL = 30  # logging.WARNING
_NOTE = re.compile(r" \[\d+ log lines? dropped: [^\]]*\]$")


@dataclass(frozen=True)
class LogQuota:
    """What one run may store (``ServerSettings.max_log_lines_per_run`` etc.)."""

    max_lines: int
    max_bytes: int
    grace_seconds: float

    @classmethod
    def of(cls, server: ServerSettings) -> LogQuota:
        return cls(server.max_log_lines_per_run, server.max_log_bytes_per_run, server.log_grace_seconds)


@dataclass(frozen=True)
class LogsResult:
    written: int  # lines stored by this batch
    dropped: int  # lines of this batch past the quota


def line_bytes(entry: LogEntry) -> int:
    return len(entry.message.encode()) + len(entry.name.encode())


def with_dropped_note(message: str | None, dropped: int) -> str | None:
    """``message`` with a note of the dropped log lines at its end (replacing an older note); as is when none."""
    if dropped <= 0:
        return message
    base = _NOTE.sub("", message or "")
    note = f"[{dropped} log line{'s' if dropped != 1 else ''} dropped: over the run's log quota]"
    return f"{base} {note}" if base else note


def check_open_for_logs(run: FlowRun, grace_seconds: float) -> None:
    """Raise LogsClosed if ``run`` ended more than ``grace_seconds`` ago."""
    if run.state not in FINAL_STATES or run.end_time is None:
        return
    if utcnow() - run.end_time > timedelta(seconds=grace_seconds):
        raise LogsClosed(
            f"flow run {run.id} ended ({run.state}) at {run.end_time.isoformat()}: logs are taken until "
            f"{grace_seconds:g} s after a run ends"
        )


def _locked(session: Session, run: FlowRun) -> FlowRun:
    """``run`` re-read, locked on PostgreSQL until the transaction ends: concurrent batches count one at a time.

    SQLite has one writer at a time, and the counters are updated with ``x = x + n`` in any case.
    """
    if session.get_bind().dialect.name != "postgresql":
        return run
    query = select(FlowRun).where(FlowRun.id == run.id).with_for_update().execution_options(populate_existing=True)
    return session.scalars(query).one()


def _new_entries(session: Session, flow_run_id: str, entries: list[LogEntry]) -> list[LogEntry]:
    """``entries`` less those whose key is already stored, or repeated in the batch (a retried batch)."""
    keys = [entry.key for entry in entries if entry.key]
    stored = set()
    if keys:
        stored = set(session.scalars(select(Log.key).where(Log.flow_run_id == flow_run_id, Log.key.in_(keys))))
    fresh: list[LogEntry] = []
    for entry in entries:
        if entry.key:
            if entry.key in stored:
                continue
            stored.add(entry.key)
        fresh.append(entry)
    return fresh


def _within_quota(run: FlowRun, entries: list[LogEntry], quota: LogQuota) -> tuple[list[LogEntry], int]:
    """The longest prefix of ``entries`` the run's quota still takes (order is kept: no line after a dropped one
    is stored), and its size in bytes."""
    room_lines = quota.max_lines - run.log_count
    room_bytes = quota.max_bytes - run.log_bytes
    size = 0
    for index, entry in enumerate(entries):
        cost = line_bytes(entry)
        if index >= room_lines or size + cost > room_bytes:
            return entries[:index], size
        size += cost
    return entries, size


# On PostgreSQL, a batch is one INSERT of arrays. The generic path below sends one VALUES clause of 1000 rows (9,000
# placeholders) that psycopg rewrites from %(name)s to $n on every batch, uncached at that length, and that PostgreSQL
# parses: ~76 against ~40 ms of the server's CPU per 1000 lines. Ordered by position: ids follow the batch's order.
_POSTGRESQL_INSERT = text(
    """
    INSERT INTO logs (tenant_id, flow_run_id, task_run_id, key, timestamp, level, name, message)
    SELECT line.tenant_id, line.flow_run_id, line.task_run_id, line.key, line.timestamp, line.level, line.name,
           line.message
    FROM unnest(
        CAST(:tenant_ids AS varchar[]), CAST(:flow_run_ids AS varchar[]), CAST(:task_run_ids AS varchar[]),
        CAST(:keys AS varchar[]), CAST(:timestamps AS timestamptz[]), CAST(:levels AS integer[]),
        CAST(:names AS varchar[]), CAST(:messages AS text[])
    ) WITH ORDINALITY AS line(tenant_id, flow_run_id, task_run_id, key, timestamp, level, name, message, position)
    ORDER BY line.position
    ON CONFLICT (flow_run_id, key) DO NOTHING
    RETURNING id
    """
)
# Bound as ``:<column>s`` (tests/server/test_server_entry.py ties this list to the model's columns).
_COLUMNS = ("tenant_id", "flow_run_id", "task_run_id", "key", "timestamp", "level", "name", "message")
_TIMESTAMP = UTCDateTime()  # the arrays' times as the generic path binds them (UTC; a naive one refused)


def _insert(session: Session, rows: list[dict[str, Any]]) -> int:
    if not rows:
        return 0
    dialect = session.get_bind().dialect
    if dialect.name == "postgresql":
        arrays = {f"{column}s": [row[column] for row in rows] for column in _COLUMNS}
        arrays["timestamps"] = [_TIMESTAMP.process_bind_param(stamp, dialect) for stamp in arrays["timestamps"]]
        return len(session.execute(_POSTGRESQL_INSERT, arrays).all())
    table = cast(Table, Log.__table__)
    stmt = (
        upsert_insert(session, table)
        .on_conflict_do_nothing(index_elements=["flow_run_id", "key"])
        .returning(table.c.id)
    )
    # Rows as parameters of a Core insert (SQLAlchemy's "insertmanyvalues"): one VALUES clause of 1000 rows, or the
    # ORM's bulk path, cost several times the insert itself. Counted from RETURNING: rowcount is -1 with psycopg.
    return len(session.execute(stmt, rows).all())


def _row(tenant_id: str, flow_run_id: str, entry: LogEntry) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "flow_run_id": flow_run_id,
        "task_run_id": entry.task_run_id,
        "key": entry.key or uuid.uuid4().hex,
        "timestamp": entry.timestamp,
        "level": entry.level,
        "name": entry.name,
        "message": entry.message,
    }


def marker_message(dropped: int, quota: LogQuota) -> str:
    return (
        f"{dropped} log line{'s' if dropped != 1 else ''} of this run dropped: over the run's log quota of "
        f"{quota.max_lines} lines or {quota.max_bytes} bytes (server settings max_log_lines_per_run and "
        "max_log_bytes_per_run); the lines before this one were stored in full"
    )


def _record_dropped(session: Session, run: FlowRun, dropped: int, quota: LogQuota) -> None:
    """Store the marker line once (where the first line was dropped) and keep its count current; a run that has
    ended gets the count in its final state message too."""
    message = marker_message(dropped, quota)
    marker = {
        "tenant_id": run.tenant_id,
        "flow_run_id": run.id,
        "task_run_id": None,
        "key": MARKER_KEY,
        "timestamp": utcnow(),
        "level": MARKER_LEVEL,
        "name": "baton.server",
        "message": message,
    }
    if not _insert(session, [marker]):
        session.execute(
            update(Log)
            .where(Log.flow_run_id == run.id, Log.key == MARKER_KEY)
            .values(message=message)
            .execution_options(synchronize_session=False)
        )
    if run.state in FINAL_STATES:
        session.execute(
            update(FlowRun)
            .where(FlowRun.id == run.id)
            .values(state_message=with_dropped_note(run.state_message, dropped))
            .execution_options(synchronize_session=False)
        )


def write_logs(session: Session, run: FlowRun, entries: list[LogEntry], quota: LogQuota) -> LogsResult:
    """Store the lines of a batch that are new and within the run's quota; count the rest as dropped.

    Raises:
        LogsClosed: the run ended more than ``quota.grace_seconds`` ago (409).
    """
    check_open_for_logs(run, quota.grace_seconds)
    run = _locked(session, run)
    fresh = _new_entries(session, run.id, entries)
    if not fresh:
        return LogsResult(written=0, dropped=0)
    accepted, size = _within_quota(run, fresh, quota)
    written = _insert(session, [_row(run.tenant_id, run.id, e) for e in accepted])
    dropped = len(fresh) - len(accepted)
    session.execute(
        update(FlowRun)
        .where(FlowRun.id == run.id)
        .values(
            log_count=FlowRun.log_count + written,
            log_bytes=FlowRun.log_bytes + size,
            logs_dropped=FlowRun.logs_dropped + dropped,
        )
        .execution_options(synchronize_session=False)
    )
    if dropped:
        _record_dropped(session, run, run.logs_dropped + dropped, quota)
    return LogsResult(written=written, dropped=dropped)


def read_logs(session: Session, tenant_id: str, flow_run_id: str, offset: int, limit: int) -> list[Log]:
    """Lines with id > offset, oldest first: pass the last id back as the next offset to follow a run."""
    stmt = (
        select(Log)
        .where(Log.tenant_id == tenant_id, Log.flow_run_id == flow_run_id, Log.id > offset)
        .order_by(Log.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))

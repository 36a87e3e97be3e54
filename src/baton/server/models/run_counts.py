"""Runs counted by (tenant, creation hour, flow version, current state), without counting rows.

Triggers on ``flow_runs`` (migration 0010) append a +1/-1 row to ``flow_run_count_deltas`` for every change;
``fold`` moves them into ``flow_run_counts``, and the readers (``by_hour``, ``by_flow``, ``totals``) add both, so
a figure is exact the moment the change commits, whether or not it has been folded yet.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, func, select, text, union_all
from sqlalchemy.orm import Session

from baton.server.database.connection import upsert_insert
from baton.server.database.orm import FlowRunCount, FlowRunCountDelta, FlowRunHourCount

# Deltas folded per statement: a backlog (a bulk import, a server that was down) is folded in bounded bites.
FOLD_BATCH = 20_000
# The key of the PostgreSQL advisory lock that lets one replica fold at a time (the others skip the pass).
_FOLD_LOCK = 0x0BA7_0C0A

CountKey = tuple[str, int, str, str]  # tenant_id, hour, flow_id, state


def hour_number(moment: datetime) -> int:
    """The stored form of ``moment``'s hour: whole hours since 1970-01-01 UTC, as the triggers write it (an
    integer, so ranges compare as numbers, not as collated text)."""
    return int(moment.timestamp()) // 3600


def hour_of(number: int) -> datetime:
    """The start of the hour that ``hour_number`` gave (UTC)."""
    return datetime.fromtimestamp(number * 3600, UTC)


def by_hour(session: Session, tenant_id: str, since: datetime) -> dict[datetime, dict[str, int]]:
    """The tenant's runs created from ``since``'s hour on: creation hour → current state → runs (no zeros).

    Read from the per-hour table (a few rows an hour, whatever the number of flows)."""
    counts: dict[datetime, dict[str, int]] = {}
    for (hour, state), count in totals(session, tenant_id, since, ("hour", "state"), per_flow=False):
        counts.setdefault(hour_of(hour), {})[state] = count
    return counts


def by_flow(
    session: Session, tenant_id: str, since: datetime, state: str | None = None, flow_ids: list[str] | None = None
) -> dict[str, dict[str, int]]:
    """The tenant's runs created from ``since``'s hour on: flow version id → current state → runs (no zeros);
    only in ``state`` and of ``flow_ids`` when given."""
    counts: dict[str, dict[str, int]] = {}
    rows = totals(session, tenant_id, since, ("flow_id", "state"), state=state, flow_ids=flow_ids)
    for (flow_id, row_state), count in rows:
        counts.setdefault(flow_id, {})[row_state] = count
    return counts


def totals(
    session: Session,
    tenant_id: str,
    since: datetime,
    keys: tuple[str, ...],
    *,
    per_flow: bool = True,
    state: str | None = None,
    flow_ids: list[str] | None = None,
) -> list[tuple[tuple[Any, ...], int]]:
    """Folded counts plus pending deltas from ``since``'s hour on, summed by ``keys`` in SQL (one statement, one
    snapshot: a fold committing meanwhile is seen wholly or not at all). ``per_flow=False`` reads the per-hour
    table, whose keys have no ``flow_id``."""
    table: Any = FlowRunCount if per_flow else FlowRunHourCount
    counts, deltas = table.__table__.c, FlowRunCountDelta.__table__.c
    parts = []
    for columns, value in ((counts, counts.count), (deltas, deltas.delta)):
        part = select(*(columns[key] for key in keys), value.label("n")).where(
            columns.tenant_id == tenant_id, columns.hour >= hour_number(since)
        )
        if state is not None:
            part = part.where(columns.state == state)
        if flow_ids is not None:
            part = part.where(columns.flow_id.in_(flow_ids))
        parts.append(part)
    both = union_all(*parts).subquery()
    grouped = [both.c[key] for key in keys]
    total = func.sum(both.c.n)
    rows = session.execute(select(*grouped, total).group_by(*grouped).having(total != 0)).all()
    return [(tuple(row[: len(keys)]), int(row[-1])) for row in rows]


def fold(session: Session) -> int:
    """Move pending deltas into the counts, oldest first, at most ``FOLD_BATCH``; how many were folded.

    Deleting with RETURNING is what decides which deltas this pass owns: a delta is added to the counts by the
    transaction that deleted it, once. On PostgreSQL one replica folds at a time (an advisory lock, skipped when
    taken); on SQLite the write transaction is the only one.
    """
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres and not session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": _FOLD_LOCK}).scalar():
        return 0
    table = FlowRunCountDelta.__table__
    batch = select(FlowRunCountDelta.id).order_by(FlowRunCountDelta.id).limit(FOLD_BATCH).scalar_subquery()
    taken = session.execute(
        delete(FlowRunCountDelta)
        .where(FlowRunCountDelta.id.in_(batch))
        .returning(table.c.tenant_id, table.c.hour, table.c.flow_id, table.c.state, table.c.delta)
    ).all()
    sums: Counter[CountKey] = Counter()
    for tenant_id, hour, flow_id, state, delta in taken:
        sums[(tenant_id, hour, flow_id, state)] += delta
    _add(session, sums, postgres)
    return len(taken)


def _add(session: Session, sums: Counter[CountKey], postgres: bool) -> None:
    """count += sum for each key, in both tables, in key order (two writers never wait on each other's rows in a
    cycle)."""
    hours: Counter[tuple[str, int, str]] = Counter()
    for (tenant_id, hour, _flow_id, state), total in sums.items():
        hours[(tenant_id, hour, state)] += total
    for table, key_names, changes in (
        (FlowRunCount.__table__, ("tenant_id", "hour", "flow_id", "state"), sums),
        (FlowRunHourCount.__table__, ("tenant_id", "hour", "state"), hours),
    ):
        rows = [{**dict(zip(key_names, key, strict=True)), "count": n} for key, n in sorted(changes.items()) if n]
        if not rows:
            continue
        table_: Any = table
        stmt = upsert_insert(session, table_)
        stmt = stmt.on_conflict_do_update(
            index_elements=list(key_names), set_={"count": table_.c.count + stmt.excluded.count}
        )
        session.execute(stmt, rows)
        # A key back at zero (its runs moved on: Submitted, Running) is deleted, so the tables hold only what
        # counts; a key probe each, on the primary key.
        emptied = delete(table_).where(
            *(table_.c[name] == bindparam(f"key_{name}") for name in key_names), table_.c.count == 0
        )
        session.execute(emptied, [{f"key_{name}": row[name] for name in key_names} for row in rows])

"""Pages within a byte budget: how many rows fit, and offset-paged lists (task runs, agents). Log lines and task-run
messages are up to 100,000 characters each and a tenant's agents may be many, so a page of a few thousand rows could
otherwise weigh hundreds of megabytes. Sizes are read first (one query of lengths), then only the rows that fit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from baton.server.database.orm import Agent, Log, TaskRun
from baton.server.models import cursors

T = TypeVar("T")
PAGE_ROWS = 1000  # rows of one page at most, before the byte budget

# Each row's ids, times and small fields around its variable-length text, in the answer.
_ROW_OVERHEAD = 300


def within(sizes: Any, max_bytes: int) -> int:
    """How many of ``sizes`` (in order) fit in ``max_bytes``: at least one, when there is one."""
    count = total = 0
    for size in sizes:
        if count and total + int(size) > max_bytes:
            break
        count += 1
        total += int(size)
    return max(count, 1)


def lines_within(session: Session, tenant_id: str, flow_run_id: str, offset: int, limit: int, max_bytes: int) -> int:
    """How many of the next ``limit`` lines after ``offset`` fit in ``max_bytes`` (at least one, when there is one)."""
    sizes = session.scalars(
        select(func.length(Log.message) + func.length(Log.name) + _ROW_OVERHEAD)
        .where(Log.tenant_id == tenant_id, Log.flow_run_id == flow_run_id, Log.id > offset)
        .order_by(Log.id)
        .limit(limit)
    )
    return within(sizes, max_bytes)


@dataclass
class OffsetPage(Generic[T]):
    rows: list[T]
    next_cursor: str | None  # where the next page starts; None when this one is the last


def offset_page(
    session: Session, sizes: Select[Any], rows: Select[Any], cursor: str | None, max_bytes: int
) -> OffsetPage[Any]:
    """One page of ``rows`` (an ordered select) from the offset ``cursor`` names: at most :data:`PAGE_ROWS`, fewer
    when their ``sizes`` (the same order) pass ``max_bytes``."""
    offset = cursors.offset(cursor) if cursor else 0
    fit = within(session.scalars(sizes.offset(offset).limit(PAGE_ROWS)), max_bytes)
    found = list(session.scalars(rows.offset(offset).limit(fit + 1)))
    return OffsetPage(found[:fit], cursors.encode(offset + fit) if len(found) > fit else None)


def task_runs_page(
    session: Session, tenant_id: str, flow_run_id: str, cursor: str | None, max_bytes: int
) -> OffsetPage[TaskRun]:
    """The run's task runs, oldest first, one page of them."""
    mine = (TaskRun.tenant_id == tenant_id, TaskRun.flow_run_id == flow_run_id)
    order = (TaskRun.created, TaskRun.id)
    size = func.coalesce(func.length(TaskRun.message), 0) + func.length(TaskRun.task_name) + _ROW_OVERHEAD
    return offset_page(
        session,
        select(size).where(*mine).order_by(*order),
        select(TaskRun).where(*mine).order_by(*order),
        cursor,
        max_bytes,
    )


def agents_page(session: Session, tenant_id: str, cursor: str | None, max_bytes: int) -> OffsetPage[Agent]:
    """The tenant's agents, oldest first, one page of them."""
    order = (Agent.created, Agent.id)
    # Besides the row: liveness and up to 20 current run ids (models/agent_fleet.py).
    size = func.length(Agent.labels_key) + func.length(Agent.name) + _ROW_OVERHEAD + 1000
    return offset_page(
        session,
        select(size).where(Agent.tenant_id == tenant_id).order_by(*order),
        select(Agent).where(Agent.tenant_id == tenant_id).order_by(*order),
        cursor,
        max_bytes,
    )

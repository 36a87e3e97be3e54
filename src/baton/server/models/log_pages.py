"""How many rows fit in one page of a byte budget. Log lines and task-run messages are up to 100,000 characters
each and a tenant's agents may be many, so a page of a few thousand rows could otherwise weigh hundreds of megabytes.
Sizes are read first (one query of lengths), then only the rows that fit."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from baton.server.database.orm import Agent, Log, TaskRun

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


def task_runs_within(
    session: Session, tenant_id: str, flow_run_id: str, offset: int, limit: int, max_bytes: int
) -> int:
    """How many of the run's task runs from ``offset`` on (oldest first) fit in ``max_bytes``."""
    sizes = session.scalars(
        select(func.coalesce(func.length(TaskRun.message), 0) + func.length(TaskRun.task_name) + _ROW_OVERHEAD)
        .where(TaskRun.tenant_id == tenant_id, TaskRun.flow_run_id == flow_run_id)
        .order_by(TaskRun.created, TaskRun.id)
        .offset(offset)
        .limit(limit)
    )
    return within(sizes, max_bytes)


def agents_within(session: Session, tenant_id: str, offset: int, limit: int, max_bytes: int) -> int:
    """How many of the tenant's agents from ``offset`` on (oldest first) fit in ``max_bytes``."""
    sizes = session.scalars(
        select(func.length(Agent.labels_key) + func.length(Agent.name) + _ROW_OVERHEAD)
        .where(Agent.tenant_id == tenant_id)
        .order_by(Agent.created, Agent.id)
        .offset(offset)
        .limit(limit)
    )
    return within(sizes, max_bytes)

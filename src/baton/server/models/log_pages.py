"""How many log lines fit in one page of a byte budget: lines are up to 100,000 characters each, so a page of a few
thousand could otherwise weigh hundreds of megabytes."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from baton.server.database.orm import Log

# Each line's id, times, level and name around its message, in the answer.
_LINE_OVERHEAD = 300


def lines_within(session: Session, tenant_id: str, flow_run_id: str, offset: int, limit: int, max_bytes: int) -> int:
    """How many of the next ``limit`` lines after ``offset`` fit in ``max_bytes`` (at least one, when there is one)."""
    sizes = session.scalars(
        select(func.length(Log.message) + func.length(Log.name) + _LINE_OVERHEAD)
        .where(Log.tenant_id == tenant_id, Log.flow_run_id == flow_run_id, Log.id > offset)
        .order_by(Log.id)
        .limit(limit)
    )
    count = total = 0
    for size in sizes:
        if count and total + int(size) > max_bytes:
            break
        count += 1
        total += int(size)
    return max(count, 1)

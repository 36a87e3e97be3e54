"""The scheduler: every ``scheduler_interval_seconds``, creates the runs of every active schedule a horizon ahead.

Any number of replicas may run it at once on one database: the unique schedule key makes each (flow, clock, time)
one run whoever inserts it, and each chunk of flows is one transaction, so a replica killed mid-tick leaves either
all of a chunk's runs and marks or none of them (the next pass, here or elsewhere, creates them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.connection import transaction
from baton.server.database.orm import utcnow
from baton.server.models import schedules
from baton.server.models.schedules import SchedulePolicy

logger = logging.getLogger("baton.server.services")

# Flows handled per transaction: small enough to keep locks short, large enough not to pay a commit per flow.
CHUNK = 50


@dataclass
class TickResult:
    flows: int = 0
    created: int = 0
    seconds: float = 0.0


class SchedulerService:
    def __init__(
        self,
        factory: sessionmaker[Session],
        policy: SchedulePolicy,
        now: Callable[[], datetime] = utcnow,
        chunk: int = CHUNK,
    ) -> None:
        self._factory = factory
        self.policy = policy
        self._now = now
        self._chunk = chunk

    def run_once(self) -> None:
        result = self.tick()
        if result.created:
            logger.info(
                "scheduler: %d runs created for %d flows in %.3fs", result.created, result.flows, result.seconds
            )

    def tick(self) -> TickResult:
        """One pass over every scheduled flow; returns what it did."""
        started = time.perf_counter()
        with transaction(self._factory) as session:
            keys = [(flow.tenant_id, flow.name) for flow in schedules.scheduled_flows(session)]
        result = TickResult(flows=len(keys))
        for first in range(0, len(keys), self._chunk):
            result.created += self._tick_chunk(set(keys[first : first + self._chunk]))
        result.seconds = time.perf_counter() - started
        return result

    def _tick_chunk(self, keys: set[tuple[str, str]]) -> int:
        now = self._now()
        created = 0
        with transaction(self._factory) as session:
            # Read again inside the writing transaction: a flow paused or re-registered since the listing is seen
            # as it is now.
            names = {name for _tenant, name in keys}
            flows = [f for f in schedules.scheduled_flows(session, names) if (f.tenant_id, f.name) in keys]
            marks = schedules.all_marks(session, flows)
            created += schedules.schedule_flows(session, flows, now, self.policy, marks)
        return created

"""Ends or requeues deployed runs that neither their process nor their agent vouches for (docs/design.md §7).

The policy lives in :mod:`baton.server.models.lost_runs`. This service adds the one rule about time that only a
running server knows: silence during the server's own outage, or its database's, does not count
(:mod:`baton.server.services.grace`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.orm import utcnow
from baton.server.models.lost_runs import RecoveryPolicy, recover_lost_runs
from baton.server.notifier import RunNotifier
from baton.server.services.grace import OutageGrace

logger = logging.getLogger("baton.server.services.recovery")


class RecoveryService:
    def __init__(
        self,
        factory: sessionmaker[Session],
        notifier: RunNotifier,
        policy: RecoveryPolicy,
        grace_margin_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = utcnow,
    ) -> None:
        """``clock`` times the grace after a start; ``wall_clock`` is what heartbeats are compared with."""
        self._factory = factory
        self._notifier = notifier
        self._policy = policy
        self._grace = OutageGrace(policy.run_heartbeat_timeout_seconds + grace_margin_seconds, clock)
        self._wall_clock = wall_clock

    def run_once(self) -> None:
        outcome = self._grace.attempt(
            self._factory, lambda session: recover_lost_runs(session, self._policy, now=self._wall_clock())
        )
        if outcome is None:
            return
        if outcome.count:
            logger.warning(
                "recovered %d lost flow run(s): %d requeued, %d failed, %d cancelled",
                outcome.count,
                len(outcome.requeued),
                len(outcome.failed),
                len(outcome.cancelled),
            )
        # Requeued runs are claimable again; ended ones freed concurrency slots that other runs may wait for.
        ended = [*outcome.requeued, *outcome.failed, *outcome.cancelled]
        for tenant_id in {run.tenant_id for run in ended}:
            self._notifier.notify_threadsafe(tenant_id)

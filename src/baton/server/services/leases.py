"""Gives back claims whose lease ran out: the agent died between claim and deployment (DESIGN.md §3)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from baton.server.models.claims import expire_leases
from baton.server.notifier import RunNotifier
from baton.server.services.grace import OutageGrace

logger = logging.getLogger("baton.server.services.leases")


class LeaseExpiryService:
    """Returns expired claims to the queue.

    Leases that ran out while this server or its database was down are not expired at once
    (:mod:`baton.server.services.grace`): an agent that deployed a run during the outage can still report it
    Submitted (agents retry with backoff) instead of finding it given away.
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        notifier: RunNotifier,
        max_returns: int,
        grace_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._factory = factory
        self._notifier = notifier
        self._max_returns = max_returns
        self._grace = OutageGrace(grace_seconds, clock)

    def run_once(self) -> None:
        requeued = self._grace.attempt(self._factory, lambda session: expire_leases(session, self._max_returns))
        if not requeued:
            return
        logger.info("returned %d flow run(s) with expired leases to Scheduled", len(requeued))
        for tenant_id in {run.tenant_id for run in requeued}:
            self._notifier.notify_threadsafe(tenant_id)

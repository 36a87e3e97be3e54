"""Gives back claims whose lease ran out: the agent died between claim and deployment (DESIGN.md §3)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.connection import transaction
from baton.server.models.claims import expire_leases
from baton.server.notifier import RunNotifier

logger = logging.getLogger("baton.server.services.leases")


class LeaseExpiryService:
    def __init__(self, factory: sessionmaker[Session], notifier: RunNotifier, max_returns: int) -> None:
        self._factory = factory
        self._notifier = notifier
        self._max_returns = max_returns

    def run_once(self) -> None:
        with transaction(self._factory) as session:
            requeued = expire_leases(session, self._max_returns)
            tenants = {run.tenant_id for run in requeued}
            if requeued:
                logger.info("returned %d flow run(s) with expired leases to Scheduled", len(requeued))
        for tenant_id in tenants:
            self._notifier.notify_threadsafe(tenant_id)

"""Skips runs later than their flow's ``max_lateness`` that nobody claims (policy in ``models/lateness.py``).

Claims skip such runs too; this sweep makes a run that no agent asks for (none is live, none has its labels)
end visibly, Cancelled with the reason, instead of waiting to start days late.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.connection import transaction
from baton.server.database.orm import utcnow
from baton.server.models.lateness import skip_too_late_runs

logger = logging.getLogger("baton.server.services.lateness")


class LatenessService:
    def __init__(self, factory: sessionmaker[Session], now: Callable[[], datetime] = utcnow) -> None:
        self._factory = factory
        self._now = now

    def run_once(self) -> None:
        self.sweep()

    def sweep(self) -> int:
        """One sweep; the number of runs skipped."""
        with transaction(self._factory) as session:
            skipped = skip_too_late_runs(session, self._now())
        if skipped:
            logger.warning("skipped %d flow run(s) later than their flow's max_lateness", len(skipped))
        return len(skipped)

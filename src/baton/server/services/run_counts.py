"""Folds the run-count deltas the ``flow_runs`` triggers append into the counts (``models/run_counts.py``).

Readers add the pending deltas themselves, so this pass only keeps that pending set small: a figure is exact
whether or not it has run.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.connection import transaction
from baton.server.models.run_counts import FOLD_BATCH, fold

logger = logging.getLogger("baton.server.services.run_counts")
# A backlog bigger than this many batches waits for the next tick: one pass must not hold the database long.
MAX_BATCHES_PER_PASS = 10


class RunCountService:
    def __init__(self, factory: sessionmaker[Session]) -> None:
        self._factory = factory

    def run_once(self) -> None:
        self.fold_pending()

    def fold_pending(self) -> int:
        """Fold pending deltas, a batch per transaction; how many were folded."""
        folded = 0
        for _ in range(MAX_BATCHES_PER_PASS):
            with transaction(self._factory) as session:
                done = fold(session)
            folded += done
            if done < FOLD_BATCH:
                break
        if folded >= FOLD_BATCH:
            logger.info("folded %d run-count change(s) into the counts", folded)
        return folded

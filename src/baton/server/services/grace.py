"""Silence caused by the server's own outage is not held against agents and flow-run processes.

While this server was down, or could not reach its database, nobody could report to it: leases ran out and
heartbeats went stale for no fault of theirs. So the lease and recovery services wait after the server starts,
and again after each failed look at the database, for one whole timeout plus a margin: the longest pause a
client makes between retries (``server.outage_grace_margin_seconds``, by default an agent's longest backoff, 30 s),
since after an outage a backed-off agent's first call may come that late.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from baton.server.database.connection import transaction

T = TypeVar("T")


class OutageGrace:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._ends = clock() + self.seconds

    def active(self) -> bool:
        return self._clock() < self._ends

    def restart(self) -> None:
        """The database could not be reached just now: wait a whole grace again from here."""
        self._ends = self._clock() + self.seconds

    def attempt(self, factory: sessionmaker[Session], work: Callable[[Session], T]) -> T | None:
        """``work`` in one transaction, or None within the grace. A database error restarts the grace and is
        raised (the service runner logs it)."""
        if self.active():
            return None
        try:
            with transaction(factory) as session:
                return work(session)
        except SQLAlchemyError:
            self.restart()
            raise

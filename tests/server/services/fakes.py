"""Stand-ins for the background services' clock and session factory, to test their timing without waiting."""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session


class FakeClock:
    """A monotonic clock that moves only when a test sets ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingFactory:
    """Stands in for a session factory: counts how often the service opened the database, then refuses."""

    def __init__(self) -> None:
        self.opened = 0
        self.lock = threading.Lock()

    def __call__(self) -> Session:
        with self.lock:
            self.opened += 1
        raise RuntimeError("opened the database")

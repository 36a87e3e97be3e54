"""Stand-ins for the background services' clock and session factory, to test their timing without waiting; and
waiting for a service to act on a run, for the tests that do wait."""

from __future__ import annotations

import threading

from sqlalchemy.orm import Session

from baton.schemas.responses import FlowRunRead
from server.harness import TenantContext
from support import wait_for


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


def wait_for_state(tenant: TenantContext, run_id: str, state: str) -> FlowRunRead:
    """The run once it is in ``state`` (a service acts within its interval; allow for a slow machine)."""

    def reached() -> FlowRunRead | None:
        run = tenant.run(run_id)
        return run if run.state == state else None

    run = wait_for(reached, timeout=15, what=f"flow run {run_id} to become {state}")
    assert run is not None
    return run

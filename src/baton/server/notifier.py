"""Wakes long-polling claim requests the moment a run becomes claimable in this server process.

Several replicas (issue 4) will add a database-level channel; within one process an asyncio event per tenant is
enough. A waiter takes the tenant's event *before* it queries, so a run created during the query is not missed.
"""

from __future__ import annotations

import asyncio
import contextlib


class RunNotifier:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._events: dict[str, asyncio.Event] = {}

    def notify_threadsafe(self, tenant_id: str) -> None:
        """Notify from a worker thread (sync handlers and services run there)."""
        self._loop.call_soon_threadsafe(self.notify, tenant_id)

    def event(self, tenant_id: str) -> asyncio.Event:
        """The event the next :meth:`notify` for this tenant sets. Call from the event loop."""
        return self._events.setdefault(tenant_id, asyncio.Event())

    def notify(self, tenant_id: str) -> None:
        event = self._events.pop(tenant_id, None)
        if event is not None:
            event.set()

    def notify_all(self) -> None:
        for tenant_id in list(self._events):
            self.notify(tenant_id)

    @staticmethod
    async def wait(event: asyncio.Event, timeout: float) -> bool:
        """Wait until ``event`` is set or ``timeout`` passes; True when it was set."""
        if timeout <= 0:
            return event.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return event.is_set()

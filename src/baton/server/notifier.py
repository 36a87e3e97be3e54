"""Wakes long-polling claim requests the moment a run becomes claimable.

Within one server process an asyncio event per tenant is enough. A waiter takes the tenant's event *before* it
queries, so a run created during the query is not missed. Several replicas sharing one PostgreSQL also hear of
each other's runs: :meth:`RunNotifier.notify_threadsafe` hands the tenant to a ``publish`` callable (PostgreSQL
``NOTIFY``, see :mod:`baton.server.services.wakeups`), and the other replicas' listeners call
:meth:`RunNotifier.wake_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable


class RunNotifier:
    def __init__(self, loop: asyncio.AbstractEventLoop, publish: Callable[[str], None] | None = None) -> None:
        self._loop = loop
        self._events: dict[str, asyncio.Event] = {}
        self._publish = publish
        # Set when the server begins to stop: waiters return at once, and new waits do not start.
        self.closing = False

    def close_threadsafe(self) -> None:
        """The server is stopping: end every long poll now (each answers "no runs"), from any thread."""
        self.closing = True
        self.wake_all_threadsafe()

    def notify_threadsafe(self, tenant_id: str) -> None:
        """Runs of ``tenant_id`` became claimable: wake this process's waiters and tell the other replicas.

        Call from a worker thread (sync handlers and services run there), after the commit.
        """
        self.wake_threadsafe(tenant_id)
        if self._publish is not None:
            self._publish(tenant_id)

    def wake_threadsafe(self, tenant_id: str) -> None:
        """Wake this process's waiters only: for news that came from another replica."""
        # A closed loop means the server is shutting down: there is nobody left to wake.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.notify, tenant_id)

    def wake_all_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.notify_all)

    def event(self, tenant_id: str) -> asyncio.Event:
        """The event the next :meth:`notify` for this tenant sets (already set once closing). Call from the loop."""
        event = self._events.setdefault(tenant_id, asyncio.Event())
        if self.closing:
            event.set()
        return event

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

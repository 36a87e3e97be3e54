"""Wakes long-polling claim requests the moment a run becomes claimable.

Each waiting claim call is a :class:`Waiter` enrolled with its tenant, in the order they began waiting. Most news
is "the tenant's queue changed" (a run put back, a slot freed, a deregistration): :meth:`RunNotifier.notify` wakes
every waiter of the tenant, and each claims again. A new run due now wakes one waiter only
(:meth:`RunNotifier.notify_run`): the longest waiting whose agent's labels can take it. Waking them all made every
idle agent's claim query the database (a write transaction) for one run that only one of them gets: N attempts per
run for N waiting agents (issue 12). A waiter woken for a run that claims nothing passes the wake on to the next one
that has not had it only when its own agent could not take the run (its labels were not known yet when it was woken);
an agent that could take it and found nothing shows that nobody can now (:meth:`RunNotifier.claimed_nothing`). One
that ends its call without using the wake passes it on. Whatever a wake misses, each waiter claims again at least every
``claim_recheck_seconds``.

Several replicas sharing one PostgreSQL also hear of each other's runs: the ``notify`` methods hand the tenant to a
``publish`` callable (PostgreSQL ``NOTIFY``, see :mod:`baton.server.services.wakeups`), and the other replicas'
listeners call :meth:`RunNotifier.wake_threadsafe`, which wakes all of their waiters of that tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from baton.labels import agent_can_take

_ids = itertools.count()


@dataclass(frozen=True)
class RunWake:
    """A wake given for one run: its labels, and the waiters that have had it."""

    labels: frozenset[str]
    tried: frozenset[int] = frozenset()


@dataclass(eq=False)
class Waiter:
    """One claim call waiting for runs of ``tenant_id``. Used on the event loop's thread only."""

    tenant_id: str
    labels: frozenset[str] | None = None  # its agent's, once a claim attempt has read them: until then it takes all
    event: asyncio.Event = field(default_factory=asyncio.Event)
    wake: RunWake | None = None  # the run wake it was given and has not used yet
    id: int = field(default_factory=lambda: next(_ids))

    def take_wake(self) -> RunWake | None:
        """Re-arm before a claim attempt: the run wake it holds (to pass on if the attempt claims nothing)."""
        self.event.clear()
        wake, self.wake = self.wake, None
        return wake


class RunNotifier:
    def __init__(self, loop: asyncio.AbstractEventLoop, publish: Callable[[str], None] | None = None) -> None:
        self._loop = loop
        self._waiters: dict[str, list[Waiter]] = {}  # per tenant, longest waiting first
        # Requests waiting for one run's state to change (a Running waiting for its agent's Submitted), by run.
        self._watches: dict[str, list[asyncio.Event]] = {}
        self._publish = publish
        # Set when the server begins to stop: waiters return at once, and new waits do not start.
        self.closing = False

    # --- from any thread -------------------------------------------------------------------------

    def close_threadsafe(self) -> None:
        """The server is stopping: end every long poll now (each answers "no runs"), from any thread."""
        self.closing = True
        self.wake_all_threadsafe()

    def notify_threadsafe(self, tenant_id: str) -> None:
        """The queue of ``tenant_id`` changed: wake all of this process's waiters and tell the other replicas.

        Call from a worker thread (sync handlers and services run there), after the commit.
        """
        self.wake_threadsafe(tenant_id)
        if self._publish is not None:
            self._publish(tenant_id)

    def notify_run_threadsafe(self, tenant_id: str, labels: Iterable[str]) -> None:
        """A run with ``labels`` became claimable now: wake one waiter that can take it (after the commit)."""
        wake = RunWake(frozenset(labels))
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is shutting down
            self._loop.call_soon_threadsafe(self.notify_run, tenant_id, wake)
        if self._publish is not None:
            self._publish(tenant_id)

    def wake_threadsafe(self, tenant_id: str) -> None:
        """Wake all of this process's waiters of ``tenant_id`` only: for news that came from another replica."""
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is shutting down
            self._loop.call_soon_threadsafe(self.notify, tenant_id)

    def wake_all_threadsafe(self) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.notify_all)

    # --- on the event loop -----------------------------------------------------------------------

    def enroll(self, tenant_id: str) -> Waiter:
        """A new waiter, woken by news from now on (already woken once closing). Leave with :meth:`leave`."""
        waiter = Waiter(tenant_id)
        self._waiters.setdefault(tenant_id, []).append(waiter)
        if self.closing:
            waiter.event.set()
        return waiter

    def leave(self, waiter: Waiter) -> None:
        """The call ends; a run wake it was given and did not use goes to another waiter."""
        waiting = self._waiters.get(waiter.tenant_id, [])
        with contextlib.suppress(ValueError):
            waiting.remove(waiter)
        if not waiting:
            self._waiters.pop(waiter.tenant_id, None)
        if waiter.wake is not None:
            self.pass_on(waiter, waiter.wake)
            waiter.wake = None

    def notify(self, tenant_id: str) -> None:
        for waiter in self._waiters.get(tenant_id, []):
            waiter.event.set()

    def notify_all(self) -> None:
        for tenant_id in list(self._waiters):
            self.notify(tenant_id)
        for run_id in list(self._watches):
            self.run_changed(run_id)

    def notify_run(self, tenant_id: str, wake: RunWake) -> None:
        """Give ``wake`` to the longest-waiting waiter not yet woken that can take the run and has not had it."""
        for waiter in self._waiters.get(tenant_id, []):
            if waiter.event.is_set() or waiter.id in wake.tried:
                continue
            if waiter.labels is None or agent_can_take(wake.labels, waiter.labels):
                waiter.wake = RunWake(wake.labels, wake.tried | {waiter.id})
                waiter.event.set()
                return

    def claimed_nothing(self, waiter: Waiter, wake: RunWake) -> None:
        """``waiter`` had ``wake`` and its claim took nothing: the wake goes on only if its agent cannot take the run.

        An agent that can take the run and found nothing claimable proves that no agent can take it now: a claim
        already under way took it, or a concurrency limit or its lateness holds it for every agent alike, and a freed
        slot wakes every waiter. Passing such a wake on made each waiting agent claim in turn for a run already gone:
        about three empty claim attempts per run with 8 agents (``bench/chaos.py``, issue 12).
        """
        if waiter.labels is not None and agent_can_take(wake.labels, waiter.labels):
            return
        self.pass_on(waiter, wake)

    def pass_on(self, waiter: Waiter, wake: RunWake) -> None:
        """``waiter`` had ``wake`` and claimed nothing for it: the next waiter that can take the run has it."""
        self.notify_run(waiter.tenant_id, RunWake(wake.labels, wake.tried | {waiter.id}))

    @contextlib.contextmanager
    def watch(self, run_id: str) -> Iterator[asyncio.Event]:
        """An event set when a state change of ``run_id`` is committed in this process (:meth:`run_changed`).

        Used on the event loop's thread; a change made on another replica does not set it (callers look again).
        """
        event = asyncio.Event()
        self._watches.setdefault(run_id, []).append(event)
        try:
            yield event
        finally:
            watching = self._watches.get(run_id, [])
            watching.remove(event)
            if not watching:
                self._watches.pop(run_id, None)

    def watched(self, run_id: str) -> bool:
        return run_id in self._watches

    def run_changed(self, run_id: str) -> None:
        """The state of ``run_id`` changed (after the commit): wake the requests watching it. On the event loop."""
        for event in self._watches.get(run_id, ()):
            event.set()

    @staticmethod
    async def wait(waiter: Waiter, timeout: float) -> bool:
        """Wait until ``waiter`` is woken or ``timeout`` passes; True when it was woken."""
        if timeout <= 0:
            return waiter.event.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.event.wait(), timeout)
        return waiter.event.is_set()

"""What the parts of an agent share: who it is, its timings, its wake-up events and stop level, and its tasks.

Each part (``polling.py``, ``lifecycle.py``, ``watching.py``, ``supervisor.py``) takes these small objects
explicitly, never the agent itself: no part imports another's owner back.

Usage::

    wakeups, tasks = Wakeups(), TaskSet()
    tasks.spawn(coro, "heartbeat loop")
    wakeups.wake_poll()          # a slot freed up
    await wakeups.wait_poll(1.0)
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from baton.agent.loops import IntervalTicker, sleep_or_wake

logger = logging.getLogger("baton.agent")


@dataclass
class AgentIdentity:
    """The agent as the server knows it; ``agent_id`` and ``tenant_id`` are set at start-up.

    ``instance`` names this process of the agent (a new random id each start): its claims and its deregistration
    carry it, so the server tells this process's warm stop from an earlier process's under the same identity.
    """

    name: str
    agent_type: str
    labels: list[str]
    agent_id: str | None = None
    tenant_id: str | None = None
    instance: str = field(default_factory=lambda: uuid.uuid4().hex)


@dataclass(frozen=True)
class Timings:
    """How long the agent waits for what it stops.

    Args:
        kill_grace_seconds: between the polite and the forced kill, for a cancel or a timeout.
        cold_kill_grace_seconds: the same, on a cold stop.
        stop_claim_wait_seconds: on leaving, for a claim call still in flight (it releases what it claims).
        stop_deploy_wait_seconds: on leaving, for deploys under way (what they start must be killed or detached).
        watch_interval_seconds: between two inspections of the deployments.
        heartbeat_interval_seconds: between two heartbeats.
    """

    kill_grace_seconds: float
    cold_kill_grace_seconds: float
    stop_claim_wait_seconds: float
    stop_deploy_wait_seconds: float
    watch_interval_seconds: float
    heartbeat_interval_seconds: float


# A heartbeat asked for "soon" (after a Submitted) comes this long after the first such ask, for all the asks until
# then: the runs of a burst share one heartbeat request instead of one each (issue 12).
HEARTBEAT_SOON_SECONDS = 0.25


class Wakeups:
    """The events that cut the agent's waits short, and how far a stop has gone (0 running, 1 warm, 2 cold).

    Call its methods on the event loop; :class:`baton.agent.base.Agent` hands calls from other threads over.
    """

    def __init__(self) -> None:
        self.level = 0
        self._poll = asyncio.Event()  # a slot freed, a poke, a stop
        self._poked = asyncio.Event()  # a poke or a stop: cuts a backoff short
        self.changed = asyncio.Event()  # a run left the registry
        self.stop_requested = asyncio.Event()  # any stop: the poll loop stops waiting for its claim
        self.cold = asyncio.Event()
        self.heartbeat: IntervalTicker | None = None
        self.watch: IntervalTicker | None = None
        self._heartbeat_soon: asyncio.TimerHandle | None = None

    @property
    def stopping(self) -> bool:
        return self.level > 0

    def wake_poll(self) -> None:
        self._poll.set()

    def poke(self) -> None:
        self._poked.set()
        self._poll.set()

    def wake_heartbeat(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.wake()

    def wake_heartbeat_soon(self) -> None:
        """Wake the heartbeat :data:`HEARTBEAT_SOON_SECONDS` from the first of these calls, once for them all."""
        if self.heartbeat is None or self._heartbeat_soon is not None:
            return
        self._heartbeat_soon = asyncio.get_running_loop().call_later(HEARTBEAT_SOON_SECONDS, self._soon_is_now)

    def _soon_is_now(self) -> None:
        self._heartbeat_soon = None
        self.wake_heartbeat()

    def wake_watch(self) -> None:
        if self.watch is not None:
            self.watch.wake()

    def notify_changed(self) -> None:
        self.changed.set()

    async def wait_poll(self, timeout: float, poke_only: bool = False) -> None:
        """Wait up to ``timeout`` seconds, less when a slot frees up (or, with ``poke_only``, only on a poke)."""
        await sleep_or_wake(timeout, self._poked if poke_only else self._poll)
        if not poke_only:
            self._poked.clear()


class TaskSet:
    """The agent's background tasks; the first one to fail is fatal to the agent."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self.launches: set[asyncio.Task[None]] = set()  # one per claimed run, until Submitted, Failed or released
        self.fatal = asyncio.Event()
        self.fatal_error: BaseException | None = None

    def spawn(self, coro: Coroutine[Any, Any, None], name: str, launch: bool = False) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        if launch:
            self.launches.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.launches.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self.fatal_error is None:
            logger.error("agent task %r failed: %s", task.get_name(), error, exc_info=error)
            self.fatal_error = error
            self.fatal.set()

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

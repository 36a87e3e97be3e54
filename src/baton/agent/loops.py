"""Loop machinery for the agent: one error policy, retries with backoff and jitter, a drift-free ticker.

Kept apart from :mod:`baton.agent.base` so that the base class reads as the agent's protocol, not as plumbing
(STYLE.md principle 1). The error policy is STYLE.md principle 3: ``ServerUnavailableError`` (network errors,
timeouts, 5xx) is transient and retried after a jittered backoff; every other exception is a bug or a refusal
and propagates; ``max_consecutive`` transient failures in a row end the agent, naming one example of each kind.

Usage::

    policy = ErrorPolicy(max_consecutive=30)
    runs = await retry_call(lambda: asyncio.to_thread(client.claim, agent_id), policy)

    ticker = IntervalTicker(5.0)
    while True:
        await ticker.wait()   # every 5 s, measured from the start, or at once after ticker.wake()
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

from baton.backoff import Backoff
from baton.exceptions import ServerUnavailableError

logger = logging.getLogger("baton.agent")
T = TypeVar("T")


def _error_kind(exc: BaseException) -> str:
    # ServerUnavailableError wraps the transport error that caused it: that is what tells failures apart
    # (refused connection, timeout, HTTP 503...).
    cause = exc.__cause__
    if cause is not None:
        return f"{type(exc).__name__}/{type(cause).__name__}"
    return type(exc).__name__


@dataclass
class _Streak:
    count: int = 0
    examples: dict[str, str] = field(default_factory=dict)


@dataclass
class ErrorPolicy:
    """Counts transient failures in a row, per duty (``poll``, ``heartbeat``, ``runs``...), under one rule.

    Counting per duty matters: a heartbeat that still gets through must not hide a claim route that always fails.

    Args:
        max_consecutive: failures in a row of one duty after which :meth:`failed` raises instead of returning
            a delay.
        backoff: how long to wait before each retry.
    """

    max_consecutive: int = 30
    backoff: Backoff = field(default_factory=Backoff)
    _streaks: dict[str, _Streak] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def consecutive(self, duty: str = "api") -> int:
        """The current number of failures in a row of ``duty``."""
        with self._lock:
            streak = self._streaks.get(duty)
            return streak.count if streak else 0

    def succeeded(self, duty: str = "api") -> None:
        with self._lock:
            self._streaks.pop(duty, None)

    def failed(self, exc: ServerUnavailableError, duty: str = "api") -> float:
        """Record a transient failure of ``duty``; return how long to wait before retrying.

        Raises:
            ServerUnavailableError: this was failure number ``max_consecutive`` in a row; its message names one
                example of each kind of error seen in the run of failures.
        """
        with self._lock:
            streak = self._streaks.setdefault(duty, _Streak())
            streak.count += 1
            streak.examples.setdefault(_error_kind(exc), str(exc))
            count = streak.count
            if count >= self.max_consecutive:
                summary = "; ".join(f"{kind}: {text}" for kind, text in streak.examples.items())
                raise ServerUnavailableError(
                    f"{count} API calls ({duty}) failed in a row, giving up. {summary}"
                ) from exc
        return self.backoff.delay(count)


async def sleep_or_wake(seconds: float, wake: asyncio.Event | None = None) -> bool:
    """Sleep ``seconds``, or less if ``wake`` is set (it is then cleared). Returns True when woken."""
    if wake is None:
        await asyncio.sleep(max(0.0, seconds))
        return False
    if not wake.is_set():
        # Not asyncio.wait_for: on 3.11 it swallows a cancellation that arrives as the event is set, and a
        # loop built on it then never ends (seen as a hang of the agent's cold stop).
        waiter = asyncio.ensure_future(wake.wait())
        try:
            await asyncio.wait({waiter}, timeout=max(0.0, seconds))
        finally:
            waiter.cancel()
        if not wake.is_set():
            return False
    wake.clear()
    return True


async def retry_call(
    call: Callable[[], Awaitable[T]],
    policy: ErrorPolicy,
    *,
    duty: str = "api",
    what: str = "API call",
    wake: asyncio.Event | None = None,
    on_failure: Callable[[ServerUnavailableError], None] | None = None,
) -> T:
    """Await ``call()`` until it succeeds, retrying transient errors under ``policy``.

    Args:
        call: makes one attempt (a fresh awaitable each time).
        policy: the agent's shared error policy.
        duty: which streak of failures this call counts in.
        what: names the call in log lines.
        wake: when set during a backoff pause, retry at once (``/api/poke``).
        on_failure: told about each transient failure (the health endpoint reports the last one).

    Raises:
        ServerUnavailableError: the policy gave up.
        Exception: anything else ``call`` raises, unchanged: those are not worth retrying.
    """
    while True:
        try:
            result = await call()
        except ServerUnavailableError as exc:
            if on_failure is not None:
                on_failure(exc)
            delay = policy.failed(exc, duty)
            logger.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            await sleep_or_wake(delay, wake)
            continue
        policy.succeeded(duty)
        return result


class IntervalTicker:
    """Ticks every ``interval`` seconds on a fixed grid measured from its creation, so ticks never drift.

    A slow tick does not push the following ones back; ticks missed entirely are skipped, not bunched up.
    :meth:`wake` makes the pending :meth:`wait` return at once (an extra tick off the grid).
    """

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._clock = clock
        self._next = clock()
        self._wake = asyncio.Event()

    @property
    def next_tick(self) -> float:
        """The clock time of the next tick on the grid."""
        return self._next

    def wake(self) -> None:
        self._wake.set()

    async def wait(self) -> None:
        """Return at the next tick of the grid (the first call returns at once), or when woken."""
        now = self._clock()
        woken = await sleep_or_wake(self._next - now, self._wake)
        if woken:
            return
        now = self._clock()
        while self._next <= now:
            self._next += self.interval

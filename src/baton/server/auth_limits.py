"""Rate limiting of failed authentications, per client address, over a sliding window.

An address that has failed to authenticate ``limit`` times within the last ``window_seconds`` gets 429 for every
credential that fails, until its oldest counted failure leaves the window; failures while blocked count too, so a
guesser that keeps going stays blocked. Successful authentications are not counted and clear nothing, so a valid key
cannot be used to wash out an address's failures.

A blocked address is not cut off from valid credentials: ``server.authentication`` still checks them and refuses
only those that fail (429 instead of 401), so an agent, its flow-run processes or a user's CLI sharing a host (or a
NAT) with a script looping on a wrong key carry on, and new run tokens keep working.

The state is in-process (each server replica counts its own failures) and bounded: addresses whose failures have all
left the window are dropped, and beyond ``max_addresses`` the address that failed least recently is forgotten.

Usage::

    limiter = FailedAuthLimiter(limit=20, window_seconds=60)
    wait = limiter.retry_after(address)      # None: go ahead and check the key
    ...
    limiter.record_failure(address)          # the key was missing, malformed or unknown
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

DEFAULT_MAX_ADDRESSES = 10_000


class FailedAuthLimiter:
    """Counts failed authentications per address; thread-safe (sync handlers run in a thread pool)."""

    def __init__(
        self,
        limit: int,
        window_seconds: float,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if limit < 1 or window_seconds <= 0 or max_addresses < 1:
            raise ValueError("limit and max_addresses must be at least 1, window_seconds positive")
        self.limit = limit
        self.window_seconds = window_seconds
        self.max_addresses = max_addresses
        self._clock = clock
        self._lock = threading.Lock()
        # address -> times of its latest failures (at most ``limit``: older ones cannot matter), oldest first.
        # Ordered by each address's latest failure, oldest first, so expired addresses are pruned from the front.
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, address: str) -> float | None:
        """Seconds until ``address`` may try again, or None when it may try now."""
        with self._lock:
            now = self._clock()
            self._prune(now)
            times = self._failures.get(address)
            if times is None:
                return None
            self._forget_expired(times, now)
            if len(times) < self.limit:
                return None
            return max(times[0] + self.window_seconds - now, 0.0)

    def record_failure(self, address: str) -> None:
        """Count one failed authentication of ``address``."""
        with self._lock:
            now = self._clock()
            self._prune(now)
            times = self._failures.pop(address, None)
            if times is None:
                times = deque(maxlen=self.limit)
                while len(self._failures) >= self.max_addresses:
                    self._failures.popitem(last=False)  # the address that failed least recently
            times.append(now)
            self._failures[address] = times  # re-inserted: now the most recent

    def tracked_addresses(self) -> int:
        """How many addresses have failures in the window (for tests and metrics)."""
        with self._lock:
            self._prune(self._clock())
            return len(self._failures)

    def _forget_expired(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.window_seconds:
            times.popleft()

    def _prune(self, now: float) -> None:
        """Drop addresses whose latest failure has left the window (they are at the front)."""
        while self._failures:
            address, times = next(iter(self._failures.items()))
            if times[-1] > now - self.window_seconds:
                return
            del self._failures[address]


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` in whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))

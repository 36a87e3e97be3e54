"""Retry an API call through network trouble, with exponential backoff and jitter, for a bounded time.

Only :class:`ServerUnavailableError` (no connection, timeout, 5xx) is retried: a 4xx answer will not change on
its own, so it is raised at once (STYLE.md principle 3).

Delays come from :class:`baton.backoff.Backoff`, shared with the agent, with shorter defaults: a flow run waits
less than an agent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from baton.backoff import Backoff
from baton.client.transport import ConnectFailed
from baton.exceptions import ServerUnavailableError

T = TypeVar("T")

logger = logging.getLogger("baton.engine")
_BACKOFF = Backoff(base_seconds=0.5, max_seconds=10.0)


def backoff_delay(attempt: int) -> float:
    """The pause before retry number ``attempt`` (1, 2, ...): exponential, capped, with 50-100% jitter."""
    return _BACKOFF.delay(attempt)


def call_with_retry(
    call: Callable[[], T],
    *,
    what: str,
    timeout_seconds: float = 60.0,
    unreachable_seconds: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Return ``call()``, retrying it while the API is unavailable for at most ``timeout_seconds``.

    Args:
        call: the API call.
        what: what the call does, for the log line of each retry.
        timeout_seconds: give up after this long.
        unreachable_seconds: give up sooner, after this long, while no attempt could connect to the API at all:
            an answer, even a 5xx, or a slow one (a read timeout) says the address is right.
        sleep: replaced in tests.

    Raises:
        ServerUnavailableError: the API stayed unavailable for ``timeout_seconds``.
        ClientError: the API refused the call.
    """
    start = time.monotonic()
    deadline = start + timeout_seconds
    attempt = 0
    answered = False
    while True:
        try:
            return call()
        except ServerUnavailableError as exc:
            attempt += 1
            answered = answered or not no_connection(exc)
            budget = timeout_seconds if answered or unreachable_seconds is None else unreachable_seconds
            remaining = min(deadline, start + budget) - time.monotonic()
            if remaining <= 0:
                raise
            delay = min(backoff_delay(attempt), remaining)
            logger.warning("Could not %s (%s); retrying in %.1fs", what, exc, delay)
            sleep(delay)


def no_connection(exc: ServerUnavailableError) -> bool:
    """Whether the call could not connect at all (refused, no route, connect timeout): the address may be wrong."""
    return isinstance(exc.__cause__, ConnectFailed)

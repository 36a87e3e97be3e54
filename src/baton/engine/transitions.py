"""Set the flow run's state through an API that may be slow or down, and an agent that may be slow to submit.

The engine may start before its agent has posted ``Submitted``; the API refuses ``Pending -> Running`` (409), so
the engine asks again until the run is Submitted. Two budgets bound the waiting, so that neither an API outage
nor a slow agent alone fails a healthy run:

* ``pending_seconds``: how long the run may stay Pending *while the API answers*. Time the API was down does not
  count: the agent could not post Submitted then either. It is longer than the server's claim lease (30 s by
  default): if the agent died before submitting, the lease expires and the run goes back to Scheduled, which
  ends the wait sooner.
* ``unavailable_seconds``: how long, in all, the API may be unreachable or answer 5xx.

Anything else ends the wait at once: a final or ``Cancelling`` state (returned), a refused token (401, raised).

A retry after an attempt whose answer was lost (the server died or the connection broke after it committed) meets
what that attempt did: a 409 naming the very state asked for, or, for a final state, a 401, because reaching a
final state revokes the run token. Both mean the state was set (see :meth:`StateSetter.set`).

Usage::

    setter = StateSetter(client, flow_run_id)
    refused_by = setter.set(StateName.RUNNING)  # None: set; else the state that refused it
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from baton.client.http import Client, may_have_reached_the_server
from baton.engine.retry import backoff_delay
from baton.exceptions import AuthenticationError, ConflictError, ServerUnavailableError
from baton.schemas.states import FINAL_STATES, StateName

logger = logging.getLogger("baton.engine")

# While the run is Pending, when to ask again; Submitted too: the agent's Submitted can land between the engine's
# refused Running and its read of the state. The agent posts Submitted as soon as its platform answers (milliseconds
# for a local process), so the first pauses are short, then they double up to POLL_SECONDS: a flat 0.5 s made every
# run whose process outran its agent's Submitted (about one in six) start half a second late.
FIRST_POLL_SECONDS = 0.02
POLL_SECONDS = 0.5
# Running is asked with ``Prefer: wait``: the server holds the request until the agent's Submitted lands (up to this
# long, or its own ``max_state_wait_seconds``) rather than refusing it at once, so the polls above are for older
# servers and for agents slower than this.
SUBMITTED_WAIT_SECONDS = 5.0
# A budget with less than this left is spent: pausing for a remainder of a remainder never ends.
_SPENT = 0.001
_WAIT_FOR_RUNNING = frozenset({StateName.PENDING, StateName.SUBMITTED})


class _Budget:
    """Charges the time between two answers to one budget: an outage if either answer was "unavailable",
    else the wait for the agent."""

    def __init__(self, pending_seconds: float, unavailable_seconds: float, clock: Callable[[], float]) -> None:
        self.pending_left = pending_seconds
        self.unavailable_left = unavailable_seconds
        self._clock = clock
        self._last = clock()
        self._in_outage = False
        self._failures = 0
        self._waits = 0

    def _charge(self, outage: bool) -> None:
        now = self._clock()
        elapsed, self._last = now - self._last, now
        if outage or self._in_outage:
            self.unavailable_left -= elapsed
        else:
            self.pending_left -= elapsed
        self._in_outage = outage

    def after_unavailable(self) -> float | None:
        """The pause before trying again after an outage answer; None when the outage budget is spent."""
        self._charge(outage=True)
        self._failures += 1
        if self.unavailable_left <= 0:
            return None
        return min(backoff_delay(self._failures), self.unavailable_left)

    def after_waiting(self) -> float | None:
        """The pause before asking again while the agent has not submitted; None when waited long enough."""
        self._charge(outage=False)
        self._failures = 0
        if self.pending_left < _SPENT:
            return None
        pause = min(FIRST_POLL_SECONDS * (1 << self._waits), POLL_SECONDS)
        self._waits = min(self._waits + 1, 10)
        return min(pause, self.pending_left)


class StateSetter:
    """Sets the states of the flow run ``flow_run_id`` (see the module's docstring for the waiting rules).

    Args:
        client: the API client, with the run's token.
        flow_run_id: the run.
        pending_seconds: longest wait for the agent's Submitted while the API answers that the run is Pending.
        unavailable_seconds: longest time, in all, that the API may be unavailable during one :meth:`set`.
        should_stop: called between tries; True ends a wait for Submitted at once (the process is being stopped).
        clock: replaced in tests.
        sleep: replaced in tests.
    """

    def __init__(
        self,
        client: Client,
        flow_run_id: str,
        *,
        pending_seconds: float = 60.0,
        unavailable_seconds: float = 120.0,
        should_stop: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._id = flow_run_id
        self._pending_seconds = pending_seconds
        self._unavailable_seconds = unavailable_seconds
        self._should_stop = should_stop
        self._clock = clock
        self._sleep = sleep

    def set(self, state: StateName, message: str | None = None, logs: list[dict[str, Any]] | None = None) -> str | None:
        """Set the run's state (with ``logs``, log lines stored in the same transaction: see
        ``Client.change_flow_run_state``); None when set, else the state that refused it (409).

        ``state`` itself is returned when an earlier attempt, whose answer was lost, had set it: the retry met a
        409 from that very state, or, for a final state, a 401 (the final state revoked the token).

        Raises:
            ServerUnavailableError: the API stayed unavailable for ``unavailable_seconds`` in all.
            ClientError: the API refused for another reason than the state (e.g. 401: the token is revoked).
        """
        budget = _Budget(self._pending_seconds, self._unavailable_seconds, self._clock)
        maybe_set = False  # an attempt failed after the request may have reached the server
        while True:
            try:
                refused_by = self._try(state, message, logs)
            except AuthenticationError:
                if not (maybe_set and state in FINAL_STATES):
                    raise
                # Or someone else ended the run in that very moment: either way it is final, nothing is left to do.
                logger.info("The run is final (its token is revoked) after a %s whose answer was lost", state)
                return state
            except ServerUnavailableError as exc:
                maybe_set = maybe_set or may_have_reached_the_server(exc)
                delay = budget.after_unavailable()
                if delay is None:
                    raise
                logger.warning("Could not set the run %s (%s); retrying in %.1fs", state, exc, delay)
                self._sleep(delay)
                continue
            if refused_by is None or state != StateName.RUNNING or refused_by not in _WAIT_FOR_RUNNING:
                return refused_by
            delay = budget.after_waiting()
            if delay is None or self._should_stop():
                return refused_by
            logger.debug("The run is still %s; asking for Running again in %.1fs", refused_by, delay)
            self._sleep(delay)

    def _try(self, state: StateName, message: str | None, logs: list[dict[str, Any]] | None) -> str | None:
        try:
            wait = SUBMITTED_WAIT_SECONDS if state == StateName.RUNNING else 0.0
            self._client.change_flow_run_state(self._id, state, message, wait_seconds=wait, logs=logs)
        except ConflictError as exc:
            # The refusal names the run's state (an older server's does not: read it).
            return exc.current_state or self._client.get_flow_run(self._id).state
        return None

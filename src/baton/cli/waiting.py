"""Why a watched run is not starting: ``baton run --watch`` asks the server's ``explain`` once a due run has waited a
few seconds for an agent, and again when the answer may have changed (rate-limited), and prints its summary.

Without this, a run that no live agent can take printed ``state Scheduled`` and nothing else (issue 9).

Usage::

    explainer = WaitExplainer(client, console)
    follower.follow(on_poll=explainer)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rich.text import Text

from baton.exceptions import BatonError
from baton.schemas.states import CLAIMABLE_STATES

if TYPE_CHECKING:
    from rich.console import Console

    from baton.client.http import Client
    from baton.schemas.responses import FlowRunRead

# A due run is normally claimed within milliseconds by a live, long-polling agent: after this long, say why not.
FIRST_EXPLAIN_AFTER_SECONDS = 3.0
# Then ask again at most this often (each explain weighs every agent of the tenant against the run).
EXPLAIN_EVERY_SECONDS = 15.0


class WaitExplainer:
    """Called with the run after each poll; prints explain's summary while a due run waits for an agent.

    Args:
        client: the API client.
        console: where to print (the watch's console).
        clock: monotonic seconds (tests pass their own).
        now: the current UTC time (tests pass their own).
    """

    def __init__(
        self,
        client: Client,
        console: Console,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._client = client
        self._console = console
        self._clock = clock
        self._now = now
        self._waiting_since: float | None = None
        self._next_explain = 0.0
        self._said: str | None = None

    def __call__(self, run: FlowRunRead) -> None:
        waiting = run.state in {state.value for state in CLAIMABLE_STATES} and run.scheduled_start_time <= self._now()
        if not waiting:
            self._waiting_since = None
            return
        clock = self._clock()
        if self._waiting_since is None:
            self._waiting_since = clock
            self._next_explain = clock + FIRST_EXPLAIN_AFTER_SECONDS
        if clock < self._next_explain:
            return
        self._next_explain = clock + EXPLAIN_EVERY_SECONDS
        try:
            summary = self._client.explain_flow_run(run.id).summary
        except BatonError:
            return  # explaining is a courtesy: the watch goes on without it
        if summary != self._said:
            self._said = summary
            self._console.print(Text(f"waiting for an agent: {summary}", style="yellow"))

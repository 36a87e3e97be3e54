"""Claims with a long poll: an agent's claim call waits up to ``wait_seconds`` for a run to become due.

Each attempt claims in one transaction (``models.claims.claim_runs``); between attempts the call sleeps until the
notifier wakes it (a run it can take was created, or the tenant's queue changed: ``server/notifier.py``), the next
known run becomes due, or the recheck interval passes. The handler only parses, authorises and delegates here.

A call of an agent process that has deregistered ends at its next attempt, claiming nothing: a warm stop deregisters
while its last long poll is still waiting (or still on its way), and the deregistration wakes that poll
(``api/agents.py``), so the agent leaves at once instead of waiting for its poll to end or giving up on it.

Usage::

    response = await claim_with_wait(claimer, payload, is_disconnected)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from baton.schemas.actions import ClaimRequest
from baton.schemas.responses import ClaimResponse
from baton.server.database.connection import transaction
from baton.server.database.orm import utcnow
from baton.server.models import agents, claims
from baton.server.models.claims import ClaimResult
from baton.server.notifier import RunNotifier
from baton.server.worker_threads import run_in_worker
from baton.settings import ServerSettings

Shape = Callable[[Session, ClaimResult], ClaimResponse]


@dataclass
class Claimer:
    """What claiming needs: the database, the wake-ups, the clock of the event loop and the server's timings."""

    factory: sessionmaker[Session]
    notifier: RunNotifier
    loop_time: Callable[[], float]
    settings: ServerSettings
    tenant_id: str
    agent_id: str
    shape: Shape  # turns claimed rows into the answer, for the caller (``server.shaping``)


def claim_once(
    claimer: Claimer, payload: ClaimRequest, began: datetime | None = None
) -> tuple[ClaimResponse, ClaimResult | None, frozenset[str]]:
    """One attempt, in one transaction: the agent is seen, due runs are claimed and shaped; and the agent's labels.

    Returns no result (and claims nothing) when the agent process that made the call has deregistered: it has
    stopped, and a claim now would undo its deregistration and leave the runs Pending. A call naming its process
    (``payload.instance``) is judged by who deregistered. One that does not is judged by time: the first attempt
    passes ``began``, the call's start (a deregistration before it is an earlier stop of a restarted agent), and the
    later ones pass None: each attempt clears the mark, so a mark found then was set since the attempt before,
    whatever the clocks of the replicas say. Time misjudges a call still on its way as its agent deregistered.
    """
    with transaction(claimer.factory) as session:
        agent = agents.get_agent(session, claimer.tenant_id, claimer.agent_id)
        labels = frozenset(agent.labels)
        if not agents.touch(session, agent, unless_deregistered=True, since=began, instance=payload.instance):
            return ClaimResponse(runs=[]), None, labels
        settings = claimer.settings
        result = claims.claim_runs(
            session,
            agent,
            payload.limit,
            payload.prefetch_seconds,
            settings.claim_lease_seconds,
            settings.max_list_bytes,
        )
        return claimer.shape(session, result), result, labels


async def claim_with_wait(
    claimer: Claimer, payload: ClaimRequest, is_disconnected: Callable[[], Awaitable[bool]]
) -> ClaimResponse:
    """Claim due runs; wait up to ``wait_seconds`` (capped by the server) for one to become ready."""
    loop_time, notifier = claimer.loop_time, claimer.notifier
    deadline = loop_time() + min(payload.wait_seconds, claimer.settings.max_claim_wait_seconds)
    began = utcnow()
    # Enrolled before the first query: a run created while a query runs wakes the wait after it, so it is not missed.
    waiter = notifier.enroll(claimer.tenant_id)
    try:
        first = True
        while True:
            wake = waiter.take_wake()
            since = began if first else None
            response, result, waiter.labels = await run_in_worker(claim_once, claimer, payload, since)
            first = False
            if wake is not None and not response.runs:
                if result is None:  # this call ends unused: its agent deregistered
                    notifier.pass_on(waiter, wake)
                else:  # the run went elsewhere or cannot go yet: passed on only if this agent could not take it
                    notifier.claimed_nothing(waiter, wake)
            remaining = deadline - loop_time()
            if result is None or response.runs or remaining <= 0 or await is_disconnected():
                return response
            timeout = min(remaining, claimer.settings.claim_recheck_seconds)
            if result.next_due is not None:
                due_in = (result.next_due - utcnow()).total_seconds() - payload.prefetch_seconds
                timeout = min(timeout, max(due_in, 0.005))
            await notifier.wait(waiter, timeout)
            if notifier.closing:
                # The server is stopping: answer "nothing yet" now rather than be cut off mid-poll; the agent polls
                # again, on another replica or once this one is back.
                return ClaimResponse(runs=[])
            if await is_disconnected():
                # Claiming now would leave the run Pending with nobody to read the answer until its lease expires.
                return ClaimResponse(runs=[])
    finally:
        notifier.leave(waiter)

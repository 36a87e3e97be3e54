"""The poll loop: long-poll claims while ``--limit`` slots are free, and claims that outlive a stop.

A claim is a long poll (``poll_wait_seconds``, 20 s by default) made in a daemon thread by :class:`ClaimCall`.
A stop does not wait it out: the loop stops waiting at once (an idle agent's warm stop deregisters, which ends the
call on the server: the agent leaves within ~0.1 s) and hands the call over; whatever it claims after that is
released back to ``Scheduled`` from the claim's own thread, as soon as the server answers (the client is
thread-safe). The agent waits for that a short, bounded time before it leaves; if the process ends first, the
runs of a claim still in flight stay Pending until their lease expires, which the agent then logs.

A claim whose answer never arrived (the server died, or the connection broke, after it committed) leaves runs
Pending for this agent that it knows nothing of, as do the claims of an earlier process of this agent (same name,
type and labels: the same agent id). Heartbeats name the claims the agent holds, and only those keep their lease,
so such claims expire and go back to the queue like any claim whose agent died.

Usage::

    poller = Poller(api, registry, status, wakeups, identity, accept=lifecycle.accept, problem=driver.problem)
    await poller.run()                   # until --max-polls or a stop
    for claimed in poller.abandon():     # a cancelled loop's claim that had already returned
        ...                              # release it
    await poller.settle(timeout=1.0)     # let a handed-over claim finish releasing
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable

from baton.agent.health import POLL_DUTY, AgentStatus
from baton.agent.protocol import AgentApi, ApiCalls
from baton.agent.runs import RunRegistry
from baton.agent.shared import AgentIdentity, Wakeups
from baton.exceptions import BatonError, ConflictError, ServerUnavailableError
from baton.schemas.responses import ClaimedRun, ClaimResponse

logger = logging.getLogger("baton.agent")

# While the platform is unusable, how often the poll loop looks again (a driver's recovery pokes it sooner).
PLATFORM_RECHECK_SECONDS = 1.0

ReleaseHandler = Callable[[ClaimResponse], None]


class ClaimCall:
    """One blocking claim call in a daemon thread.

    A daemon thread, not ``asyncio.to_thread``: a thread of asyncio's default executor would hold up
    ``asyncio.run``'s shutdown until the server answers. The agent awaits :meth:`result`; when it stops waiting, it
    calls :meth:`hand_over`, and from then on the response goes to a handler run in the claim's thread.

    Args:
        call: makes the claim (blocking).
        loop: the agent's event loop, told when the call returns (unless it was handed over).
    """

    def __init__(self, call: Callable[[], ClaimResponse], loop: asyncio.AbstractEventLoop) -> None:
        self._call = call
        self._loop = loop
        self._lock = threading.Lock()
        self._returned = asyncio.Event()  # on the loop: the call returned and was not handed over
        self._settled = threading.Event()  # the call returned and its handler (if any) has finished
        self._finished = False
        self._taken = False
        self._response: ClaimResponse | None = None
        self._error: BaseException | None = None
        self._handler: ReleaseHandler | None = None
        self._after: list[Callable[[], None]] = []

    def start(self) -> ClaimCall:
        threading.Thread(target=self._run, name="baton-agent-claim", daemon=True).start()
        return self

    @property
    def taken(self) -> bool:
        """Its outcome is someone's now: :meth:`take` was called, or it was handed over."""
        return self._taken

    def _run(self) -> None:
        response: ClaimResponse | None = None
        error: BaseException | None = None
        try:
            response = self._call()
        except BaseException as exc:  # handed to whoever takes the result, which decides
            error = exc
        with self._lock:
            self._response, self._error, self._finished = response, error, True
            handler = self._handler
        try:
            if handler is None:
                self._tell_loop(response)
            elif response is not None:
                handler(response)
            else:
                logger.info("the claim call handed over at the stop failed (%s): it claimed nothing", error)
        finally:
            with self._lock:
                self._settled.set()
                after = list(self._after)
            for callback in after:
                callback()

    def _tell_loop(self, response: ClaimResponse | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._returned.set)
        except RuntimeError:  # the loop has closed without handing the call over: a bug, but say what it costs
            runs = [claimed.flow_run.id for claimed in response.runs] if response else []
            if runs:
                logger.error(
                    "runs %s were claimed after the agent left: they stay Pending until their lease expires", runs
                )

    def take(self) -> ClaimResponse:
        """The response, once the call has returned (it then belongs to the caller).

        Raises:
            BaseException: what the call raised.
        """
        with self._lock:
            assert self._finished, "the claim call has not returned"
            self._taken = True
            if self._error is not None:
                raise self._error
            assert self._response is not None
            return self._response

    async def result(self, give_up: asyncio.Event) -> ClaimResponse | None:
        """Wait for the response, or None as soon as ``give_up`` is set (the call goes on).

        Raises:
            BaseException: what the call raised.
        """
        if not self._returned.is_set():
            waiters = {asyncio.ensure_future(self._returned.wait()), asyncio.ensure_future(give_up.wait())}
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        if not self._returned.is_set():
            return None
        return self.take()

    def hand_over(self, handler: ReleaseHandler) -> bool:
        """Stop waiting: what the call returns goes to ``handler``, in the claim's thread.

        Returns:
            False when the call has returned already: the caller then takes the result with :meth:`take`.
        """
        with self._lock:
            if self._finished:
                return False
            self._handler, self._taken = handler, True
            return True

    def then(self, callback: Callable[[], None]) -> bool:
        """Call ``callback`` in the claim's thread once it has settled; False (not called) if it has already."""
        with self._lock:
            if self._settled.is_set():
                return False
            self._after.append(callback)
            return True

    async def settled(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the call (and its handler) to finish; True if they did."""
        deadline = time.monotonic() + timeout
        while not self._settled.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        return self._settled.is_set()


def release_in_thread(client: AgentApi, agent_name: str, response: ClaimResponse, attempts: int = 3) -> None:
    """Release the runs of a claim that returned after its agent stopped waiting (in the claim's thread)."""
    message = f"released by agent {agent_name} on shutdown"
    for claimed in response.runs:
        run_id = claimed.flow_run.id
        for attempt in range(1, attempts + 1):
            try:
                client.change_flow_run_state(run_id, "Scheduled", message)
            except ServerUnavailableError as exc:
                if attempt < attempts:
                    time.sleep(0.5 * attempt)
                    continue
                logger.warning("run %s stays Pending until its lease expires: cannot release it (%s)", run_id, exc)
            except ConflictError as exc:
                logger.info("run %s, claimed as the agent stopped: release refused (%s)", run_id, exc.detail)
            except (BatonError, RuntimeError) as exc:  # RuntimeError: a client closed under us
                logger.warning("run %s stays Pending until its lease expires: %s", run_id, exc, exc_info=exc)
            else:
                logger.info("released run %s, claimed by a call still in flight when the agent stopped", run_id)
            break


class Poller:
    """The agent's poll loop and its claim call in flight. One per agent.

    Args:
        api: the agent's API calls (and its client, which claims).
        registry: the agent's runs: how many slots are free.
        status: the health facts to update.
        wakeups: stop requests, and the events that cut a wait short.
        identity: the agent's id (claims are made for it) and name (for release messages).
        accept: takes each claimed run (``RunLifecycle.accept``).
        problem: why the platform is unusable now, or None (``Driver.problem``).
        max_polls: leave after this many claim calls (None: never).
        poll_wait_seconds: how long a claim waits on the server for runs (a long poll).
    """

    def __init__(
        self,
        api: ApiCalls,
        registry: RunRegistry,
        status: AgentStatus,
        wakeups: Wakeups,
        identity: AgentIdentity,
        *,
        accept: Callable[[ClaimedRun], None],
        problem: Callable[[], str | None],
        max_polls: int | None = None,
        poll_wait_seconds: float = 20.0,
    ) -> None:
        self._api = api
        self._registry = registry
        self._status = status
        self._wakeups = wakeups
        self._identity = identity
        self._accept = accept
        self._problem = problem
        self._max_polls = max_polls
        self._wait_seconds = poll_wait_seconds
        self.in_flight: ClaimCall | None = None  # the latest claim call, until its outcome is taken
        self.handed_over: ClaimCall | None = None  # a call that releases what it claims from its own thread
        self._platform_problem: str | None = None  # as last seen by the loop, to log changes once
        # After a failed claim the next one does not wait on the server: a long poll that succeeds reports only
        # when it returns, so health would say "failing" for a whole poll_wait_seconds after the API is back.
        self._recovering = False

    async def run(self) -> None:
        """Claim runs while slots are free, until ``--max-polls`` claim calls or a stop."""
        status, wait_seconds = self._status, self._wait_seconds
        status.polling, status.starting = True, False
        try:
            while not self._wakeups.stopping:
                if self._max_polls is not None and status.polls >= self._max_polls:
                    logger.info("made %d claim calls (--max-polls): claiming no more", status.polls)
                    return
                if self._platform_down():  # it could not deploy what it claims: leave the runs to other agents
                    await self._wakeups.wait_poll(timeout=PLATFORM_RECHECK_SECONDS)
                    continue
                free = self._registry.free_slots()
                if free == 0:  # every --limit slot is busy: wait for one to free up
                    await self._wakeups.wait_poll(timeout=wait_seconds or 1.0)
                    continue
                await self._claim(free, wait_seconds)
        finally:
            status.polling = False

    def _platform_down(self) -> bool:
        """Whether the driver's platform is unusable now; logs when that changes."""
        problem = self._problem()
        if problem is not None and self._platform_problem is None:
            logger.warning("claiming no runs while the platform is unusable: %s", problem)
        elif problem is None and self._platform_problem is not None:
            logger.info("the platform is usable again: claiming runs")
        self._platform_problem = problem
        return problem is not None

    async def _claim(self, free: int, wait_seconds: float) -> None:
        client, agent_id, instance = self._api.client, self._identity.agent_id, self._identity.instance
        assert agent_id is not None
        wait = 0.0 if self._recovering else wait_seconds
        claim = ClaimCall(
            lambda: client.claim(agent_id, limit=free, wait_seconds=wait, instance=instance),
            asyncio.get_running_loop(),
        )
        self.in_flight = claim.start()
        try:
            response = await claim.result(give_up=self._wakeups.stop_requested)
        except ServerUnavailableError as exc:
            await self._back_off(exc, "claim")
            return
        if response is None:  # a stop: do not wait out the long poll
            for claimed in self.abandon():
                self._accept(claimed)  # launched while stopping, so released
            return
        self._api.succeeded(POLL_DUTY)
        self._recovering = False
        self._status.polls += 1
        for claimed in response.runs:
            self._accept(claimed)

    async def _back_off(self, exc: ServerUnavailableError, what: str) -> None:
        delay = self._api.failed(exc, POLL_DUTY)
        self._recovering = True
        logger.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
        await self._wakeups.wait_poll(timeout=delay, poke_only=True)

    def abandon(self) -> list[ClaimedRun]:
        """Stop waiting for the claim in flight.

        Returns:
            The runs it had claimed already, for the caller to release; a call still waiting on the server
            releases what it claims itself, in its thread.
        """
        claim, self.in_flight = self.in_flight, None
        if claim is None or claim.taken:
            return []
        client, name = self._api.client, self._identity.name
        if claim.hand_over(lambda response: release_in_thread(client, name, response)):
            self.handed_over = claim
            return []
        try:
            return claim.take().runs
        except BatonError as exc:
            logger.info("the claim call in flight at the stop failed (%s): it claimed nothing", exc)
            return []

    async def settle(self, timeout: float) -> None:
        """Give a handed-over claim up to ``timeout`` seconds to return and release what it claimed."""
        claim = self.handed_over
        if claim is None or await claim.settled(timeout):
            return
        logger.warning(
            "a claim call is still waiting on the server: runs it claims are released from its thread if this "
            "process lives on; otherwise they stay Pending until their lease expires "
            "(BATON__SERVER__CLAIM_LEASE_SECONDS)"
        )

    def close_after(self, close: Callable[[], None]) -> bool:
        """Let a handed-over claim still in flight close the client after releasing; False if none is."""
        return self.handed_over is not None and self.handed_over.then(close)

"""The agent's watch on what it has deployed: the heartbeat loop and the watch loop.

- Heartbeat (every ``heartbeat_interval_seconds``, sooner when woken): report live and ended deployments and the
  claims the agent holds (only those keep their lease, see ``polling.py``); stop the runs the server answers it
  wants cancelled.
- Watch (every ``watch_interval_seconds``, sooner when a driver says a deployment changed): ask the driver which
  deployments have ended, and kill those that have run past their limit.

Usage::

    watch = DeploymentWatch(driver, api, registry, lifecycle, identity, wakeups, tasks)
    tasks.spawn(watch.heartbeat_loop(), "heartbeat loop")
    tasks.spawn(watch.watch_loop(), "watch loop")
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from baton.agent.driver import Driver, Ended
from baton.agent.lifecycle import RunLifecycle
from baton.agent.loops import sleep_or_wake
from baton.agent.protocol import ApiCalls
from baton.agent.runs import Phase, RunRegistry
from baton.agent.shared import AgentIdentity, TaskSet, Wakeups
from baton.exceptions import ServerUnavailableError

logger = logging.getLogger("baton.agent")


def _retrieve(request: asyncio.Future[Any]) -> None:
    """Mark the outcome of a heartbeat nobody awaits any more (its loop was cancelled) as seen: not worth a warning."""
    if not request.cancelled():
        request.exception()


class DeploymentWatch:
    """Heartbeats and inspections of an agent's deployments. One per agent."""

    def __init__(
        self,
        driver: Driver,
        api: ApiCalls,
        registry: RunRegistry,
        lifecycle: RunLifecycle,
        identity: AgentIdentity,
        wakeups: Wakeups,
        tasks: TaskSet,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._driver = driver
        self._api = api
        self._registry = registry
        self._lifecycle = lifecycle
        self._identity = identity
        self._wakeups = wakeups
        self._tasks = tasks
        self._clock = clock
        # The heartbeat request under way: cancelling the loop does not stop its thread (see settle).
        self._request: asyncio.Future[Any] | None = None

    async def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for a heartbeat request still under way after its loop was cancelled: one
        that reached the server after the agent deregistered would make it look alive again."""
        request = self._request
        if request is not None and not request.done():
            await asyncio.wait({request}, timeout=timeout)

    async def heartbeat_once(self) -> None:
        """Report deployments; stop the ones the server wants cancelled."""
        client, agent_id, instance = self._api.client, self._identity.agent_id, self._identity.instance
        assert agent_id is not None
        report = self._registry.heartbeat_report()
        # Only the claims named here keep their lease: one this agent does not know of expires (polling.py).
        claims = [run.id for run in self._registry.all() if not run.submitted]
        loop = asyncio.get_running_loop()
        self._request = request = loop.run_in_executor(None, client.agent_heartbeat, agent_id, report, claims, instance)
        # Shielded: cancelling the loop must not cancel this future, or it would count as done while its thread still
        # sends the heartbeat, and settle() would let a deregistration go first (the heartbeat then undid it).
        request.add_done_callback(_retrieve)
        response = await asyncio.shield(request)
        self._api.succeeded("heartbeat")
        for item in report:
            run = self._registry.get(item["flow_run_id"])
            if not item["alive"] and run is not None and run.phase is Phase.ENDED:
                self._lifecycle.forget(run)
        for run_id in response.failed:
            logger.warning("run %s ended without a final state: the server marked it Failed", run_id)
        for run_id in response.cancel:
            self._tasks.spawn(self._lifecycle.cancel(run_id), f"cancel {run_id}")

    async def inspect_deployments(self) -> None:
        """Record the end of every deployment that has ended; kill those that have run past their limit."""
        for run in self._registry.in_phase(Phase.DEPLOYED):
            assert run.deployment is not None
            result = await self._driver.inspect(run.deployment)
            if result is None or run.phase is not Phase.DEPLOYED:
                continue
            ended = result if isinstance(result, Ended) else Ended(result)
            run.ended(ended)
            code = "unknown" if ended.exit_code is None else ended.exit_code
            logger.info("run %s (%s) ended with exit code %s", run.id, run.name, code)
            self._lifecycle.run_left()
            if ended.exit_code != 0 or self._wakeups.stopping:
                # The run may have no final state (a crash): the server marks it now; and a stop waits for its
                # ended runs to be reported. An exit 0 is the engine's after its final state, so otherwise the next
                # heartbeat reports it (a request per run saved, issue 12).
                self._wakeups.wake_heartbeat()
        self._lifecycle.time_out(self._clock())

    async def heartbeat_loop(self) -> None:
        ticker = self._wakeups.heartbeat
        assert ticker is not None
        while True:
            await ticker.wait()
            try:
                await self.heartbeat_once()
            except ServerUnavailableError as exc:
                delay = self._api.failed(exc, "heartbeat")
                logger.warning("heartbeat failed (%s); next try in %.1fs", exc, delay)
                # Cut short when the API answers again: leases and the server's view of the runs need it soon.
                await sleep_or_wake(delay, self._api.answered_again)

    async def watch_loop(self) -> None:
        ticker = self._wakeups.watch
        assert ticker is not None
        while True:
            await ticker.wait()
            await self.inspect_deployments()

"""The agent's tasks and how they end: supervision, signals, the warm stop and the cold stop.

- ``--max-polls`` reached: wait until the runs claimed so far are Submitted (or Failed), then leave; the
  deployments keep running on their own.
- Warm stop (first SIGINT/SIGTERM, or :meth:`Agent.stop`): claim no more, release claims not yet deployed, keep
  watching and heartbeating the deployments until they have all ended and been reported.
- Cold stop (a second signal, or ``stop(cold=True)``): set every deployed run Failed (Cancelled when a cancel was
  asked for), then kill its deployment; release what was not deployed, leave.
- A fatal error in any task (too many API failures, a refused request): collect the deploys under way (bounded),
  detach every deployment, leave and raise the error.

Every way out also deals with the claim call in flight (see ``polling.py``): the runs it has returned are
released; if it is still waiting on the server, it releases what it claims from its own thread, and the agent
gives it ``stop_claim_wait_seconds`` to do so before it leaves. A warm stop deregisters first, which makes the
server end that waiting call with nothing claimed, so an idle agent leaves within milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Coroutine, Iterator
from typing import Any

from baton.agent.driver import Driver
from baton.agent.health import AgentStatus
from baton.agent.lifecycle import RunLifecycle
from baton.agent.loops import IntervalTicker
from baton.agent.polling import Poller
from baton.agent.protocol import ApiCalls
from baton.agent.runs import ActiveRun, Phase, RunRegistry
from baton.agent.shared import AgentIdentity, TaskSet, Timings, Wakeups
from baton.agent.watching import DeploymentWatch
from baton.exceptions import BatonError, ConflictError

logger = logging.getLogger("baton.agent")


class Supervisor:
    """Runs an agent's loops and ends them: warm and cold stops, signals, fatal errors. One per agent run.

    Stop requests made before it exists (``Agent.stop`` before ``start``) are already in ``wakeups.level``.
    """

    def __init__(
        self,
        *,
        driver: Driver,
        api: ApiCalls,
        registry: RunRegistry,
        status: AgentStatus,
        poller: Poller,
        lifecycle: RunLifecycle,
        watch: DeploymentWatch,
        identity: AgentIdentity,
        wakeups: Wakeups,
        tasks: TaskSet,
        timings: Timings,
    ) -> None:
        self._driver = driver
        self._api = api
        self._registry = registry
        self._status = status
        self._poller = poller
        self._lifecycle = lifecycle
        self._watch = watch
        self._identity = identity
        self._wakeups = wakeups
        self._tasks = tasks
        self._timings = timings

    # --- stop requests --------------------------------------------------------------------------

    def request(self, cold: bool = False) -> None:
        """A warm stop, or a cold one when ``cold`` or when a warm stop is already under way (on the loop)."""
        wakeups = self._wakeups
        wakeups.level = 2 if cold else wakeups.level + 1
        self._status.stopping = True
        wakeups.stop_requested.set()
        wakeups.poke()
        wakeups.notify_changed()
        if wakeups.level == 1:
            logger.warning(
                "warm stop: claiming no more runs; waiting for %d flow run(s) to finish (stop again to kill them)",
                self._registry.busy_slots(),
            )
        else:
            logger.warning("cold stop: killing %d flow run(s)", self._registry.busy_slots())
            wakeups.cold.set()

    def _on_signal(self, signum: int) -> None:
        logger.warning("received %s", signal.Signals(signum).name)
        self.request()

    @contextlib.contextmanager
    def _signal_handlers(self, loop: asyncio.AbstractEventLoop) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals reach only the main thread; stop() still works
            return
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                if handler is not None:
                    signal.signal(sig, handler)

    # --- supervision -----------------------------------------------------------------------------

    async def supervise(self) -> None:
        """Run the poll, heartbeat and watch loops until the agent is done; see the module docstring.

        Raises:
            BatonError: the first fatal error of any task.
        """
        wakeups = self._wakeups
        wakeups.heartbeat = IntervalTicker(self._timings.heartbeat_interval_seconds)
        wakeups.watch = IntervalTicker(self._timings.watch_interval_seconds)
        if wakeups.level >= 1:
            wakeups.stop_requested.set()
        if wakeups.level >= 2:
            wakeups.cold.set()
        with self._signal_handlers(asyncio.get_running_loop()):
            await self._supervise()

    async def _supervise(self) -> None:
        tasks, wakeups = self._tasks, self._wakeups
        poll = tasks.spawn(self._poller.run(), "poll loop")
        tasks.spawn(self._watch.heartbeat_loop(), "heartbeat loop")
        tasks.spawn(self._watch.watch_loop(), "watch loop")
        waiters = {
            asyncio.ensure_future(self._finish(poll)),
            asyncio.ensure_future(wakeups.cold.wait()),
            asyncio.ensure_future(tasks.fatal.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        cold = tasks.fatal_error is None and wakeups.cold.is_set()
        await tasks.cancel_all()
        if cold or tasks.fatal_error is not None:
            self._api.retry = False  # one attempt per call: leave even if the API is gone
        await self._release_abandoned_claim()
        if cold:
            await self._cold_stop()
        else:
            await self._leave()
        warm = tasks.fatal_error is None and wakeups.level == 1
        deregistered = False
        if warm:
            await self._watch.settle(self._timings.stop_claim_wait_seconds + 5)
            # Before waiting for the claim in flight: the server ends a deregistered agent's waiting poll at once
            # (claiming nothing), where it would otherwise wait out the whole long poll.
            deregistered = await self._deregister(first_try=True)
        await self._poller.settle(self._timings.stop_claim_wait_seconds)
        if tasks.fatal_error is not None:
            raise tasks.fatal_error
        if warm and not deregistered:
            await self._deregister()  # the poll had just claimed a run (409): released now, so try once more

    async def _deregister(self, first_try: bool = False) -> bool:
        """A warm stop that ended well: tell the server this agent is gone (issue 9), so lists show it stopped and
        ``explain`` stops counting on it. One attempt (two when the first is refused because the agent's last poll
        had just claimed a run): a server that cannot be reached will see it stale soon.

        Returns:
            True when deregistered, or when there is nothing more to try; False on the ``first_try`` refused
            because the agent still holds runs (its claim in flight took one as it stopped, and releases it).
        """
        agent_id = self._identity.agent_id
        if agent_id is None:
            return True
        try:
            await asyncio.to_thread(self._api.client.deregister_agent, agent_id, self._identity.instance)
        except ConflictError as exc:
            if first_try:
                return False
            logger.warning("could not deregister agent %s (%s): it will show as stale", agent_id, exc)
            return True
        except BatonError as exc:
            logger.warning("could not deregister agent %s (%s): it will show as stale", agent_id, exc)
            return True
        logger.info("agent %s deregistered", agent_id)
        return True

    async def _finish(self, poll: asyncio.Task[None]) -> None:
        await asyncio.wait({poll})
        while self._tasks.launches:  # every claimed run Submitted, Failed or released
            await asyncio.wait(set(self._tasks.launches))
        if not self._wakeups.stopping:
            return  # --max-polls: the deployments run on without us
        if not len(self._registry):
            return
        # Runs that ended with exit 0 wait for a heartbeat to be reported and forgotten (watching.py): now, not at
        # the next tick
        self._wakeups.wake_heartbeat()
        changed = self._wakeups.changed
        while True:
            changed.clear()
            if not len(self._registry):
                return
            await changed.wait()

    async def _release_abandoned_claim(self) -> None:
        """Release what the claim in flight returned before the poll loop, cancelled, could take it."""
        message = f"released by agent {self._identity.name} on shutdown"
        runs = self._poller.abandon()
        jobs = [self._api.set_state_if_allowed(claimed.flow_run.id, "Scheduled", message) for claimed in runs]
        for claimed, result in zip(runs, await asyncio.gather(*jobs, return_exceptions=True), strict=True):
            if isinstance(result, BaseException):
                logger.error("run %s stays Pending until its lease expires: %s", claimed.flow_run.id, result)

    async def _collect_deploys(self) -> None:
        """Wait (bounded) for the deploys a stop or a fatal error interrupted; record what they deployed."""
        runs = self._registry.all()
        pending = {run.deploy_task: run for run in runs if run.deployment is None and run.deploy_task}
        if not pending:
            return
        wait = self._timings.stop_deploy_wait_seconds
        await asyncio.wait(pending, timeout=wait)
        for task, run in pending.items():
            if not task.done():
                logger.error(
                    "run %s: its deploy did not return within %.0fs; what it starts runs unwatched", run.id, wait
                )
            elif not task.cancelled() and task.exception() is None:
                run.deployed(task.result(), at=None)

    def _undeployed_job(self, run: ActiveRun) -> Coroutine[Any, Any, str | None] | None:
        """For a run with nothing deployed: Failed if its deploy failed, else released; None if still deploying."""
        api, task = self._api, run.deploy_task
        if task is not None and not task.done():
            return None  # its deploy did not return in time (logged above)
        error = None if task is None or task.cancelled() else task.exception()
        if error is not None:
            return api.set_state_if_allowed(run.id, "Failed", str(error) or type(error).__name__)
        return api.set_state_if_allowed(run.id, "Scheduled", f"released by agent {self._identity.name} on shutdown")

    async def _run_jobs(self, jobs: list[Coroutine[Any, Any, Any] | None]) -> None:
        for result in await asyncio.gather(*(job for job in jobs if job is not None), return_exceptions=True):
            if isinstance(result, BaseException):
                logger.error("on leaving: %s", result, exc_info=result)

    async def _leave(self) -> None:
        """``--max-polls`` or a fatal error: settle the runs not deployed, let the deployments run on alone."""
        await self._collect_deploys()
        await self._run_jobs([self._undeployed_job(run) for run in self._registry.all() if run.deployment is None])
        for run in self._registry.all():
            if run.deployment is None or run.phase is Phase.ENDED:
                continue
            if not run.submitted:
                logger.warning("run %s was deployed but is not Submitted: its process runs on unwatched", run.id)
            self._driver.detach(run.deployment)

    async def _cold_stop(self) -> None:
        await self._collect_deploys()  # a deploy under way still starts something: wait for it, to kill it
        runs = self._registry.all()
        jobs = [self._cold_stop_job(run) for run in runs]
        if any(run.phase is Phase.ENDED and run.submitted for run in runs):
            jobs.append(self._watch.heartbeat_once())  # report the ends not reported yet
        await self._run_jobs(jobs)

    def _cold_stop_job(self, run: ActiveRun) -> Coroutine[Any, Any, Any] | None:
        """What a cold stop does about ``run``: fail it and kill it, release it, or nothing (it has ended)."""
        if run.deployment is None:
            return self._undeployed_job(run)
        if run.phase is Phase.ENDED:
            return None
        if run.cancel_requested:
            name = self._identity.name
            state, message = "Cancelled", f"cancelled: agent {name} killed the flow process on a cold stop"
        else:
            state, message = "Failed", "the agent stopped (cold stop) and killed the flow process"
        # The state first: the engine answers SIGTERM by reporting Cancelled itself, which must not win.
        grace = self._timings.cold_kill_grace_seconds
        return self._lifecycle.stop_deployment(run, state, message, grace=grace, state_first=True)

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
gives it ``stop_claim_wait_seconds`` to do so before it leaves.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from baton.agent.loops import IntervalTicker, sleep_or_wake
from baton.agent.runs import ActiveRun, Phase
from baton.exceptions import BatonError, ServerUnavailableError

if TYPE_CHECKING:
    from baton.agent.base import Agent

logger = logging.getLogger("baton.agent")


class StopControl:
    """Owns an agent's tasks, wake-up events and stop requests. One per agent; an agent runs once."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self.level = 0  # 0 running, 1 warm stop, 2 cold stop
        self._poll_wake = asyncio.Event()  # a slot freed, a poke, a stop
        self._poked = asyncio.Event()  # a poke or a stop: cuts a backoff short
        self._changed = asyncio.Event()  # a run left the registry
        self._cold = asyncio.Event()
        self.stop_requested = asyncio.Event()  # any stop: the poll loop stops waiting for its claim
        self._fatal = asyncio.Event()
        self._fatal_error: BaseException | None = None
        self._heartbeat: IntervalTicker | None = None
        self._watch: IntervalTicker | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._launches: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the agent runs on: stop requests from other threads are handed to it."""
        self._loop = loop

    @property
    def stopping(self) -> bool:
        return self.level > 0

    # --- wake-ups (call on the event loop) --------------------------------------------------

    def wake_poll(self) -> None:
        self._poll_wake.set()

    def poke(self) -> None:
        self._poked.set()
        self._poll_wake.set()

    def wake_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.wake()

    def wake_watch(self) -> None:
        if self._watch is not None:
            self._watch.wake()

    def notify_changed(self) -> None:
        self._changed.set()

    async def wait_poll(self, timeout: float, poke_only: bool = False) -> None:
        await sleep_or_wake(timeout, self._poked if poke_only else self._poll_wake)
        if not poke_only:
            self._poked.clear()

    # --- tasks --------------------------------------------------------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None], name: str, launch: bool = False) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        if launch:
            self._launches.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._launches.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and self._fatal_error is None:
            logger.error("agent task %r failed: %s", task.get_name(), error, exc_info=error)
            self._fatal_error = error
            self._fatal.set()

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- stop requests --------------------------------------------------------------------------

    def request_threadsafe(self, cold: bool) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            self.level = 2 if cold else max(self.level, 1)  # before start: start() will not claim
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nothing left to stop
            loop.call_soon_threadsafe(self.request, cold)

    def request(self, cold: bool = False) -> None:
        """A warm stop, or a cold one when ``cold`` or when a warm stop is already under way."""
        self.level = 2 if cold else self.level + 1
        self._agent.status.stopping = True
        self.stop_requested.set()
        self.poke()
        self._changed.set()
        if self.level == 1:
            logger.warning(
                "warm stop: claiming no more runs; waiting for %d flow run(s) to finish (stop again to kill them)",
                self._agent.registry.busy_slots(),
            )
        else:
            logger.warning("cold stop: killing %d flow run(s)", self._agent.registry.busy_slots())
            self._cold.set()

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
        agent = self._agent
        self._loop = asyncio.get_running_loop()
        self._heartbeat = IntervalTicker(agent.settings.agent.heartbeat_interval_seconds)
        self._watch = IntervalTicker(agent.watch_interval_seconds)
        if self.level >= 1:
            self.stop_requested.set()
        if self.level >= 2:
            self._cold.set()
        with self._signal_handlers(self._loop):
            await self._supervise()

    async def _supervise(self) -> None:
        agent = self._agent
        poll = self.spawn(agent.poller.run(), "poll loop")
        self.spawn(self._heartbeat_loop(), "heartbeat loop")
        self.spawn(self._watch_loop(), "watch loop")
        waiters = {
            asyncio.ensure_future(self._finish(poll)),
            asyncio.ensure_future(self._cold.wait()),
            asyncio.ensure_future(self._fatal.wait()),
        }
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        cold = self._fatal_error is None and self._cold.is_set()
        await self._cancel_tasks()
        if cold or self._fatal_error is not None:
            agent.api.retry = False  # one attempt per call: leave even if the API is gone
        await self._release_abandoned_claim()
        if cold:
            await self._cold_stop()
        else:
            await self._leave()
        await agent.poller.settle(agent.stop_claim_wait_seconds)
        if self._fatal_error is not None:
            raise self._fatal_error
        if self.level == 1:
            await self._deregister()

    async def _deregister(self) -> None:
        """A warm stop that ended well: tell the server this agent is gone (issue 9), so lists show it stopped and
        ``explain`` stops counting on it. One attempt: a server that cannot be reached will see it stale soon."""
        agent = self._agent
        if agent.agent_id is None:
            return
        try:
            await asyncio.to_thread(agent.client.deregister_agent, agent.agent_id)
        except BatonError as exc:
            logger.warning("could not deregister agent %s (%s): it will show as stale", agent.agent_id, exc)
            return
        logger.info("agent %s deregistered", agent.agent_id)

    async def _finish(self, poll: asyncio.Task[None]) -> None:
        await asyncio.wait({poll})
        while self._launches:  # every claimed run Submitted, Failed or released
            await asyncio.wait(set(self._launches))
        if not self.stopping:
            return  # --max-polls: the deployments run on without us
        while True:
            self._changed.clear()
            if not len(self._agent.registry):
                return
            await self._changed.wait()

    async def _heartbeat_loop(self) -> None:
        assert self._heartbeat is not None
        agent = self._agent
        while True:
            await self._heartbeat.wait()
            try:
                await agent.heartbeat_once()
            except ServerUnavailableError as exc:
                delay = agent.api.failed(exc, "heartbeat")
                logger.warning("heartbeat failed (%s); next try in %.1fs", exc, delay)
                # Cut short when the API answers again: leases and the server's view of the runs need it soon.
                await sleep_or_wake(delay, agent.api.answered_again)

    async def _watch_loop(self) -> None:
        assert self._watch is not None
        while True:
            await self._watch.wait()
            await self._agent.inspect_deployments()

    async def _release_abandoned_claim(self) -> None:
        """Release what the claim in flight returned before the poll loop, cancelled, could take it."""
        agent = self._agent
        message = f"released by agent {agent.name} on shutdown"
        runs = agent.poller.abandon()
        jobs = [agent.api.set_state_if_allowed(claimed.flow_run.id, "Scheduled", message) for claimed in runs]
        for claimed, result in zip(runs, await asyncio.gather(*jobs, return_exceptions=True), strict=True):
            if isinstance(result, BaseException):
                logger.error("run %s stays Pending until its lease expires: %s", claimed.flow_run.id, result)

    async def _collect_deploys(self) -> None:
        """Wait (bounded) for the deploys a stop or a fatal error interrupted; record what they deployed."""
        agent = self._agent
        pending = {run.deploy_task: run for run in agent.registry.all() if run.deployment is None and run.deploy_task}
        if not pending:
            return
        await asyncio.wait(pending, timeout=agent.stop_deploy_wait_seconds)
        for task, run in pending.items():
            if not task.done():
                wait = agent.stop_deploy_wait_seconds
                logger.error(
                    "run %s: its deploy did not return within %.0fs; what it starts runs unwatched", run.id, wait
                )
            elif not task.cancelled() and task.exception() is None:
                run.deployment, run.phase = task.result(), Phase.DEPLOYED

    def _undeployed_job(self, run: ActiveRun) -> Coroutine[Any, Any, str | None] | None:
        """For a run with nothing deployed: Failed if its deploy failed, else released; None if still deploying."""
        agent, task = self._agent, run.deploy_task
        if task is not None and not task.done():
            return None  # its deploy did not return in time (logged above)
        error = None if task is None or task.cancelled() else task.exception()
        if error is not None:
            return agent.api.set_state_if_allowed(run.id, "Failed", str(error) or type(error).__name__)
        return agent.api.set_state_if_allowed(run.id, "Scheduled", f"released by agent {agent.name} on shutdown")

    async def _run_jobs(self, jobs: list[Coroutine[Any, Any, Any] | None]) -> None:
        for result in await asyncio.gather(*(job for job in jobs if job is not None), return_exceptions=True):
            if isinstance(result, BaseException):
                logger.error("on leaving: %s", result, exc_info=result)

    async def _leave(self) -> None:
        """``--max-polls`` or a fatal error: settle the runs not deployed, let the deployments run on alone."""
        agent = self._agent
        await self._collect_deploys()
        await self._run_jobs([self._undeployed_job(run) for run in agent.registry.all() if run.deployment is None])
        for run in agent.registry.all():
            if run.deployment is None or run.phase is Phase.ENDED:
                continue
            if not run.submitted:
                logger.warning("run %s was deployed but is not Submitted: its process runs on unwatched", run.id)
            agent.detach(run.deployment)

    async def _cold_stop(self) -> None:
        agent = self._agent
        await self._collect_deploys()  # a deploy under way still starts something: wait for it, to kill it
        jobs = [self._cold_stop_job(run) for run in agent.registry.all()]
        if any(run.phase is Phase.ENDED and run.submitted for run in agent.registry.all()):
            jobs.append(agent.heartbeat_once())  # report the ends not reported yet
        await self._run_jobs(jobs)

    def _cold_stop_job(self, run: ActiveRun) -> Coroutine[Any, Any, Any] | None:
        """What a cold stop does about ``run``: fail it and kill it, release it, or nothing (it has ended)."""
        agent = self._agent
        if run.deployment is None:
            return self._undeployed_job(run)
        if run.phase is Phase.ENDED:
            return None
        if run.cancel_requested:
            state, message = "Cancelled", f"cancelled: agent {agent.name} killed the flow process on a cold stop"
        else:
            state, message = "Failed", "the agent stopped (cold stop) and killed the flow process"
        # The state first: the engine answers SIGTERM by reporting Cancelled itself, which must not win.
        return agent.runs.stop_deployment(run, state, message, grace=agent.cold_kill_grace_seconds, state_first=True)

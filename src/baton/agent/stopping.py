"""The agent's tasks and how they end: supervision, signals, the warm stop and the cold stop.

- ``--max-polls`` reached: wait until the runs claimed so far are Submitted (or Failed), then leave; the
  deployments keep running on their own.
- Warm stop (first SIGINT/SIGTERM, or :meth:`Agent.stop`): claim no more, release claims not yet deployed, keep
  watching and heartbeating the deployments until they have all ended and been reported.
- Cold stop (a second signal, or ``stop(cold=True)``): kill every deployment, set it Failed (Cancelled when a
  cancel was asked for), release what was not deployed, leave.
- A fatal error in any task (too many API failures, a refused request): leave at once and raise it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Coroutine, Iterator
from typing import TYPE_CHECKING, Any

from baton.agent.health import HealthServer
from baton.agent.loops import IntervalTicker, sleep_or_wake
from baton.agent.runs import ActiveRun, Phase
from baton.exceptions import ServerUnavailableError

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
        if self.level >= 2:
            self._cold.set()
        address = agent.settings.agent.agent_address
        if address:
            agent.health_server = HealthServer(address, agent.status, poke=agent.poke)
            agent.health_server.start()
        try:
            with self._signal_handlers(self._loop):
                await self._supervise()
        finally:
            if agent.health_server is not None:
                agent.health_server.stop()

    async def _supervise(self) -> None:
        agent = self._agent
        poll = self.spawn(agent.poll_loop(), "poll loop")
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
        if self._fatal_error is None and self._cold.is_set():
            await self._cancel_tasks()
            await self._cold_stop()
            return
        await self._cancel_tasks()
        self._detach_all()
        if self._fatal_error is not None:
            raise self._fatal_error

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
                await asyncio.sleep(delay)

    async def _watch_loop(self) -> None:
        assert self._watch is not None
        while True:
            await self._watch.wait()
            await self._agent.inspect_deployments()

    def _detach_all(self) -> None:
        for run in self._agent.registry.all():
            if run.deployment is not None and run.phase is not Phase.ENDED:
                self._agent.detach(run.deployment)

    async def _cold_stop(self) -> None:
        agent = self._agent
        agent.api.retry = False  # one attempt per call: leave even if the API is gone
        deploying = [run.deploy_task for run in agent.registry.all() if run.deployment is None and run.deploy_task]
        if deploying:  # a deploy under way still starts something: wait for it, to kill it
            await asyncio.wait(deploying)
        jobs = [job for run in agent.registry.all() if (job := self._cold_stop_job(run)) is not None]
        if any(run.phase is Phase.ENDED and run.submitted for run in agent.registry.all()):
            jobs.append(agent.heartbeat_once())  # report the ends not reported yet
        for result in await asyncio.gather(*jobs, return_exceptions=True):
            if isinstance(result, BaseException):
                logger.error("cold stop: %s", result, exc_info=result)

    def _cold_stop_job(self, run: ActiveRun) -> Coroutine[Any, Any, Any] | None:
        """What a cold stop does about ``run``: kill it, fail it, release it, or nothing (it has ended)."""
        agent = self._agent
        task = run.deploy_task
        if run.deployment is None and task is not None and task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                return agent.api.set_state_if_allowed(run.id, "Failed", str(error) or type(error).__name__)
            run.deployment, run.phase = task.result(), Phase.DEPLOYED
        if run.deployment is None:
            message = f"released by agent {agent.name} on shutdown"
            return agent.api.set_state_if_allowed(run.id, "Scheduled", message)
        if run.phase is Phase.ENDED:
            return None
        state = "Cancelled" if run.cancel_requested else "Failed"
        message = f"killed by agent {agent.name} on a cold stop"
        return agent.stop_deployment(run, state, message, grace=agent.cold_kill_grace_seconds)

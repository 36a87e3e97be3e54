"""One claimed run's life in an agent: deploy, then Submitted or Failed; cancel, stop, forget.

Each claimed run gets a task of its own (:meth:`RunLifecycle.accept`). The states it sets follow the state
machine of DESIGN.md §3 and are those a ``runner`` key may set (design.md §7); a 409 means someone else decided
first, and the run is then left as the server has it.

Usage::

    lifecycle = RunLifecycle(driver, api, registry, status, tasks, wakeups, identity, timings, run_env)
    lifecycle.accept(claimed)  # deploy it (or release it, when stopping)
    await lifecycle.stop_deployment(run, "Cancelled", "cancelled by the user")
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from baton.agent.driver import Deployment, Driver
from baton.agent.health import AgentStatus
from baton.agent.protocol import ApiCalls
from baton.agent.runs import ActiveRun, Phase, RunRegistry
from baton.agent.shared import AgentIdentity, TaskSet, Timings, Wakeups
from baton.agent.timeouts import effective_timeout, overdue, timed_out_message
from baton.exceptions import BatonError, ClientError, ConfigurationError, ConflictError, DeploymentError
from baton.schemas.responses import ClaimedRun, FlowRunRead
from baton.schemas.states import StateName

logger = logging.getLogger("baton.agent")

# The states of a run whose Submitted went through (a retried Submitted meets them as a 409).
_SUBMITTED_AFTER_ALL = frozenset({StateName.SUBMITTED, StateName.RUNNING})


class RunLifecycle:
    """What an agent does with the runs it claims. One per agent.

    Args:
        driver: deploys and kills.
        api: the agent's API calls.
        registry: the agent's runs.
        status: the health facts to update.
        tasks: where each run's task goes.
        wakeups: the loops to wake as runs come and go.
        identity: the agent's name and id, for messages and for what the server says is ours.
        timings: the kill grace periods.
        run_env: the Baton part of a claimed run's environment.
        refusal: why a claimed run must not be deployed here (the operator's policy on its run config), or None.
        run_timeout_seconds: the agent-wide limit of a run (a flow's shorter one wins).
        clock: measures how long deployments have run.
    """

    def __init__(
        self,
        driver: Driver,
        api: ApiCalls,
        registry: RunRegistry,
        status: AgentStatus,
        tasks: TaskSet,
        wakeups: Wakeups,
        identity: AgentIdentity,
        timings: Timings,
        run_env: Callable[[ClaimedRun], dict[str, str]],
        refusal: Callable[[ClaimedRun], str | None] = lambda _claimed: None,
        run_timeout_seconds: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._driver = driver
        self._api = api
        self._registry = registry
        self._status = status
        self._tasks = tasks
        self._wakeups = wakeups
        self._identity = identity
        self._timings = timings
        self._run_env = run_env
        self._refusal = refusal
        self._run_timeout_seconds = run_timeout_seconds
        self._clock = clock
        self._stopping_stored: set[str] = set()  # runs of a restart being stopped from their Submitted data

    def accept(self, claimed: ClaimedRun) -> None:
        """Take a run a claim returned: deploy it (or release it, when stopping) in a task of its own."""
        self._status.claims += 1
        stale = self._registry.get(claimed.flow_run.id)
        if stale is not None:
            self._supersede(stale)
        limit = effective_timeout(claimed.flow.timeout_seconds, self._run_timeout_seconds)
        run = self._registry.add(claimed, limit)
        self.update_active()
        logger.info("claimed run %s (%s) of flow %s", run.id, run.name, claimed.flow.name)
        self._tasks.spawn(self._launch(run), f"launch {run.id}", launch=True)

    def _supersede(self, stale: ActiveRun) -> None:
        # A claim returned a run this agent still holds: its lease expired while a slow deploy or a retried
        # Submitted was under way (the server returned it to Scheduled, then gave it to us again), or a flow-level
        # retry made it claimable while its old process ends. The new claim is the server's truth: it carries a
        # fresh run token, and the old one no longer works. So the new claim is deployed, and the old deployment
        # is stopped without ever setting a state (the run's state belongs to the new claim now). Releasing the
        # new claim instead is not safer: this agent would claim the run again at once, over and over, while the
        # old deploy is still under way. Nor may the old entry stay: the heartbeat would report its process's
        # end, and the server would fail the new attempt for it.
        logger.warning(
            "run %s was claimed again while this agent held it (%s): stopping the old deployment, deploying the new",
            stale.id,
            stale.phase.value,
        )
        stale.supersede()
        self._registry.remove(stale)
        if stale.deployment is not None and stale.phase is Phase.DEPLOYED:
            stopping = self._driver.kill(stale.deployment, self._timings.kill_grace_seconds)
            self._tasks.spawn(stopping, f"stop superseded {stale.id}")
        # A deploy still under way is stopped by its own launch task when it returns (it sees `superseded`).

    async def _launch(self, run: ActiveRun) -> None:
        if self._wakeups.stopping:
            await self._release(run, "on shutdown")
            return
        problem = self._driver.problem()
        if problem is not None:  # claimed before the platform went away: another agent may deploy it
            await self._release(run, f"without deploying it: {problem}")
            return
        refused = self._refusal(run.claimed)
        if refused is not None:  # the run's own ask: no other agent of this operator should take it either
            await self._fail_deployment(run, DeploymentError(refused))
            return
        run.deploy_task = asyncio.ensure_future(self._driver.deploy(run.claimed, self._run_env(run.claimed)))
        try:
            # Shielded: a stop cancels this task but still collects (and kills or detaches) what the deploy started.
            deployment = await asyncio.shield(run.deploy_task)
        except Exception as exc:  # any deployment problem fails the run with its message (seed docs)
            await self._fail_deployment(run, exc)
            return
        run.deployed(deployment, at=self._clock())
        if run.superseded:
            await self._kill_quietly(run)
            return
        if run.cancel_requested:
            name = self._identity.name
            await self.stop_deployment(run, "Cancelled", f"cancelled before it was submitted by agent {name}")
            return
        await self._submit(run, deployment)

    async def _submit(self, run: ActiveRun, deployment: Deployment) -> None:
        try:
            await self._api.set_state(run.id, "Submitted", deployment.message, deployment.data)
        except ConflictError as exc:
            if not await self._submitted_after_all(run, exc):
                return
        except ClientError:
            await self._kill_quietly(run)
            raise
        if run.superseded:  # claimed again meanwhile: the new claim's deployment is the one that runs
            await self._kill_quietly(run)
            return
        run.confirm_submitted()
        self._status.deployments += 1
        logger.info("submitted run %s (%s): %s", run.id, run.name, deployment.message)
        # Cancels asked meanwhile are noticed soon (the heartbeat's answer names them), and the Submitted of a burst
        # of runs share that heartbeat.
        self._wakeups.wake_heartbeat_soon()

    async def _submitted_after_all(self, run: ActiveRun, refusal: ConflictError) -> bool:
        """Whether a refused Submitted went through anyway; if not, stop what was deployed.

        A retried Submitted is refused (Submitted -> Submitted) when the attempt before it went through but its
        answer was lost (a read timeout): the run is then Submitted, or Running already, for this agent.
        """
        try:
            current = await self._api.get_flow_run(run.id)
        except ClientError:
            await self._kill_quietly(run)
            raise
        name = self._identity.name
        ours = current.agent_id == self._identity.agent_id
        if ours and current.state in _SUBMITTED_AFTER_ALL:
            logger.info("run %s is %s for this agent: an earlier Submitted went through", run.id, current.state)
            return True
        if ours and current.state == StateName.CANCELLING:
            await self.stop_deployment(run, "Cancelled", f"cancelled: agent {name} stopped its deployment")
            return False
        # Cancelled, or its lease lost (Scheduled, or another claim's) while we deployed it: it must not run.
        logger.warning(
            "run %s refused Submitted (%s; it is %s): stopping what was deployed", run.id, refusal.detail, _who(current)
        )
        await self._kill_quietly(run)
        return False

    async def _kill_quietly(self, run: ActiveRun) -> None:
        run.killing()
        if run.deployment is not None:
            await self._driver.kill(run.deployment, self._timings.kill_grace_seconds)
        self.forget(run)

    async def _fail_deployment(self, run: ActiveRun, exc: Exception) -> None:
        message = str(exc) or type(exc).__name__
        problem = self._driver.problem()
        if problem is not None and not run.superseded:
            # The platform went away under the deploy: not the run's fault, so it goes back to be claimed again.
            logger.warning("could not deploy run %s (%s): %s", run.id, run.name, message)
            await self._release(run, f"without deploying it: {problem}")
            return
        level = logging.ERROR if isinstance(exc, ClientError | ConfigurationError) else logging.WARNING
        # A known deployment problem (a missing working directory, an image not there) is the run's or the
        # operator's, told in one line; its traceback helps only whoever debugs the agent. Anything else is a bug.
        expected = isinstance(exc, BatonError)
        logger.log(
            level, "could not deploy run %s (%s): %s", run.id, run.name, message, exc_info=None if expected else exc
        )
        if expected:
            logger.debug("deployment of run %s failed", run.id, exc_info=exc)
        self._status.deployment_failures += 1
        if not run.superseded:  # else the run is the new claim's, whose deploy may well succeed
            await self._api.set_state_if_allowed(run.id, "Failed", message)
        self.forget(run)

    async def _release(self, run: ActiveRun, why: str) -> None:
        message = f"released by agent {self._identity.name} {why}"
        await self._api.set_state_if_allowed(run.id, "Scheduled", message)
        logger.info("released run %s %s", run.id, why)
        self.forget(run)

    async def stop_deployment(
        self, run: ActiveRun, state: str, message: str, grace: float | None = None, state_first: bool = False
    ) -> None:
        """Kill ``run``'s deployment and set its final ``state`` (a final state set meanwhile wins).

        Args:
            run: a run of the registry.
            state: the final state to set (Cancelled, Failed).
            message: its message.
            grace: seconds between the polite and the forced kill (default: the agent's ``kill_grace_seconds``).
            state_first: set the state before killing (a cold stop): a flow-run process that reports its own end
                when signalled (the engine sets Cancelled on SIGTERM) must not decide how the run ends.
        """
        run.killing()
        set_to: str | None = None
        if state_first and not run.superseded:
            set_to = await self._api.set_state_if_allowed(run.id, state, message)
        if run.deployment is not None:
            await self._driver.kill(run.deployment, self._timings.kill_grace_seconds if grace is None else grace)
        if not state_first and not run.superseded:
            set_to = await self._api.set_state_if_allowed(run.id, state, message)
        if set_to is None:
            logger.info("stopped run %s; it was not ours to mark %s any more", run.id, state)
        else:
            logger.info("stopped run %s and set it %s: %s", run.id, set_to, message)
        self.forget(run)

    async def cancel(self, run_id: str) -> None:
        """Stop a run the server wants cancelled (its heartbeat answer named it)."""
        run = self._registry.get(run_id)
        if run is None:
            # Every heartbeat answer names a Cancelling run again: one stop of it at a time (it may take the grace).
            if run_id in self._stopping_stored:
                return
            self._stopping_stored.add(run_id)
            try:
                await self._cancel_stored(run_id)
            finally:
                self._stopping_stored.discard(run_id)
            return
        if run.phase is Phase.KILLING:
            return
        run.request_cancel()
        if run.phase is Phase.CLAIMED:
            return  # _launch stops it as soon as its deploy returns
        name = self._identity.name
        await self.stop_deployment(run, "Cancelled", f"cancelled: agent {name} stopped its deployment")

    async def _cancel_stored(self, run_id: str) -> None:
        """Cancel a run deployed by this identity before a restart: its deployment is found again from what its
        Submitted state stored, and stopped if it is still there."""
        name = self._identity.name
        stopped = await self._kill_stored(run_id)
        if stopped is None:
            message = f"cancelled: agent {name} holds no deployment"
        else:
            message = f"cancelled: agent {name} stopped {stopped}, deployed before it restarted"
            logger.info("run %s: stopped %s, deployed before this agent restarted", run_id, stopped)
        await self._api.set_state_if_allowed(run_id, "Cancelled", message)

    async def _kill_stored(self, run_id: str) -> str | None:
        try:
            current = await self._api.get_flow_run(run_id)
        except BatonError as exc:
            logger.warning("cannot read run %s to stop its deployment: %s", run_id, exc)
            return None
        submitted = [state for state in current.states if state.name == StateName.SUBMITTED]
        if not submitted or not isinstance(submitted[-1].data, dict):
            return None
        try:
            return await self._driver.kill_stored(run_id, submitted[-1].data, self._timings.kill_grace_seconds)
        except Exception:  # a platform error: the run is still cancelled, and the operator told
            logger.exception("could not stop the deployment of run %s", run_id)
            return None

    def time_out(self, now: float) -> None:
        """Kill every deployment that has run past its limit and fail its run "timed out after N s"."""
        for run in self._registry.in_phase(Phase.DEPLOYED):
            limit = overdue(run, now)
            if limit is None:
                continue
            run.killing()  # now: the next watch tick must not time it out twice
            logger.warning("run %s (%s) has run for %d s, its limit: killing it", run.id, run.name, limit)
            # The state first: the engine answers SIGTERM by reporting its own end, which must not win.
            stopping = self.stop_deployment(run, "Failed", timed_out_message(limit), state_first=True)
            self._tasks.spawn(stopping, f"time out {run.id}")

    def forget(self, run: ActiveRun) -> None:
        """Drop ``run`` (not a newer claim of the same run) and what the agent knows of its API calls."""
        self._registry.remove(run)
        if run.id not in self._registry:
            self._api.forget(f"run {run.id}")
        self.run_left()

    def run_left(self) -> None:
        """A run freed its slot: the poll loop may claim again, a stop may be able to finish."""
        self.update_active()
        self._wakeups.wake_poll()
        self._wakeups.notify_changed()

    def update_active(self) -> None:
        self._status.active_runs = self._registry.busy_slots()


def _who(run: FlowRunRead) -> str:
    return f"{run.state}, agent {run.agent_id}" if run.agent_id else run.state

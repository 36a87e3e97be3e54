"""What an agent restarted under the same name does with the deployments its name left running.

The driver finds them when it opens (:meth:`~baton.agent.driver.Driver.recover`: the Kubernetes agent's Jobs
labelled with its name). For each, the run as the server has it now decides:

- Submitted, Running or Cancelling, held by this agent (same name, same agent id), and its Submitted state names
  this very deployment: **adopted**. The run holds a ``--limit`` slot, the heartbeat vouches for it (so recovery
  does not call it lost), the watch sees its end and reports the exit code, and a cancel or a timeout stops it,
  exactly as if this process had deployed it. Its timeout counts from its Submitted state.
- The run ended, went back to the queue (and maybe to another agent's new deployment), or its Submitted state
  names another deployment: nothing may run for it here any more, so the deployment is **killed** in the
  background (a Job Kubernetes finished is kept under ``--disable-job-deletion``).
- **Left alone** (the driver stops watching it, :meth:`Driver.forget`): the run is held by another agent of the
  same name (another agent id: other labels) with this very deployment; the deployment is another tenant's; the
  run is not found (404), or cannot be read now. Never killed on a doubt: a cancel still reaches the ones of this
  agent (``kill_stored``) and a flow-run process reports its own end.

Usage::

    adoption = Adoption(driver, api, registry, identity, 10, on_change=lifecycle.update_active, spawn=tasks.spawn)
    await adoption.adopt_all()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from baton.agent.driver import Driver, Recovered
from baton.agent.protocol import ApiCalls
from baton.agent.runs import RunRegistry
from baton.agent.shared import AgentIdentity
from baton.agent.timeouts import effective_timeout
from baton.exceptions import BatonError, NotFoundError
from baton.schemas.responses import ClaimedRun, FlowRunRead
from baton.schemas.states import StateName

logger = logging.getLogger("baton.agent")

_ADOPTABLE = frozenset({StateName.SUBMITTED, StateName.RUNNING, StateName.CANCELLING})


class Adoption:
    """Adopts or kills what :meth:`Driver.recover` found. One per agent start.

    Args:
        driver: recovers, kills and detaches.
        api: reads runs and flows.
        registry: where adopted runs go.
        identity: the agent's id, which the server's runs must name.
        kill_grace_seconds: for the deployments that must not run on.
        on_change: called after runs were adopted (the agent's health counts them).
        spawn: starts a background task (the kills, which take their grace period).
        run_timeout_seconds: the agent-wide limit of a run (a flow's shorter one wins).
        clock: the agent's monotonic clock (timeouts are measured on it).
        wall_clock: seconds since the epoch, to place the Submitted state's timestamp on ``clock``.
    """

    def __init__(
        self,
        driver: Driver,
        api: ApiCalls,
        registry: RunRegistry,
        identity: AgentIdentity,
        kill_grace_seconds: float,
        on_change: Callable[[], None],
        spawn: Callable[[Coroutine[Any, Any, None], str], object],
        run_timeout_seconds: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._driver = driver
        self._api = api
        self._registry = registry
        self._identity = identity
        self._kill_grace_seconds = kill_grace_seconds
        self._on_change = on_change
        self._spawn = spawn
        self._run_timeout_seconds = run_timeout_seconds
        self._clock = clock
        self._wall_clock = wall_clock

    async def adopt_all(self) -> None:
        """Adopt, kill or leave each deployment the driver recovered; never raises for one of them."""
        found = await self._driver.recover()
        adopted = 0
        for item in found:
            try:
                if item.tenant_id is not None and item.tenant_id != self._identity.tenant_id:
                    self._driver.forget(item.deployment)  # an agent of the same name in another tenant made it
                    continue
                adopted += await self._decide(item)
            except Exception:  # one odd deployment must not stop the agent from starting
                logger.exception("%s of run %s: cannot decide what to do with it", item.deployment.message, item.run_id)
                self._driver.forget(item.deployment)
        if adopted:
            self._on_change()
        if found:
            logger.info("found %d deployment(s) made before this agent restarted: adopted %d", len(found), adopted)

    async def _decide(self, item: Recovered) -> int:
        deployment = item.deployment
        try:
            run = await self._api.get_flow_run(item.run_id)
        except NotFoundError:
            # Deleted, or (made by an older version, with no tenant label) another tenant's: never kill on a doubt
            logger.info("%s: its run %s is not found: leaving it alone", deployment.message, item.run_id)
            self._driver.forget(deployment)
            return 0
        except BatonError as exc:
            logger.warning("%s of run %s cannot be read (%s): leaving it alone", deployment.message, item.run_id, exc)
            self._driver.forget(deployment)
            return 0
        verdict, why = self._verdict(run, item)
        if verdict == "kill":
            logger.warning(
                "%s of run %s was made before this agent restarted and %s: stopping it", deployment.message, run.id, why
            )
            self._spawn(self._kill(item), f"stop {deployment.message}")  # in the background: kills take the grace
            return 0
        if verdict == "leave":
            logger.info("%s of run %s: %s: leaving it alone", deployment.message, run.id, why)
            self._driver.forget(deployment)
            return 0
        flow = await self._api.get_flow(run.flow_id, run.id)
        if item.run_id in self._registry:  # a second deployment that also matched: impossible, but never two
            self._driver.forget(deployment)
            return 0
        active = self._registry.add(
            ClaimedRun(flow_run=run, flow=flow, run_token=""),  # the token went to the deployment, not kept here
            effective_timeout(flow.timeout_seconds, self._run_timeout_seconds),
        )
        active.deployed(deployment, at=self._deployed_at(run))
        active.confirm_submitted()
        logger.info(
            "adopted run %s (%s, %s): %s, made before this agent restarted",
            run.id,
            run.name,
            run.state,
            deployment.message,
        )
        return 1

    def _verdict(self, run: FlowRunRead, item: Recovered) -> tuple[str, str]:
        """``adopt``, ``kill`` (nothing may run for it any more) or ``leave`` (another agent's), and why."""
        if run.state not in _ADOPTABLE:
            return "kill", f"its run is {run.state}"
        submitted = [state for state in run.states if state.name == StateName.SUBMITTED]
        stored = submitted[-1].data if submitted else None
        # The Submitted state must name this deployment: a later claim's deployment is the run's now
        if not isinstance(stored, dict) or any(stored.get(k) != v for k, v in item.deployment.data.items()):
            return "kill", "its run's Submitted state names another deployment"
        if run.agent_id != self._identity.agent_id:
            # The run's live deployment, of an agent of the same name with other labels (another agent id)
            return "leave", f"another agent ({run.agent_name or run.agent_id}) holds its run"
        return "adopt", ""

    def _deployed_at(self, run: FlowRunRead) -> float:
        """When the run was Submitted, on the agent's monotonic clock (its timeout counts from then)."""
        submitted = [state for state in run.states if state.name == StateName.SUBMITTED]
        if not submitted:
            return self._clock()
        age = max(0.0, self._wall_clock() - submitted[-1].timestamp.timestamp())
        return self._clock() - age

    async def _kill(self, item: Recovered) -> None:  # a task of its own: must not raise
        try:
            await self._driver.kill(item.deployment, self._kill_grace_seconds)
        except Exception:  # a platform error: the deployment's own run token no longer works anyway
            logger.exception("could not stop %s of run %s", item.deployment.message, item.run_id)

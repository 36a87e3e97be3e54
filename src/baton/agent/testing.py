"""An in-memory agent driver: "deploys" runs by recording them, for fast tests of the loop and for load tests.

Nothing is started anywhere. A test decides when a deployment ends (:meth:`InMemoryAgent.finish`), or lets
``on_deploy`` do it, or makes deployments fail (``deploy_error``). Every method a test calls is thread-safe: the
agent usually runs in another thread (``threading.Thread(target=agent.start)``).

Usage::

    agent = InMemoryAgent(settings=settings, labels=["dev"])
    threading.Thread(target=agent.start).start()
    [deployment] = agent.wait_for_deployments(1)
    agent.finish(deployment.flow_run_id, exit_code=0)
    agent.stop()
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from baton.agent.base import Agent
from baton.agent.runs import Deployment, Ended
from baton.exceptions import DeploymentError
from baton.schemas.responses import ClaimedRun


@dataclass
class FakeDeployment:
    """One "deployed" run, as a test sees it."""

    claimed: ClaimedRun
    env: dict[str, str]
    fake_id: int
    exit_code: int | None = None
    killed: bool = False
    kill_grace_seconds: float | None = None
    detached: bool = False  # the agent left while it ran (--max-polls, a fatal error)
    deployed_at: float = field(default_factory=time.monotonic)

    @property
    def flow_run_id(self) -> str:
        return self.claimed.flow_run.id

    @property
    def alive(self) -> bool:
        return self.exit_code is None


class InMemoryAgent(Agent):
    """An agent whose deployments live in a dict.

    Args:
        deploy_error: called with each claimed run; a returned message fails that deployment with it.
        on_deploy: called with each new deployment, e.g. to finish it at once (on the agent's event loop, or in
            the deploy's thread with ``deploy_in_thread``).
        deploy_seconds: how long each deploy takes (simulated platform latency).
        deploy_in_thread: deploy in a worker thread, like the local driver's ``Popen``: the deployment happens
            even if the task awaiting it is cancelled.
        **options: the common agent options (see :class:`baton.agent.base.Agent`).
    """

    agent_type: ClassVar[str] = "memory"
    watch_interval_seconds: float = 0.05

    def __init__(
        self,
        *,
        deploy_error: Callable[[ClaimedRun], str | None] | None = None,
        on_deploy: Callable[[FakeDeployment], None] | None = None,
        deploy_seconds: float = 0.0,
        deploy_in_thread: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self.deploy_error = deploy_error
        self.on_deploy = on_deploy
        self.deploy_seconds = deploy_seconds
        self.deploy_in_thread = deploy_in_thread
        self.deployments: dict[str, FakeDeployment] = {}  # the latest deployment of each run
        self.history: list[FakeDeployment] = []  # every deployment, in the order they were made
        self.failed_deploys: list[str] = []
        self._ids = itertools.count(1)
        self._changed = threading.Condition()

    # --- the driver ------------------------------------------------------------------------------

    async def deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Deployment:
        if self.deploy_in_thread:
            return await asyncio.to_thread(self._deploy_now, claimed, env, self.deploy_seconds)
        if self.deploy_seconds:
            await asyncio.sleep(self.deploy_seconds)
        return self._deploy_now(claimed, env)

    def _deploy_now(self, claimed: ClaimedRun, env: dict[str, str], delay: float = 0.0) -> Deployment:
        time.sleep(delay)
        error = self.deploy_error(claimed) if self.deploy_error else None
        if error is not None:
            with self._changed:
                self.failed_deploys.append(claimed.flow_run.id)
                self._changed.notify_all()
            raise DeploymentError(error)
        fake = FakeDeployment(claimed, dict(env), next(self._ids))
        with self._changed:
            self.deployments[fake.flow_run_id] = fake
            self.history.append(fake)
            self._changed.notify_all()
        if self.on_deploy is not None:
            self.on_deploy(fake)
        return Deployment(message=f"Fake ID: {fake.fake_id}", data={"fake_id": fake.fake_id}, handle=fake)

    async def inspect(self, deployment: Deployment) -> int | Ended | None:
        fake: FakeDeployment = deployment.handle
        return fake.exit_code

    async def kill(self, deployment: Deployment, grace_seconds: float) -> None:
        fake: FakeDeployment = deployment.handle
        with self._changed:
            fake.killed = True
            fake.kill_grace_seconds = grace_seconds
            if fake.exit_code is None:
                fake.exit_code = 143  # as if SIGTERM worked
            self._changed.notify_all()

    def detach(self, deployment: Deployment) -> None:
        fake: FakeDeployment = deployment.handle
        with self._changed:
            fake.detached = True
            self._changed.notify_all()

    # --- what tests call ----------------------------------------------------------------------

    def finish(self, flow_run_id: str, exit_code: int = 0) -> None:
        """End a deployment with ``exit_code``; the agent notices at once. Thread-safe."""
        with self._changed:
            self.deployments[flow_run_id].exit_code = exit_code
            self._changed.notify_all()
        self.deployments_changed()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until ``predicate()`` holds (checked when a deployment changes, and every 50 ms).

        Raises:
            TimeoutError: it did not hold within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"condition not met within {timeout}s")
                self._changed.wait(min(remaining, 0.05))

    def wait_for_deployments(self, count: int, timeout: float = 10.0) -> list[FakeDeployment]:
        """Block until at least ``count`` runs were deployed; return the deployments in order.

        Raises:
            TimeoutError: fewer within ``timeout`` seconds.
        """
        self.wait_for(lambda: len(self.deployments) >= count, timeout)
        with self._changed:
            return sorted(self.deployments.values(), key=lambda fake: fake.fake_id)

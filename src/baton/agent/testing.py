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
from typing import Any

from baton.agent.base import Agent
from baton.agent.driver import Deployment, DriverEvents, Ended, Recovered
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


def _deployment_of(fake: FakeDeployment) -> Deployment:
    """What deploy returns for ``fake``, and what recover finds of it again: the same data, as adoption compares."""
    return Deployment(message=f"Fake ID: {fake.fake_id}", data={"fake_id": fake.fake_id}, handle=fake)


class InMemoryDriver:
    """A driver whose deployments live in a dict.

    Args:
        deploy_error: called with each claimed run; a returned message fails that deployment with it.
        on_deploy: called with each new deployment, e.g. to finish it at once (on the agent's event loop, or in
            the deploy's thread with ``deploy_in_thread``).
        deploy_seconds: how long each deploy takes (simulated platform latency).
        deploy_in_thread: deploy in a worker thread, like the local driver's ``Popen``: the deployment happens
            even if the task awaiting it is cancelled.
        survivors_of: the driver of an earlier agent process on the same "platform": :meth:`recover` finds its
            deployments that it left running (detached), as a restarted Kubernetes agent finds its Jobs.
    """

    agent_type = "memory"
    watch_interval_seconds = 0.05
    default_limit: int | None = None  # its deployments cost nothing: benches measure the control plane unbounded

    def __init__(
        self,
        *,
        deploy_error: Callable[[ClaimedRun], str | None] | None = None,
        on_deploy: Callable[[FakeDeployment], None] | None = None,
        deploy_seconds: float = 0.0,
        deploy_in_thread: bool = False,
        survivors_of: InMemoryDriver | None = None,
    ) -> None:
        self.survivors_of = survivors_of
        self.deploy_error = deploy_error
        self.on_deploy = on_deploy
        self.deploy_seconds = deploy_seconds
        self.deploy_in_thread = deploy_in_thread
        self.deployments: dict[str, FakeDeployment] = {}  # the latest deployment of each run
        self.history: list[FakeDeployment] = []  # every deployment, in the order they were made
        self.failed_deploys: list[str] = []
        self._ids = itertools.count(1)
        self._changed = threading.Condition()
        self._events: DriverEvents | None = None

    def labels(self) -> list[str]:
        return []

    def check_api_url(self, api_url: str) -> str | None:
        return None

    async def open(self, events: DriverEvents) -> None:
        self._events = events

    async def close(self) -> None:
        return None

    def problem(self) -> str | None:
        return None

    async def kill_stored(self, run_id: str, data: dict[str, Any], grace_seconds: float) -> str | None:
        return None  # nothing outlives the agent's process here

    async def recover(self) -> list[Recovered]:
        if self.survivors_of is None:
            return []
        with self.survivors_of._changed:
            left = [fake for fake in self.survivors_of.history if fake.detached and fake.alive]
        found = []
        with self._changed:
            for fake in left:
                self.deployments[fake.flow_run_id] = fake  # finish() and kill() reach it through this driver now
                deployment = _deployment_of(fake)
                found.append(Recovered(fake.flow_run_id, deployment, fake.env.get("BATON_TENANT_ID")))
        return found

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
        return _deployment_of(fake)

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

    def forget(self, deployment: Deployment) -> None:
        return None

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
        if self._events is not None:
            self._events.deployments_changed()

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


class InMemoryAgent(Agent):
    """An :class:`~baton.agent.base.Agent` with an :class:`InMemoryDriver` (given, or built from its options).

    What tests read of the driver (``deployments``, ``history``, ``finish``, ``wait_for``...) is here too.

    Args:
        driver: the driver (a test's subclass of :class:`InMemoryDriver`); default: one built from
            ``deploy_error``, ``on_deploy``, ``deploy_seconds`` and ``deploy_in_thread``.
        **options: the common agent options (see :class:`baton.agent.base.Agent`).
    """

    driver: InMemoryDriver

    def __init__(
        self,
        *,
        driver: InMemoryDriver | None = None,
        deploy_error: Callable[[ClaimedRun], str | None] | None = None,
        on_deploy: Callable[[FakeDeployment], None] | None = None,
        deploy_seconds: float = 0.0,
        deploy_in_thread: bool = False,
        **options: Any,
    ) -> None:
        driver = driver or InMemoryDriver(
            deploy_error=deploy_error,
            on_deploy=on_deploy,
            deploy_seconds=deploy_seconds,
            deploy_in_thread=deploy_in_thread,
        )
        super().__init__(driver, **options)

    @property
    def deployments(self) -> dict[str, FakeDeployment]:
        return self.driver.deployments

    @property
    def on_deploy(self) -> Callable[[FakeDeployment], None] | None:
        return self.driver.on_deploy

    @on_deploy.setter
    def on_deploy(self, callback: Callable[[FakeDeployment], None] | None) -> None:
        self.driver.on_deploy = callback

    @property
    def history(self) -> list[FakeDeployment]:
        return self.driver.history

    @property
    def failed_deploys(self) -> list[str]:
        return self.driver.failed_deploys

    def finish(self, flow_run_id: str, exit_code: int = 0) -> None:
        self.driver.finish(flow_run_id, exit_code)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        self.driver.wait_for(predicate, timeout)

    def wait_for_deployments(self, count: int, timeout: float = 10.0) -> list[FakeDeployment]:
        return self.driver.wait_for_deployments(count, timeout)


# --- a flow-run process, simulated, and the agent as a process of its own (load and chaos tests) -------------


class SimulatedFlowRuns:
    """An ``on_deploy`` that does what a successful flow-run process does, from a thread pool: Running, then
    Success, with the run's own token, retrying through API outages; then the deployment ends with exit code 0.

    Usage::

        simulated = SimulatedFlowRuns(api_url)
        agent = InMemoryAgent(on_deploy=simulated, ...)
        simulated.attach(agent)
    """

    # A run token may be used before the agent's Submitted landed (the engine waits for it the same way).
    _SUBMITTED_WAIT_SECONDS = 60.0

    def __init__(self, api_url: str, workers: int = 8, retry_seconds: float = 600.0) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.api_url = api_url
        self.retry_seconds = retry_seconds
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="simulated-flow-run")
        self._agent: InMemoryAgent | None = None

    def attach(self, agent: InMemoryAgent) -> None:
        self._agent = agent

    def __call__(self, fake: FakeDeployment) -> None:
        self._pool.submit(self._run, fake)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _run(self, fake: FakeDeployment) -> None:
        from baton.client import Client

        exit_code = 0
        with Client(self.api_url, fake.claimed.run_token) as client:
            for state in ("Running", "Success"):
                if not self._set_state(client, fake.flow_run_id, state):
                    exit_code = 1
                    break
        if self._agent is not None:
            self._agent.finish(fake.flow_run_id, exit_code)

    def _set_state(self, client: Any, flow_run_id: str, state: str) -> bool:
        """Set ``state``; True when the run is in it (set now, or by an earlier attempt whose answer was lost)."""
        from baton.engine.retry import call_with_retry
        from baton.engine.transitions import SUBMITTED_WAIT_SECONDS
        from baton.exceptions import AuthenticationError, ConflictError

        deadline = time.monotonic() + self._SUBMITTED_WAIT_SECONDS
        pause = 0.02
        while True:
            try:
                call_with_retry(
                    lambda: client.change_flow_run_state(
                        flow_run_id, state, wait_seconds=SUBMITTED_WAIT_SECONDS if state == "Running" else 0.0
                    ),
                    what=f"set the run {state}",
                    timeout_seconds=self.retry_seconds,
                )
                return True
            except AuthenticationError:
                return False  # the token was revoked: the run was given to another agent, or ended
            except ConflictError as exc:
                current = (
                    exc.current_state
                    or call_with_retry(
                        lambda: client.get_flow_run(flow_run_id),
                        what="read the run",
                        timeout_seconds=self.retry_seconds,
                    ).state
                )
                if current == state:
                    return True
                # Pending, or Submitted since the refusal: the agent's Submitted was late; try again.
                if current not in ("Pending", "Submitted") or time.monotonic() > deadline:
                    return False
                time.sleep(pause)
                pause = min(pause * 2, 0.5)  # a late Submitted usually lands within milliseconds


def spawn_agent_process(
    api_url: str, key: str, name: str, record: str, labels: list[str] | None = None, env: dict[str, str] | None = None
) -> Any:
    """Start ``python -m baton.agent.testing`` as a child process (a ``subprocess.Popen``); stop it with SIGTERM.

    Its log is ``<record>.log``.
    """
    import subprocess
    import sys

    argv = [sys.executable, "-m", "baton.agent.testing", "--api", api_url, "--key", key, "--name", name]
    argv += ["--record", record, *[arg for label in labels or [] for arg in ("--label", label)]]
    # Its log goes to a file beside the record: a pipe nobody reads until the end would fill up during an outage
    # (a warning per failed call) and freeze the agent.
    with open(f"{record}.log", "ab") as log:
        return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log)


def read_deployments(*records: str) -> dict[str, list[str]]:
    """Which agents deployed each flow run, from the ``--record`` files of agent processes."""
    import json
    from pathlib import Path

    deployed: dict[str, list[str]] = {}
    for record in records:
        path = Path(record)
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                entry = json.loads(line)
                deployed.setdefault(entry["flow_run_id"], []).append(entry["agent"])
    return deployed


def _parse_args(argv: list[str] | None) -> Any:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m baton.agent.testing",
        description="An in-memory agent whose deployments act like successful flow runs (load and chaos tests).",
    )
    parser.add_argument("--api", required=True, help="API URL")
    parser.add_argument("--key", required=True, help="runner or admin API key")
    parser.add_argument("--name", required=True, help="agent name")
    parser.add_argument("--label", action="append", default=[], help="agent label (repeatable)")
    parser.add_argument("--limit", type=int, default=None, help="most runs deployed at once")
    parser.add_argument("--record", required=True, help="append one JSON line per deployment to this file")
    parser.add_argument("--log-level", default="WARNING")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run one in-memory agent until SIGTERM/SIGINT; every deployment is recorded as a JSON line."""
    import json

    from baton.settings import load_settings

    args = _parse_args(argv)
    settings = load_settings(api={"url": args.api, "key": args.key}, agent={"hostname_label": False})
    simulated = SimulatedFlowRuns(args.api)
    lock = threading.Lock()
    with open(args.record, "a", encoding="utf-8", buffering=1) as record:

        def on_deploy(fake: FakeDeployment) -> None:
            with lock:  # one whole line per deployment: a reader never sees half of one
                record.write(json.dumps({"flow_run_id": fake.flow_run_id, "agent": args.name}) + "\n")
            simulated(fake)

        agent = InMemoryAgent(
            settings=settings,
            name=args.name,
            labels=args.label,
            limit=args.limit,
            log_level=args.log_level,
            on_deploy=on_deploy,
        )
        simulated.attach(agent)
        try:
            agent.start()
        finally:
            simulated.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

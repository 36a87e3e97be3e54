"""The contract between an agent and its platform: a :class:`Driver` deploys, inspects and kills flow-run
processes; the agent (``base.py``) does everything else (claims, states, heartbeats, timeouts, stops).

A driver is a plain object, not a subclass of the agent: it knows nothing of the API, the registry or the loops.
What it may tell the agent goes through the :class:`DriverEvents` it is given when opened. Each driver takes one
pydantic options model (``LocalOptions``, ``DockerOptions``), and :attr:`Driver.agent_type` names it.

Usage::

    class MyDriver:
        agent_type = "mine"
        watch_interval_seconds = 0.5
        default_limit = None

        async def open(self, events: DriverEvents) -> None: ...  # events.name: the agent's, to label things
        async def deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Deployment: ...
        ...

    Agent(MyDriver(...), labels=["dev"]).start()
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from baton.schemas.responses import ClaimedRun


@dataclass
class Deployment:
    """What a driver's ``deploy`` returns: how the Submitted state identifies the deployment, and its handle.

    Args:
        message: the Submitted state's message, e.g. ``"PID: 1234"``.
        data: the Submitted state's data, e.g. ``{"pid": 1234}``: enough for :meth:`Driver.kill_stored` to find
            the deployment again after the agent restarts.
        handle: the driver's own object (a ``Popen``, a container id, a job name); the agent never looks at it.
    """

    message: str
    data: dict[str, Any] = field(default_factory=dict)
    handle: Any = None


# The end of a failed deployment's output that goes into its run's Failed message.
LOG_TAIL_LINES = 20
MAX_LOG_LINE_CHARS = 500
MAX_END_MESSAGE_CHARS = 8000


def with_last_lines(what: str, output: str) -> str:
    """``what`` (why a deployment failed) followed by the last lines of its ``output``, each and all cut short."""
    lines = [line[:MAX_LOG_LINE_CHARS] for line in output.splitlines()]
    if not lines:
        return f"{what}; it wrote no output"
    return f"{what}; last log lines:\n" + "\n".join(lines)[-MAX_END_MESSAGE_CHARS:]


@dataclass(frozen=True)
class Ended:
    """What :meth:`Driver.inspect` may return for a deployment that has ended, when an exit code is not all.

    Args:
        exit_code: the exit code; None when it cannot be known (a container removed from outside).
        message: why it ended, for people (e.g. "OOM-killed", the last log lines); the heartbeat passes it on and
            the server appends it to the Failed message of a run that ended without a final state.
    """

    exit_code: int | None
    message: str | None = None


def is_run_id(value: object) -> bool:
    """Whether ``value`` (read from a platform's labels, which anyone with access there may set) is a run id."""
    return isinstance(value, str) and _RUN_ID.match(value) is not None


_RUN_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@dataclass(frozen=True)
class Recovered:
    """A deployment the platform still holds from before the agent restarted (:meth:`Driver.recover`).

    Args:
        run_id: the run it was deployed for (from its labels).
        deployment: as :meth:`Driver.deploy` returned it then: ``data`` equal to what Submitted stored, and a handle
            :meth:`Driver.inspect` and :meth:`Driver.kill` accept.
        tenant_id: the tenant it was deployed for (from its labels; None when it carries none): an agent of the
            same name in another tenant leaves it alone.
    """

    run_id: str
    deployment: Deployment
    tenant_id: str | None = None


class DriverEvents(Protocol):
    """What a driver may tell its agent, from any thread, and the agent's name (to label what it creates)."""

    @property
    def name(self) -> str: ...

    def deployments_changed(self) -> None:
        """A deployment has ended: inspect deployments now, not at the next watch tick."""

    def platform_back(self) -> None:
        """The platform is usable again: claim now, not after the current wait."""

    @property
    def sends_run_logs(self) -> bool:
        """Whether :meth:`run_logs` sends anything (not under ``--no-cloud-logs``): a driver need not collect
        lines that would be dropped."""

    def run_logs(self, run_id: str, entries: list[dict[str, Any]]) -> None:
        """Lines from the platform for run ``run_id``'s logs (``LogEntry`` fields, each with a ``key`` derived from
        its source so a line sent twice is stored once), e.g. its pod's events. Never blocks."""


class Driver(Protocol):
    """One platform's way to run flow-run processes. Every method but :meth:`problem` may block only in threads.

    Attributes:
        agent_type: the agent's type as registered (``local``, ``docker``, ``kubernetes``).
        watch_interval_seconds: how often the agent calls :meth:`inspect` on each deployment.
        default_limit: the most runs deployed at once when the agent is given no ``--limit``; None (or no such
            attribute): no limit (``capacity.py``).
    """

    agent_type: str
    watch_interval_seconds: float
    default_limit: int | None

    def labels(self) -> list[str]:
        """Labels the driver adds to the agent's (the local agent's hostname)."""

    def check_api_url(self, api_url: str) -> str | None:
        """A warning when flow runs deployed here cannot reach ``api_url`` (e.g. 127.0.0.1 from a bridge
        network), or None. Called once, before start-up; the agent logs it."""

    async def open(self, events: DriverEvents) -> None:
        """Connect to the platform before the agent registers; the agent does not start if it raises.

        Raises:
            ConfigurationError: the platform is unreachable or unusable (e.g. no Docker daemon).
        """

    async def close(self) -> None:
        """Release what :meth:`open` acquired; called once on leaving, even if it failed."""

    def problem(self) -> str | None:
        """Why the platform (Docker daemon, Kubernetes API) is unusable now, or None.

        Called from the health thread and, before each claim and each deploy, from the event loop: it must answer
        at once (a driver checks its platform in the background and keeps the answer). While it is not None the
        agent is unhealthy, claims nothing, and releases the runs it has claimed but not deployed.
        """

    async def deploy(self, claimed: ClaimedRun, env: dict[str, str]) -> Deployment:
        """Start the flow-run process for ``claimed`` with ``env`` (complete but for the platform's base env).

        Raises:
            DeploymentError: the run cannot be deployed; the message becomes its Failed message.
        """

    async def inspect(self, deployment: Deployment) -> int | Ended | None:
        """None while the deployment runs (or while the platform cannot tell); its exit code once it has ended.

        An :class:`Ended` says more than the exit code: an unknown code (the deployment vanished), and a message
        for the run's Failed state (OOM-killed, the last log lines). Must not raise for platform errors.
        """

    async def kill(self, deployment: Deployment, grace_seconds: float) -> None:
        """Stop the deployment: politely, then by force after ``grace_seconds``; harmless if it already ended."""

    async def kill_stored(self, run_id: str, data: dict[str, Any], grace_seconds: float) -> str | None:
        """Stop a deployment of run ``run_id`` known only by what its Submitted state stored (``data``): one this
        agent's identity made before a restart. Only when the deployment is still there and provably that run's.

        Returns:
            What was stopped, for the Cancelled message; None when nothing of it is here to stop.
        """

    async def recover(self) -> list[Recovered]:
        """The deployments this agent's name made before a restart that the platform still holds (found by
        :meth:`open`). The agent adopts those whose run is still its own (inspects them to their end, cancels them)
        and kills the rest. A platform whose deployments cannot be watched by a new process returns [].
        """

    def detach(self, deployment: Deployment) -> None:
        """The agent exits while ``deployment`` still runs (``--max-polls``, fatal error): let it go on alone."""

    def forget(self, deployment: Deployment) -> None:
        """Stop watching a recovered deployment this agent neither adopts nor kills (another agent's); touch
        nothing of it."""

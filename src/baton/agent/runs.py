"""What an agent knows about the runs it holds: claimed, deploying, deployed, ended.

The registry is the agent's single source of truth for its concurrency limit (a run holds a slot from its claim
until its deployment ends) and for what the heartbeat reports.

Usage::

    registry = RunRegistry(limit=4)
    run = registry.add(claimed)
    run.phase = Phase.DEPLOYED
    registry.free_slots()
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from baton.schemas.responses import ClaimedRun

# Without --limit, claim at most this many runs per call (the server accepts up to 100).
DEFAULT_CLAIM_BATCH = 10
MAX_CLAIM_BATCH = 100


@dataclass
class Deployment:
    """What a driver's ``deploy`` returns: how the Submitted state identifies the deployment, and its handle.

    Args:
        message: the Submitted state's message, e.g. ``"PID: 1234"``.
        data: the Submitted state's data, e.g. ``{"pid": 1234}``.
        handle: the driver's own object (a ``Popen``, a container id, a job name); the base never looks at it.
    """

    message: str
    data: dict[str, Any] = field(default_factory=dict)
    handle: Any = None


@dataclass(frozen=True)
class Ended:
    """What :meth:`Agent.inspect` may return for a deployment that has ended, when an exit code is not all.

    Args:
        exit_code: the exit code; None when it cannot be known (a container removed from outside).
        message: why it ended, for people (e.g. "OOM-killed", the last log lines); the heartbeat passes it on and
            the server appends it to the Failed message of a run that ended without a final state.
    """

    exit_code: int | None
    message: str | None = None


class Phase(StrEnum):
    CLAIMED = "claimed"  # Pending on the server, not deployed yet
    DEPLOYED = "deployed"  # infrastructure exists; Submitted may not be confirmed yet
    KILLING = "killing"  # the agent is stopping it and will set the final state itself
    ENDED = "ended"  # infrastructure gone; the heartbeat still has to report the exit code


@dataclass
class ActiveRun:
    claimed: ClaimedRun
    phase: Phase = Phase.CLAIMED
    deployment: Deployment | None = None
    deploy_task: asyncio.Task[Deployment] | None = None
    submitted: bool = False  # the server accepted Submitted: from now on the heartbeat reports it
    cancel_requested: bool = False
    exit_code: int | None = None
    end_message: str | None = None  # see Ended.message
    # A later claim of the same run replaced this one (see Agent._supersede): the run's state belongs to that
    # claim now, so this one only stops what it deployed and never sets a state.
    superseded: bool = False
    # The run's limit (timeouts.py) and when its deployment started, on the agent's clock.
    timeout_seconds: int | None = None
    deployed_at: float | None = None

    @property
    def id(self) -> str:
        return self.claimed.flow_run.id

    @property
    def name(self) -> str:
        return self.claimed.flow_run.name

    @property
    def holds_slot(self) -> bool:
        return self.phase is not Phase.ENDED


class RunRegistry:
    """The agent's runs by id, and the concurrency limit they count against."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._runs: dict[str, ActiveRun] = {}

    def __len__(self) -> int:
        return len(self._runs)

    def __contains__(self, run_id: object) -> bool:
        return run_id in self._runs

    def add(self, claimed: ClaimedRun, timeout_seconds: int | None = None) -> ActiveRun:
        run = ActiveRun(claimed, timeout_seconds=timeout_seconds)
        self._runs[run.id] = run
        return run

    def get(self, run_id: str) -> ActiveRun | None:
        return self._runs.get(run_id)

    def remove(self, run: ActiveRun) -> None:
        """Drop ``run``, but not another entry that has replaced it under the same id since."""
        if self._runs.get(run.id) is run:
            del self._runs[run.id]

    def all(self) -> list[ActiveRun]:
        return list(self._runs.values())

    def in_phase(self, *phases: Phase) -> list[ActiveRun]:
        return [run for run in self._runs.values() if run.phase in phases]

    def busy_slots(self) -> int:
        return sum(1 for run in self._runs.values() if run.holds_slot)

    def free_slots(self) -> int:
        """How many runs the next claim may ask for: 0 when every ``--limit`` slot is taken."""
        if self.limit is None:
            return DEFAULT_CLAIM_BATCH
        return max(0, min(MAX_CLAIM_BATCH, self.limit - self.busy_slots()))

    def heartbeat_report(self) -> list[dict[str, Any]]:
        """The deployments the server should hear about: live Submitted ones and ended ones not yet reported.

        Runs the agent is killing are left out: the agent sets their final state itself, and an early "dead,
        exit 143" would make the server mark them Failed first.
        """
        report: list[dict[str, Any]] = []
        for run in self._runs.values():
            if not run.submitted:
                continue
            if run.phase is Phase.DEPLOYED:
                report.append({"flow_run_id": run.id, "alive": True, "exit_code": None})
            elif run.phase is Phase.ENDED:
                item: dict[str, Any] = {"flow_run_id": run.id, "alive": False, "exit_code": run.exit_code}
                if run.end_message:
                    item["message"] = run.end_message
                report.append(item)
        return report

"""What an agent knows about the runs it holds: claimed, deploying, deployed, ended.

The registry is the agent's single source of truth for its concurrency limit (a run holds a slot from its claim
until its deployment ends) and for what the heartbeat reports.

Usage::

    registry = RunRegistry(limit=4)
    run = registry.add(claimed)
    run.deployed(deployment, at=clock())
    registry.free_slots()
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from baton.agent.driver import Deployment, Ended
from baton.schemas.responses import ClaimedRun

# With no limit (--limit 0, or a platform without a default), claim at most this many runs per call (the server
# accepts up to 100).
DEFAULT_CLAIM_BATCH = 10
MAX_CLAIM_BATCH = 100


class Phase(StrEnum):
    CLAIMED = "claimed"  # Pending on the server, not deployed yet
    DEPLOYED = "deployed"  # infrastructure exists; Submitted may not be confirmed yet
    KILLING = "killing"  # the agent is stopping it and will set the final state itself
    ENDED = "ended"  # infrastructure gone; the heartbeat still has to report the exit code


# The moves a run's phase may make; any other is a bug in the agent (InvalidTransition).
_MOVES = {
    Phase.CLAIMED: {Phase.DEPLOYED, Phase.KILLING},
    Phase.DEPLOYED: {Phase.KILLING, Phase.ENDED},
    Phase.ENDED: {Phase.KILLING},  # a cancel or cold stop of a run whose end is not reported yet: harmless
    Phase.KILLING: set(),
}


class InvalidTransition(AssertionError):
    """An agent bug: a run was moved to a phase it cannot reach from where it is."""


@dataclass
class ActiveRun:
    """One claimed run. Its phase and flags change only through the methods below, each one named transition."""

    claimed: ClaimedRun
    # The run's limit (timeouts.py).
    timeout_seconds: int | None = None
    phase: Phase = field(default=Phase.CLAIMED, init=False)
    deployment: Deployment | None = field(default=None, init=False)
    deploy_task: asyncio.Task[Deployment] | None = field(default=None, init=False)
    # When its deployment started, on the agent's clock.
    deployed_at: float | None = field(default=None, init=False)
    submitted: bool = field(default=False, init=False)  # the server accepted Submitted: the heartbeat reports it
    cancel_requested: bool = field(default=False, init=False)
    exit_code: int | None = field(default=None, init=False)
    end_message: str | None = field(default=None, init=False)  # see Ended.message
    # A later claim of the same run replaced this one (lifecycle.py, _supersede): the run's state belongs to that
    # claim now, so this one only stops what it deployed and never sets a state.
    superseded: bool = field(default=False, init=False)

    @property
    def attempt(self) -> int:
        return self.claimed.flow_run.attempt

    @property
    def id(self) -> str:
        return self.claimed.flow_run.id

    @property
    def name(self) -> str:
        return self.claimed.flow_run.name

    @property
    def holds_slot(self) -> bool:
        return self.phase is not Phase.ENDED

    def _move(self, to: Phase) -> None:
        if to not in _MOVES[self.phase]:
            raise InvalidTransition(f"run {self.id}: {self.phase.value} -> {to.value}")
        self.phase = to

    def deployed(self, deployment: Deployment, at: float | None) -> None:
        """Its deploy returned ``deployment`` (at ``at`` on the agent's clock; None: not timed)."""
        self._move(Phase.DEPLOYED)
        self.deployment, self.deployed_at = deployment, at

    def confirm_submitted(self) -> None:
        """The server accepted Submitted: from now on the heartbeat reports the deployment."""
        if self.deployment is None:
            raise InvalidTransition(f"run {self.id}: Submitted with nothing deployed")
        self.submitted = True

    def ended(self, result: Ended) -> None:
        """Its deployment ended on its own; the heartbeat reports the exit code."""
        self._move(Phase.ENDED)
        self.exit_code, self.end_message = result.exit_code, result.message

    def killing(self) -> None:
        """The agent is stopping it, and sets its final state itself (the heartbeat leaves it out)."""
        if self.phase is not Phase.KILLING:
            self._move(Phase.KILLING)

    def request_cancel(self) -> None:
        """The server wants it cancelled; a deploy under way is stopped when it returns."""
        self.cancel_requested = True

    def supersede(self) -> None:
        """A newer claim of the same run replaced this one: never set a state for it again."""
        self.superseded = True


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
                report.append({"flow_run_id": run.id, "alive": True, "exit_code": None, "attempt": run.attempt})
            elif run.phase is Phase.ENDED:
                item: dict[str, Any] = {
                    "flow_run_id": run.id,
                    "alive": False,
                    "exit_code": run.exit_code,
                    "attempt": run.attempt,
                }
                if run.end_message:
                    item["message"] = run.end_message
                report.append(item)
        return report

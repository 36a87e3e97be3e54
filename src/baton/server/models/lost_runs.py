"""Deployed runs that nobody watches any more, and what becomes of them (docs/design.md §7 "Recovery").

A run in Submitted, Running or Cancelling is *lost* when nothing has vouched for it for
``run_heartbeat_timeout_seconds``. Two things vouch for a run, each setting its ``heartbeat_at``: its flow-run
process (``POST /api/flow_runs/{id}/heartbeat``, and Submitted itself), and its agent, by listing the deployment
alive in its own heartbeat. So a live flow-run process whose agent died finishes on its own, and a live agent
reports the deaths of the deployments it knows (DESIGN.md §5); a run that neither mentions — both died, or the
agent was restarted and does not know the old deployment — is lost. A lost run then becomes:

- Cancelling -> Cancelled: cancellation was asked for, and nothing is left running.
- Submitted -> Scheduled: the process never reported Running, so no user code ran; another agent takes it.
- Running -> Failed, or -> Scheduled when ``reschedule_running`` (user code may have had effects: re-running it is
  the user's call).

Going back to the queue counts as a lease return; past ``max_returns`` the run is Failed instead, so a run that
kills every host it lands on cannot bounce forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from baton.schemas.states import CLAIMABLE_STATES, DEPLOYED_STATES, StateName
from baton.server.database.orm import Agent, FlowRun, utcnow
from baton.server.models.claims import requeue_or_fail
from baton.server.models.errors import StaleState
from baton.server.models.flow_runs import transition
from baton.server.models.flows import PREFECT1_KIND

_DEPLOYED = [state.value for state in DEPLOYED_STATES]
# How long a run of a Prefect 1 flow may be silent: four beats of its flow runner (``cloud.heartbeat_interval``).
PREFECT1_SILENCE_SECONDS = 120.0


@dataclass(frozen=True)
class RecoveryPolicy:
    run_heartbeat_timeout_seconds: float
    reschedule_running: bool
    max_returns: int


@dataclass
class RecoveryOutcome:
    requeued: list[FlowRun] = field(default_factory=list)
    failed: list[FlowRun] = field(default_factory=list)
    cancelled: list[FlowRun] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.requeued) + len(self.failed) + len(self.cancelled)


def _seconds(moment: datetime | None, now: datetime) -> str:
    return "ever" if moment is None else f"{(now - moment).total_seconds():.0f}s"


def _silence(run: FlowRun, agent: Agent | None, now: datetime) -> str:
    seen = (
        "its agent is gone" if agent is None else f"agent {agent.name} last seen {_seconds(agent.last_seen, now)} ago"
    )
    return (
        f"lost: no sign of life from its flow-run process or its agent for {_seconds(run.heartbeat_at, now)} ({seen})"
    )


def find_lost_runs(
    session: Session, policy: RecoveryPolicy, batch: int, now: datetime
) -> list[tuple[FlowRun, Agent | None]]:
    cutoff = now - timedelta(seconds=policy.run_heartbeat_timeout_seconds)
    # Prefect 1's flow runner beats every 30 s and its agents vouch for nothing: its runs get PREFECT1_SILENCE.
    prefect1_cutoff = now - timedelta(seconds=max(policy.run_heartbeat_timeout_seconds, PREFECT1_SILENCE_SECONDS))
    query = (
        select(FlowRun, Agent)
        .outerjoin(Agent, Agent.id == FlowRun.agent_id)
        .where(
            FlowRun.state.in_(_DEPLOYED),
            or_(
                FlowRun.heartbeat_at.is_(None),
                FlowRun.heartbeat_at < prefect1_cutoff,
                and_(FlowRun.heartbeat_at < cutoff, FlowRun.kind != PREFECT1_KIND),
            ),
        )
        .order_by(FlowRun.heartbeat_at)
        .limit(batch)
    )
    if session.get_bind().dialect.name == "postgresql":
        # Two replicas' recovery services then split the work instead of racing for the same rows.
        query = query.with_for_update(skip_locked=True, of=FlowRun)
    return [(run, agent) for run, agent in session.execute(query)]


def _recover(session: Session, run: FlowRun, why: str, policy: RecoveryPolicy, outcome: RecoveryOutcome) -> None:
    if run.state == StateName.CANCELLING:
        transition(session, run, StateName.CANCELLED, f"cancelled; {why}")
        outcome.cancelled.append(run)
    elif run.state == StateName.SUBMITTED or policy.reschedule_running:
        most = policy.max_returns
        requeued = requeue_or_fail(
            session,
            run,
            most,
            lambda returns: f"{why}; back in the queue (return {returns}/{most})",
            lambda returns: f"{why}; it was put back in the queue {returns - 1} times already: giving up",
        )
        (outcome.requeued if requeued else outcome.failed).append(run)
    else:
        hint = "it may have died with its host (server.reschedule_lost_runs = true requeues such runs instead)"
        transition(session, run, StateName.FAILED, f"{why}; {hint}")
        (outcome.requeued if run.state in CLAIMABLE_STATES else outcome.failed).append(run)


def recover_lost_runs(
    session: Session, policy: RecoveryPolicy, batch: int = 500, now: datetime | None = None
) -> RecoveryOutcome:
    """End or requeue up to ``batch`` lost runs in the caller's transaction; silence is measured up to ``now``
    (the wall clock; tests pass a later one instead of waiting)."""
    now = now or utcnow()
    outcome = RecoveryOutcome()
    for run, agent in find_lost_runs(session, policy, batch, now):
        try:
            with session.begin_nested():
                _recover(session, run, _silence(run, agent, now), policy, outcome)
        except StaleState:
            continue  # the run changed state meanwhile: what it reported wins
    return outcome

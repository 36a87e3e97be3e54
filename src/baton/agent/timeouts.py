"""Flow-run timeouts: a run's limit is the shorter of its flow's ``timeout_seconds`` and the agent's
``--run-timeout``; the watch loop kills a deployment that has run longer and fails its run "timed out after N s".

The rule is the agent's, not the driver's, so every agent type (local, Docker...) enforces it the same way, through
its own ``kill``. It counts from the moment the deployment started (the deploy returned), on the agent's clock.

Usage::

    limit = effective_timeout(flow_timeout=60, agent_timeout=30)   # 30
    if overdue(run, now=clock()) is not None: ...
"""

from __future__ import annotations

from baton.agent.runs import ActiveRun, Phase


def effective_timeout(flow_timeout: int | None, agent_timeout: int | None) -> int | None:
    """The shorter of the two limits that are set; None when neither is."""
    limits = [limit for limit in (flow_timeout, agent_timeout) if limit is not None]
    return min(limits) if limits else None


def timed_out_message(limit: int) -> str:
    return f"timed out after {limit} s"


def overdue(run: ActiveRun, now: float) -> int | None:
    """``run``'s limit when it has run past it and the agent should kill it now; else None.

    Only a run whose Submitted went through is timed out: before that its state belongs to the launch task, which
    times it out on a later tick once Submitted is confirmed.
    """
    limit = run.timeout_seconds
    if limit is None or run.phase is not Phase.DEPLOYED or not run.submitted or run.deployed_at is None:
        return None
    return limit if now - run.deployed_at >= limit else None

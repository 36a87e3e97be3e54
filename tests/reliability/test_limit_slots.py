"""Concurrency limits with real processes.

- A flow limited to one run at a time, with real local agents and flow-run processes SIGKILLed: every end frees
  the slot (a killed flow process, a killed agent and its process, a claim whose claimer died), no slot leaks, the
  remaining runs get it and succeed, and no two runs ever held the slot at once (read from their state histories).
- Two replicas on one PostgreSQL and six agent processes claiming through both: a flow limited to 2 never has
  more than 2 runs holding slots, and every run goes through.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from baton.agent.testing import read_deployments, spawn_agent_process
from baton.schemas.responses import FlowRunRead
from baton.schemas.states import FINAL_STATES
from support import ServerProcess, clean_env, register_source_flow, wait_for

from .conftest import StartAgent
from .test_agent_kill import CLAIM_AND_HANG, SLEEPY_SOURCE, wait_for_state

pytestmark = pytest.mark.integration

_HOLDING = {"Pending", "Submitted", "Running", "Cancelling"}


def _slot_intervals(run: FlowRunRead) -> list[tuple[datetime, datetime | None]]:
    """When the run held a slot: from each Pending to the next state that holds none (None: holds it still)."""
    intervals: list[tuple[datetime, datetime | None]] = []
    start: datetime | None = None
    for state in run.states:
        if state.name in _HOLDING and start is None:
            start = state.timestamp
        elif state.name not in _HOLDING and start is not None:
            intervals.append((start, state.timestamp))
            start = None
    if start is not None:
        intervals.append((start, None))
    return intervals


def _claim_and_die(server: ServerProcess) -> str:
    """Claim the next run as an agent would, in a process SIGKILLed before it deploys it; the run's id."""
    with subprocess.Popen(
        [sys.executable, "-c", CLAIM_AND_HANG, server.url, server.admin_key, "doomed"],
        env=server.env(),
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        run_id = process.stdout.readline().strip()
        process.kill()
    return run_id


def _pid(run: FlowRunRead) -> int:
    submitted = [state for state in run.states if state.name == "Submitted"][-1]
    assert submitted.data is not None
    return int(submitted.data["pid"])


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def test_no_slot_leaks_when_agents_and_flow_processes_are_killed(
    start_server: Callable[..., ServerProcess], start_agent: StartAgent, database_url: str
) -> None:
    # Given a flow limited to one concurrent run, four runs (two that sleep, two quick ones) and one agent, on a
    # server with short leases and a short heartbeat timeout
    server = start_server(
        BATON__SERVER__DATABASE_URL=database_url,
        BATON__SERVER__CLAIM_LEASE_SECONDS="2",
        BATON__SERVER__RUN_HEARTBEAT_TIMEOUT_SECONDS="3",
        BATON__SERVER__SERVICES_INTERVAL_SECONDS="0.2",
        BATON__SERVER__OUTAGE_GRACE_MARGIN_SECONDS="0",
        BATON__SERVER__CLAIM_RECHECK_SECONDS="0.5",
    )
    client = server.client()
    schema = {"type": "object", "properties": {"seconds": {"type": "number"}}}
    register_source_flow(
        client,
        "sleepy",
        entrypoint="sleepy",
        source=SLEEPY_SOURCE,
        parameters_schema=schema,
        tasks=[],
        max_concurrent_runs=1,
    )
    sleeps = [120.0, 120.0, 0.1, 0.1]
    runs = [client.create_flow_run(flow_name="sleepy", parameters={"seconds": s}).id for s in sleeps]
    first_agent = start_agent(server, BATON__AGENT__HEARTBEAT_INTERVAL_SECONDS="1")

    # When the first run's flow process is SIGKILLed: its agent reports the exit code, the run fails
    running = wait_for_state(client, runs[0], {"Running"})
    assert [client.get_flow_run(run).state for run in runs[1:]] == ["Scheduled"] * 3
    _kill(_pid(running))
    assert wait_for_state(client, runs[0], set(FINAL_STATES)).state == "Failed"

    # ... the second run gets the slot; then its agent and its flow process are both SIGKILLed: the run is lost
    second = wait_for_state(client, runs[1], {"Running"})
    first_agent.stop(signal.SIGKILL)
    _kill(_pid(second))
    lost = wait_for_state(client, runs[1], set(FINAL_STATES))
    assert lost.state == "Failed" and "lost" in (lost.state_message or ""), lost.state_message

    # ... the third run is claimed by an agent that dies before deploying it: its lease expires
    assert _claim_and_die(server) == runs[2]
    start_agent(server, BATON__AGENT__HEARTBEAT_INTERVAL_SECONDS="1")

    # Then the remaining runs get the slot in turn and succeed
    finals = [wait_for_state(client, run, set(FINAL_STATES), timeout=60) for run in runs]
    assert [run.state for run in finals] == ["Failed", "Failed", "Success", "Success"], [
        run.state_message for run in finals
    ]
    assert "lease expired" in " ".join(state.message or "" for state in finals[2].states)
    # ... and no two runs ever held the slot at the same time
    intervals = sorted(interval for run in finals for interval in _slot_intervals(run))
    assert all(end is not None for _start, end in intervals)
    for (_start, end), (next_start, _end) in itertools.pairwise(intervals):
        assert end is not None and end <= next_start, intervals
    # ... and nothing holds a slot now: a new run is claimed and runs at once
    last = client.create_flow_run(flow_name="sleepy", parameters={"seconds": 0.1}).id
    assert wait_for_state(client, last, set(FINAL_STATES)).state == "Success"


def _most_at_once(runs: list[FlowRunRead]) -> int:
    """The most runs that held a slot at the same moment, from their state histories (an end before a start at
    the same timestamp)."""
    events = sorted(
        (moment, delta)
        for run in runs
        for start, end in _slot_intervals(run)
        for moment, delta in ((start, 1), (end, -1))
        if moment is not None
    )
    most = held = 0
    for _moment, delta in events:
        held += delta
        most = max(most, held)
    return most


@pytest.mark.timeout(300)
def test_two_replicas_and_many_agents_never_exceed_a_flow_limit(tmp_path: Path, postgres_cluster: Any) -> None:
    # Given two replicas on one PostgreSQL, a flow limited to 2 and 16 runs, and 6 agent processes spread over both
    database_url = postgres_cluster.create_database()
    servers = [
        ServerProcess(tmp_path / f"replica-{i}", BATON__SERVER__DATABASE_URL=database_url).start() for i in range(2)
    ]
    try:
        admin = servers[0].client()
        register_source_flow(admin, "etl", max_concurrent_runs=2)
        created = [admin.create_flow_run(flow_name="etl").id for _ in range(16)]
        key = admin.create_api_key("runner").key
        records = [str(tmp_path / f"agent-{i}.jsonl") for i in range(6)]
        agents = [
            spawn_agent_process(servers[i % 2].url, key, f"memory-{i}", record, env=clean_env(tmp_path / f"home-{i}"))
            for i, record in enumerate(records)
        ]
        try:
            # When they run everything
            def all_ended() -> bool:
                return all(run.state in FINAL_STATES for run in admin.list_flow_runs(limit=100))

            wait_for(all_ended, timeout=240, interval=0.5, what="all 16 runs to end")
        finally:
            for process in agents:
                process.send_signal(signal.SIGTERM)
            for process in agents:
                process.wait(timeout=60)

        # Then every run succeeded, was deployed once, and at most 2 ever held slots at once (and 2 did)
        runs = admin.list_flow_runs(limit=100, include=["states"])
        assert sorted(run.id for run in runs) == sorted(created)
        assert {run.state for run in runs} == {"Success"}
        assert all(len(who) == 1 for who in read_deployments(*records).values())
        assert _most_at_once(runs) == 2
    finally:
        for server in servers:
            server.stop()

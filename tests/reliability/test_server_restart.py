"""The API server is SIGKILLed and restarted (same port, same database) twice while agents run a load of flow runs.

Agents and flow-run processes must ride the outages out: they retry with backoff, so every run still ends Success,
each deployed exactly once, and every log line reaches the API exactly once (a log batch whose answer was lost is
sent again, and the server drops the lines it already has, by their keys). On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import re
import time
from collections import Counter

import pytest

from baton.client import Client
from baton.schemas.responses import FlowRunRead
from baton.schemas.states import FINAL_STATES
from integration.conftest import AgentProcess
from support import ServerProcess, register_source_flow

from .conftest import StartAgent, agent_health, wait_until_healthy

# A load test (`make chaos`); tests/reliability/test_agent_kill.py and test_replicas.py keep the restart and
# replica behaviours in `make test`.
pytestmark = [pytest.mark.integration, pytest.mark.load]

RUNS = 40
LINES = 20
AGENTS = 3
# Longer than an agent's heartbeat interval and its first backoff pauses: every loop meets the outage.
DOWN_SECONDS = 3.0

COUNTER_SOURCE = f"""
import time
from baton import flow, task

@task
def count(start: int, stop: int) -> int:
    for n in range(start, stop):
        print(f"line {{n:02d}}", flush=True)
        time.sleep(0.1)
    return stop

@flow
def counter(lines: int = {LINES}) -> None:
    count(0, lines // 2)
    count(lines // 2, lines)
"""
LINE = re.compile(r"^line (\d\d)$")

# Fast agent loops (the flow-run processes inherit the heartbeat interval from their agent's environment).
AGENT_ENV = {
    "BATON__AGENT__HEARTBEAT_INTERVAL_SECONDS": "1",
    "BATON__AGENT__POLL_WAIT_SECONDS": "5",
}


def test_runs_survive_two_server_crashes_with_no_run_or_log_line_lost_or_doubled(
    crash_server: ServerProcess, crash_admin: Client, start_agent: StartAgent
) -> None:
    # Given agents busy with a load of runs that each print numbered lines over two seconds
    register_source_flow(
        crash_admin,
        "counter",
        entrypoint="counter",
        source=COUNTER_SOURCE,
        parameters_schema={"type": "object", "properties": {"lines": {"type": "integer"}}},
        tasks=["count"],
    )
    agents = [start_agent(crash_server, "--limit", "4", **AGENT_ENV) for _ in range(AGENTS)]
    for agent in agents:
        wait_until_healthy(agent)
    run_ids = [crash_admin.create_flow_run(flow_name="counter").id for _ in range(RUNS)]

    # When the server is SIGKILLed while runs execute, stays down a while and comes back, twice
    _wait_for_states(crash_admin, run_ids, agents, at_least={"Running": 4})
    crash_server.restart(down_seconds=DOWN_SECONDS)
    # (Runs go in waves of 12: right after a wave ends, few may be Running; one is enough to crash under.)
    _wait_for_states(crash_admin, run_ids, agents, at_least={"Success": 12, "Running": 1})
    crash_server.restart(down_seconds=DOWN_SECONDS)

    # Then every run ends Success, deployed once, with each of its lines stored once
    runs = _wait_until_final(crash_admin, run_ids, agents, timeout=90)
    problems = [problem for run in runs for problem in _problems(crash_admin, run)]
    assert not problems, "\n".join(problems) + _agent_logs(agents)
    # And the agents are still there, and healthy
    for agent in agents:
        assert agent.process.poll() is None, f"agent exited with {agent.process.returncode}:\n{agent.log()}"
        wait_until_healthy(agent, timeout=15)
        assert agent_health(agent) == 200


def _states(admin: Client, run_ids: list[str]) -> Counter[str]:
    # One list request is one snapshot: forty GETs in a row on a loaded machine spanned several seconds, and runs
    # moved through Running between the first and the last, so "6 Running at once" was never seen.
    wanted = set(run_ids)
    runs = admin.list_flow_runs(flow_name="counter", limit=len(run_ids))
    return Counter(run.state for run in runs if run.id in wanted)


def _wait_for_states(
    admin: Client, run_ids: list[str], agents: list[AgentProcess], at_least: dict[str, int], timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        counts = _states(admin, run_ids)
        if all(counts[state] >= count for state, count in at_least.items()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"runs not in states {at_least} after {timeout}s: {dict(counts)}" + _agent_logs(agents)
            )
        time.sleep(0.05)


def _wait_until_final(
    admin: Client, run_ids: list[str], agents: list[AgentProcess], timeout: float
) -> list[FlowRunRead]:
    deadline = time.monotonic() + timeout
    while True:
        runs = [admin.get_flow_run(run_id) for run_id in run_ids]
        if all(run.state in FINAL_STATES for run in runs):
            return runs
        if time.monotonic() > deadline:
            counts = Counter(run.state for run in runs)
            raise AssertionError(f"runs not final after {timeout}s: {dict(counts)}" + _agent_logs(agents))
        time.sleep(0.2)


def _problems(admin: Client, run: FlowRunRead) -> list[str]:
    """What is wrong with a run that should have ended Success, deployed once, with each line logged once."""
    problems = []
    names = [state.name for state in run.states]
    if run.state != "Success":
        problems.append(f"run {run.id} ended {run.state}: {run.state_message} (states {names})")
    if names.count("Submitted") != 1 or names.count("Running") != 1:
        problems.append(f"run {run.id} was not deployed exactly once: states {names}")
    lines = Counter(int(match[1]) for log in _all_logs(admin, run.id) if (match := LINE.match(log)))
    if lines != Counter(range(LINES)):
        missing = sorted(set(range(LINES)) - set(lines))
        doubled = sorted(n for n, count in lines.items() if count > 1)
        problems.append(f"run {run.id}: log lines missing {missing}, stored more than once {doubled}")
    return problems


def _all_logs(admin: Client, run_id: str) -> list[str]:
    messages: list[str] = []
    offset = 0
    while True:
        page = admin.get_logs(run_id, offset=offset, limit=1000)
        if not page.logs:
            return messages
        messages += [log.message for log in page.logs]
        offset = page.next_offset


def _agent_logs(agents: list[AgentProcess]) -> str:
    return "".join(f"\n--- agent {n} log (tail) ---\n{agent.log()[-4000:]}" for n, agent in enumerate(agents))

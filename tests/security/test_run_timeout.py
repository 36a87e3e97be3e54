"""Issue 8, item 9: a flow run that goes on too long is killed and ends Failed "timed out after N s".

Found: nothing bounded a run; a flow that hung held its agent's slot (and its resources) for ever. Now
``@flow(timeout_seconds=N)`` and the agent's ``--run-timeout`` bound it: the agent's watch loop kills the deployment
through its driver's kill (so every agent type does the same) and fails the run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from security.local_support import agent_environment, register_flow_file, start_agent, stop_agent, wait_for_end
from support import ServerProcess, wait_for

SLEEPER = """
import time

from baton import flow


@flow(timeout_seconds=2)
def sleeper() -> None:
    time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie not reaped yet counts as gone: it runs no more code
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_flow_past_its_timeout_is_killed_and_fails(server: ServerProcess, tmp_path: Path) -> None:
    # Given a flow with timeout_seconds=2 that sleeps for 60 s, and a local agent
    admin = server.client()
    name = register_flow_file(admin, tmp_path / "sleeper.py", SLEEPER)
    assert admin.list_flows(name)[0].timeout_seconds == 2
    runner_key = admin.create_api_key("runner", "timeout-agent").key
    env = agent_environment(tmp_path, server.url, BATON__API__KEY=runner_key)
    agent = start_agent(sys.executable, ["--name", "timeout-agent"], env, tmp_path / "agent.log")
    try:
        # When a run of it starts
        run = admin.create_flow_run(flow_name=name)
        started = time.monotonic()
        running = wait_for(
            lambda: (r := admin.get_flow_run(run.id)).state == "Running" and r,
            timeout=30,
            what=f"the run to be Running; agent log:\n{agent.log()}",
        )
        assert running.deployment is not None
        pid = running.deployment["pid"]

        # Then it ends Failed "timed out after 2 s", about 2 s after it started, and its process is gone
        ended = wait_for_end(server, run.id, agent, timeout=30)
        elapsed = time.monotonic() - started
        assert (ended.state, ended.state_message) == ("Failed", "timed out after 2 s")
        assert 2 <= elapsed < 20
        wait_for(lambda: _gone(pid), timeout=15, what=f"process {pid} to be gone")
    finally:
        stop_agent(agent)

"""Server CPU of one run's whole life over HTTP: what the server spends per run, without agents or processes.

Run with ``.venv/bin/python bench/run_life.py`` (``--runs 100``). Starts a real API server (SQLite) and plays, one run
at a time, the requests a run makes: create (user), claim and Submitted (the agent's runner key), then with the run
token the flow's read, Running, one task run created and ended, a batch of three log lines and Success (state
changes with ``Prefer: return=minimal``, as the engine and the agents send them). Prints the server process's CPU
per run and the wall time per run. Sequential, so the figure is the server's own cost, not queueing.

Issue 12 measured 55.5 ms per run before the hot statements were built once and 46.9 ms after (medians of 6
interleaved rounds of 100 runs, 2 cores).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import ServerProcess, register_source_flow

MINIMAL = {"Prefer": "return=minimal"}
LOG_LINE = {"level": 20, "message": "a line", "timestamp": "2026-12-04T00:00:00Z"}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class Life:
    """The clients of one run's life against ``server``."""

    def __init__(self, server: ServerProcess) -> None:
        self.url = server.url + "/api"
        admin = server.client()
        self.flow_id = register_source_flow(admin, "hello")
        runner_key = admin.create_api_key("runner", name="bench").key
        self.user = httpx.Client(base_url=self.url, headers=_bearer(server.admin_key))
        self.runner = httpx.Client(base_url=self.url, headers=_bearer(runner_key))
        agent = self.runner.post("/agents", json={"name": "bench", "type": "local", "labels": []})
        self.agent_id = agent.raise_for_status().json()["id"]

    def run_one(self) -> None:
        run_id = self.user.post("/flow_runs", json={"flow_id": self.flow_id}).raise_for_status().json()["id"]
        claim = self.runner.post(f"/agents/{self.agent_id}/claim", json={"limit": 1}).raise_for_status()
        token = claim.json()["runs"][0]["run_token"]
        self.runner.post(f"/flow_runs/{run_id}/state", json={"name": "Submitted"}, headers=MINIMAL).raise_for_status()
        with httpx.Client(base_url=self.url, headers=_bearer(token)) as engine:
            engine.get(f"/flow_runs/{run_id}/with_flow").raise_for_status()
            engine.post(f"/flow_runs/{run_id}/state", json={"name": "Running"}, headers=MINIMAL).raise_for_status()
            task = engine.post(f"/flow_runs/{run_id}/task_runs", json={"task_name": "t"}).raise_for_status()
            engine.post(f"/task_runs/{task.json()['id']}/state", json={"state": "Success"}).raise_for_status()
            engine.post(f"/flow_runs/{run_id}/logs", json={"logs": [LOG_LINE] * 3}).raise_for_status()
            engine.post(f"/flow_runs/{run_id}/state", json={"name": "Success"}, headers=MINIMAL).raise_for_status()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "home").start()
        try:
            assert server.process is not None
            life = Life(server)
            for _ in range(10):  # warm-up: first imports and the statement cache
                life.run_one()
            time.sleep(0.3)
            before, started = _cpu_seconds(server.process.pid), time.perf_counter()
            for _ in range(args.runs):
                life.run_one()
            cpu = _cpu_seconds(server.process.pid) - before
            wall = time.perf_counter() - started
        finally:
            server.stop()
    print(f"{args.runs} runs one at a time: create, claim, Submitted, its flow, Running, a task run, logs, Success")
    print(f"  server CPU per run {cpu / args.runs * 1000:6.1f} ms   wall per run {wall / args.runs * 1000:6.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Server CPU of one run's whole life over HTTP: what the server spends per run, without agents or processes.

Run with ``.venv/bin/python bench/run_life.py`` (``--runs 100``). Starts a real API server (SQLite) and plays, one run
at a time, the requests a run makes: create (user), claim and Submitted (the agent's runner key), then with the run
token its start (Running, and the run with its flow), one task run created and ended, and Success carrying three log
lines (state changes with ``Prefer: return=minimal``, as the engine and the agents send them): seven requests.
``--life nine`` plays the life of an engine before 2026-12-05 (the run with its flow, then Running; a log batch, then
Success); ``--life both`` plays the two in turn, interleaved. Prints the server process's CPU per run and the wall
time per run. Sequential, so the figure is the server's own cost, not queueing.

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

    def run_one(self, life: str = "seven") -> None:
        run_id = self.user.post("/flow_runs", json={"flow_id": self.flow_id}).raise_for_status().json()["id"]
        claim = self.runner.post(f"/agents/{self.agent_id}/claim", json={"limit": 1}).raise_for_status()
        token = claim.json()["runs"][0]["run_token"]
        self.runner.post(f"/flow_runs/{run_id}/state", json={"name": "Submitted"}, headers=MINIMAL).raise_for_status()
        with httpx.Client(base_url=self.url, headers=_bearer(token)) as engine:
            if life == "seven":
                engine.post(f"/flow_runs/{run_id}/start").raise_for_status()
            else:
                engine.get(f"/flow_runs/{run_id}/with_flow").raise_for_status()
                engine.post(f"/flow_runs/{run_id}/state", json={"name": "Running"}, headers=MINIMAL).raise_for_status()
            task = engine.post(f"/flow_runs/{run_id}/task_runs", json={"task_name": "t"}).raise_for_status()
            engine.post(f"/task_runs/{task.json()['id']}/state", json={"state": "Success"}).raise_for_status()
            success: dict[str, object] = {"name": "Success"}
            if life == "seven":
                success["logs"] = [LOG_LINE] * 3
            else:
                engine.post(f"/flow_runs/{run_id}/logs", json={"logs": [LOG_LINE] * 3}).raise_for_status()
            engine.post(f"/flow_runs/{run_id}/state", json=success, headers=MINIMAL).raise_for_status()


def _measure(server: ServerProcess, life: Life, kind: str, runs: int) -> tuple[float, float]:
    """Server CPU and wall seconds per run of ``runs`` lives of ``kind``."""
    assert server.process is not None
    time.sleep(0.3)
    before, started = _cpu_seconds(server.process.pid), time.perf_counter()
    for _ in range(runs):
        life.run_one(kind)
    return (_cpu_seconds(server.process.pid) - before) / runs, (time.perf_counter() - started) / runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--life", choices=["seven", "nine", "both"], default="seven")
    args = parser.parse_args()
    kinds = ["seven", "nine"] if args.life == "both" else [args.life]
    figures: dict[str, list[tuple[float, float]]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "home").start()
        try:
            life = Life(server)
            for kind in kinds:
                for _ in range(10):  # warm-up: first imports and the statement cache
                    life.run_one(kind)
            for _ in range(2 if len(kinds) > 1 else 1):  # interleaved rounds: the machine's drift hits both
                for kind in kinds:
                    figures[kind].append(_measure(server, life, kind, args.runs))
        finally:
            server.stop()
    titles = {
        "seven": "create, claim, Submitted, start, a task run, Success with its logs",
        "nine": "create, claim, Submitted, its flow, Running, a task run, logs, Success",
    }
    for kind, rounds in figures.items():
        print(f"{args.runs} runs one at a time ({kind} requests: {titles[kind]}), {len(rounds)} round(s):")
        cpu = " / ".join(f"{c * 1000:.1f}" for c, _ in rounds)
        wall = " / ".join(f"{w * 1000:.1f}" for _, w in rounds)
        print(f"  server CPU per run {cpu} ms   wall per run {wall} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

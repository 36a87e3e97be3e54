"""Dispatch latency with one idle agent: time from run creation to Submitted and to Running.

Run with ``make bench`` (or ``.venv/bin/python bench/dispatch.py --runs 50 --agent local``). Starts a real API
server and a real agent on 127.0.0.1 in a throwaway $BATON_HOME, creates runs one at a time (each waits for the
previous one to finish, so the agent is idle when a run is created) and reads the server's own state timestamps.
``--agent docker`` measures the Docker agent (containers on the host network, image ``baton:<version>`` built
from this checkout when missing); ``both`` (the default) measures one agent after the other.

Reference: a Prefect 1 agent polls every 10 s by default, so its creation -> Submitted averages ~5 s, worst ~10 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from baton.client import Client
from baton.schemas.states import FINAL_STATES
from support import HELLO_SOURCE, ServerProcess

PREFECT1_POLL_INTERVAL_SECONDS = 10.0
FIRST_LOOK_SECONDS = 0.3


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _state_time(run_states: list[tuple[str, datetime]], name: str) -> datetime:
    return next(ts for state, ts in run_states if state == name)


def _register(client: Client, name: str, run_config: dict[str, object]) -> None:
    client.register_flow(
        {
            "name": name,
            "entrypoint": "hello",
            "source": HELLO_SOURCE,
            "source_filename": "/bench/hello.py",
            "parameters_schema": {"type": "object", "properties": {"name": {"type": "string"}}},
            "run_config": run_config,
        }
    )


def _run_one(client: Client, flow_name: str, timeout: float = 60.0) -> tuple[float, float, str]:
    run = client.create_flow_run(flow_name=flow_name, parameters={"name": "bench"})
    deadline = time.monotonic() + timeout
    # The figures are the server's own timestamps: reading the run while it is dispatched would only compete with
    # the dispatch for the server (one read is ~2.5 ms of its CPU). A trivial run takes ~100 ms: look after that.
    time.sleep(FIRST_LOOK_SECONDS)
    while time.monotonic() < deadline:
        run = client.get_flow_run(run.id)
        if run.state in FINAL_STATES:
            break
        time.sleep(0.02)
    states = [(s.name, s.timestamp) for s in run.states]
    if run.state not in FINAL_STATES or "Running" not in {name for name, _ in states}:
        raise SystemExit(f"run {run.id} did not run: {[name for name, _ in states]} ({run.state_message})")
    submitted = (_state_time(states, "Submitted") - run.created).total_seconds()
    running = (_state_time(states, "Running") - run.created).total_seconds()
    return submitted, running, run.state


def _report(label: str, values: list[float]) -> None:
    print(
        f"  {label:<26} p50 {_percentile(values, 0.5) * 1000:8.1f} ms   p90 {_percentile(values, 0.9) * 1000:8.1f} ms"
        f"   max {max(values) * 1000:8.1f} ms"
    )


def _latencies(
    server: ServerProcess, agent_args: list[str], flow_name: str, runs: int, log: Path
) -> tuple[list[float], list[float], list[str]]:
    """Creation -> Submitted and creation -> Running of ``runs`` runs (seconds), and their final states."""
    with log.open("wb") as agent_log:
        agent = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", "agent", *agent_args],
            env=server.env(),
            stdout=subprocess.DEVNULL,
            stderr=agent_log,
        )
    try:
        client = server.client()
        _run_one(client, flow_name)  # warm-up: first imports fill the OS page cache
        submitted, running, outcomes = [], [], []
        for _ in range(runs):
            to_submitted, to_running, state = _run_one(client, flow_name)
            submitted.append(to_submitted)
            running.append(to_running)
            outcomes.append(state)
    finally:
        agent.terminate()
        agent.wait(60)
    return submitted, running, outcomes


def _measure(server: ServerProcess, agent_args: list[str], flow_name: str, runs: int, log: Path) -> None:
    submitted, running, outcomes = _latencies(server, agent_args, flow_name, runs, log)
    print(f"dispatch latency, one idle {agent_args[0]} agent, {runs} runs (all {set(outcomes)}):")
    _report("creation -> Submitted", submitted)
    _report("creation -> Running", running)
    ratio = (PREFECT1_POLL_INTERVAL_SECONDS / 2) / statistics.mean(submitted)
    print(f"  Prefect 1 reference (10 s poll): mean creation -> Submitted ~5000 ms; Baton is ~{ratio:.0f}x faster")


def _docker_image() -> str:
    from baton.images import connect, ensure_image, find_project_root

    client = connect()
    try:
        return ensure_image(client, find_project_root(Path(__file__).resolve().parent.parent), progress=print).tag
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--agent", choices=["local", "docker", "both"], default="both")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "home").start()
        try:
            if args.agent in ("local", "both"):
                _register(server.client(), "bench-local", {"type": "local"})
                local_args = ["local", "start", "--name", "bench-local", "--no-hostname-label"]
                _measure(server, local_args, "bench-local", args.runs, Path(tmp) / "local-agent.log")
            if args.agent in ("docker", "both"):
                _register(server.client(), "bench-docker", {"type": "docker", "image": _docker_image()})
                docker_args = ["docker", "start", "--name", "bench-docker", "--network", "host", "--no-pull"]
                _measure(server, docker_args, "bench-docker", args.runs, Path(tmp) / "docker-agent.log")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

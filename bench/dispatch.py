"""Dispatch latency with one idle agent: time from run creation to Submitted and to Running.

Run with ``make bench`` (or ``.venv/bin/python bench/dispatch.py --runs 50 --agent local``). Starts a real API
server and a real agent on 127.0.0.1 in a throwaway $BATON_HOME, creates runs one at a time (each waits for the
previous one to finish, so the agent is idle when a run is created) and reads the server's own state timestamps.
``--agent docker`` measures the Docker agent (containers on the host network, image ``baton:<version>`` built
from this checkout when missing); ``both`` (the default) measures one agent after the other.

``--agent prefect1`` measures Prefect 1.4.1's own local agent against the same server (issue 13: the GraphQL API),
its runs created with GraphQL's ``create_flow_run`` (the environment of scripts/prefect1/venv.sh); ``all`` measures
the three. An idle Prefect 1 agent polls its queue every 10 s (it backs off from 0.25 s to 10 s while the queue is
empty), so its creation -> Submitted averages ~5 s, worst ~10 s; Baton's agent long-polls and is woken at once.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from baton.client import Client
from baton.schemas.states import FINAL_STATES
from support import HELLO_SOURCE, ServerProcess

PREFECT1_POLL_INTERVAL_SECONDS = 10.0
# After this much quiet an idle Prefect 1 agent polls every 10 s (its backoff: 0.25, 0.5, 1, 2, 4, 8, 10 s).
IDLE_GAP_SECONDS = 20.0
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


def _run_one(
    client: Client, flow_name: str, timeout: float = 60.0, create: Callable[[], str] | None = None
) -> tuple[float, float, str]:
    if create is None:
        run_id = client.create_flow_run(flow_name=flow_name, parameters={"name": "bench"}).id
    else:
        run_id = create()
    run = client.get_flow_run(run_id)
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
        f"  {label:<34} p50 {_percentile(values, 0.5) * 1000:8.1f} ms   p90 {_percentile(values, 0.9) * 1000:8.1f} ms"
        f"   max {max(values) * 1000:8.1f} ms"
    )


def _latencies(
    server: ServerProcess,
    agent_args: list[str],
    flow_name: str,
    runs: int,
    log: Path,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    create: Callable[[], str] | None = None,
) -> tuple[list[float], list[float], list[str]]:
    """Creation -> Submitted and creation -> Running of ``runs`` runs (seconds), and their final states."""
    with log.open("wb") as agent_log:
        agent = subprocess.Popen(
            command or [sys.executable, "-m", "baton.cli", "agent", *agent_args],
            env=env or server.env(),
            stdout=subprocess.DEVNULL,
            stderr=agent_log,
        )
    try:
        client = server.client()
        _run_one(client, flow_name, create=create)  # warm-up: first imports fill the OS page cache
        submitted, running, outcomes = [], [], []
        for _ in range(runs):
            to_submitted, to_running, state = _run_one(client, flow_name, create=create)
            submitted.append(to_submitted)
            running.append(to_running)
            outcomes.append(state)
    finally:
        agent.terminate()
        agent.wait(60)
    return submitted, running, outcomes


def _measure(server: ServerProcess, agent_args: list[str], flow_name: str, runs: int, log: Path) -> float:
    """Prints the figures of one Baton agent; returns its mean creation -> Submitted (seconds)."""
    submitted, running, outcomes = _latencies(server, agent_args, flow_name, runs, log)
    print(f"dispatch latency, one idle {agent_args[0]} agent, {runs} runs (all {set(outcomes)}):")
    _report("creation -> Submitted", submitted)
    _report("creation -> Running", running)
    ratio = (PREFECT1_POLL_INTERVAL_SECONDS / 2) / statistics.mean(submitted)
    print(f"  Prefect 1 reference (10 s poll): mean creation -> Submitted ~5000 ms; Baton is ~{ratio:.0f}x faster")
    return statistics.mean(submitted)


PREFECT1_FLOW = """
from prefect import Flow, task
from prefect.run_configs import LocalRun
from prefect.storage import Local


@task
def hello():
    return "hello"


with Flow("bench-prefect1", run_config=LocalRun(labels=["bench"]),
          storage=Local(path=__file__, stored_as_script=True, add_default_labels=False)) as flow:
    hello()

if __name__ == "__main__":
    print(flow.register(project_name="bench", no_url=True))
"""


def _measure_prefect1(server: ServerProcess, runs: int, idle_runs: int, tmp: Path, baton_mean: float | None) -> None:
    """Prefect 1.4.1's local agent on the same server: the flow registered and its runs created over GraphQL;
    ``runs`` created as soon as the previous one ended (the agent polls fast right after work), then ``idle_runs``
    after :data:`IDLE_GAP_SECONDS` of quiet (its polls have backed off to every 10 s)."""
    venv = Path(__file__).resolve().parent.parent / ".cache" / "prefect1-venv"
    if not (venv / "bin" / "prefect").exists():
        raise SystemExit(f"no Prefect 1 environment at {venv}: make it with scripts/prefect1/venv.sh")
    home = tmp / "prefect1-home"
    home.mkdir()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "PREFECT__BACKEND": "cloud",
        "PREFECT__CLOUD__API": f"{server.url}/graphql",
        "PREFECT__CLOUD__API_KEY": server.admin_key,
    }
    script = home / "bench_flow.py"
    script.write_text(PREFECT1_FLOW)
    subprocess.run([str(venv / "bin" / "prefect"), "create", "project", "bench"], env=env, cwd=home, check=True)
    flow_id = subprocess.run(
        [str(venv / "bin" / "python"), str(script)], env=env, cwd=home, check=True, capture_output=True, text=True
    ).stdout.split()[-1]
    graphql = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {server.admin_key}"})
    mutation = "mutation($input: create_flow_run_input!) { create_flow_run(input: $input) { id } }"

    made = 0

    def create() -> str:
        nonlocal made
        made += 1
        if made > runs + 1:  # the warm-up, then ``runs`` at once, then the idle ones
            time.sleep(IDLE_GAP_SECONDS)
        answer = graphql.post("/graphql", json={"query": mutation, "variables": {"input": {"flow_id": flow_id}}})
        return str(answer.json()["data"]["create_flow_run"]["id"])

    agent = [str(venv / "bin" / "prefect"), "agent", "local", "start", "--label", "bench", "--no-hostname-label"]
    try:
        submitted, running, outcomes = _latencies(
            server, [], "bench-prefect1", runs + idle_runs, tmp / "prefect1-agent.log", agent, env, create
        )
    finally:
        graphql.close()
    print(f"dispatch latency, Prefect 1.4.1's local agent on Baton's GraphQL API ({set(outcomes)}):")
    busy, idle = submitted[:-idle_runs] if idle_runs else submitted, submitted[-idle_runs:] if idle_runs else []
    _report(f"busy: creation -> Submitted ({len(busy)})", busy)
    _report("busy: creation -> Running", running[: len(busy)])
    if idle:
        _report(f"idle: creation -> Submitted ({len(idle)})", idle)
        _report("idle: creation -> Running", running[len(busy) :])
    if baton_mean is not None:
        for label, values in (("just after a run", busy), (f"idle {IDLE_GAP_SECONDS:.0f} s", idle)):
            if values:
                ratio = statistics.mean(values) / baton_mean
                print(f"  {label}: Baton's agent (long poll) is {ratio:.0f}x faster to Submitted than Prefect 1's")


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
    parser.add_argument("--agent", choices=["local", "docker", "both", "prefect1", "all"], default="both")
    parser.add_argument("--prefect1-runs", type=int, default=10, help="Prefect 1 runs created one after another")
    parser.add_argument("--prefect1-idle-runs", type=int, default=3, help="Prefect 1 runs created after 20 s of quiet")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "home").start()
        try:
            baton_mean = None
            if args.agent in ("local", "both", "all", "prefect1"):
                _register(server.client(), "bench-local", {"type": "local"})
                local_args = ["local", "start", "--name", "bench-local", "--no-hostname-label"]
                baton_mean = _measure(server, local_args, "bench-local", args.runs, Path(tmp) / "local-agent.log")
            if args.agent in ("prefect1", "all"):
                _measure_prefect1(server, args.prefect1_runs, args.prefect1_idle_runs, Path(tmp), baton_mean)
            if args.agent in ("docker", "both", "all"):
                _register(server.client(), "bench-docker", {"type": "docker", "image": _docker_image()})
                docker_args = ["docker", "start", "--name", "bench-docker", "--network", "host", "--no-pull"]
                _measure(server, docker_args, "bench-docker", args.runs, Path(tmp) / "docker-agent.log")
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

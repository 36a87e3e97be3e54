"""Baton and Prefect 3 side by side: the same workloads on both in one go, one table with the ratio of each figure.

Run with ``make bench-peers`` (``BENCH_PEERS_ARGS="--runs 20 --latency-runs 5"`` for a quick check): it installs
Prefect (bench/peers/requirements.txt) into .cache/peers-venv when missing, then runs this with Baton's .venv. Both
systems get the same flow (a task printing a greeting with the run's parameter: tests/support.py's HELLO_SOURCE,
bench/peers/flow.py), a real process per run, one local agent or process worker, SQLite, all on 127.0.0.1. Prefect
sends nothing out: ``DO_NOT_TRACK=1``, ``PREFECT_SERVER_ANALYTICS_ENABLED=false``, no UI, and its Cloud URL is a
closed local port.

- Dispatch latency (bench/dispatch.py's): runs created one at a time, the agent or worker idle, creation ->
  Submitted (Prefect: its first Pending, which the worker sets when it takes the run) and creation -> Running, p50
  and p95, from each server's own state timestamps. Prefect's worker polls (PREFECT_WORKER_QUERY_SECONDS, 10 s by
  default): measured at 1 s and at its default. Baton's agent long-polls, there is no poll to set: measured once,
  compared with both.
- ``--runs`` runs released at once (bench/throughput.py's): created while no agent or worker runs, which then
  starts, with ``--limit`` and with no limit: runs/s from its start until all have ended, their final states, CPU
  per run (the server, the agent or worker and every flow-run process, read from /proc) and peak PSS above the
  server's before the start. At each poll Prefect's worker takes only as many runs as it has free slots, so with a
  limit its poll bounds its rate: it runs with its default poll, as a user gets it (``--prefect-poll`` to change).

The machine's other load shows in every figure: compare the ratios of one run rather than figures across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dispatch import _latencies, _percentile, _register
from throughput import Throughput, _descendants, _PeakMemory, _throughput, _tree_cpu_seconds, _tree_pss_bytes

import baton
from support import ServerProcess, free_port

BENCH = Path(__file__).resolve().parent
T = TypeVar("T")
PREFECT_FINAL = ["COMPLETED", "FAILED", "CRASHED", "CANCELLED"]
PAGE = 200  # Prefect's largest page (PREFECT_API_DEFAULT_LIMIT)
# Prefect's client retries these (its SQLite server answers 503 when the database is locked), 5 times, waiting
# Retry-After or 2**n s: the bench does the same, or it would fail where Prefect's own client carries on
PREFECT_RETRY_CODES = {408, 429, 502, 503}
PREFECT_RETRIES = 5


class Latency(NamedTuple):
    submitted: list[float]  # seconds from creation
    running: list[float]
    outcomes: list[str]


def _stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """SIGTERM ``process``'s group (a worker's flow-run processes are in it), then SIGKILL whatever is left: a
    Prefect worker can take long to stop, or not stop at all when its server went first."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value)


class Prefect:
    """A local Prefect server (SQLite in a throwaway PREFECT_HOME), its process workers and the few REST calls the
    bench needs, each as Prefect's own client makes it."""

    def __init__(self, python: Path, home: Path) -> None:
        self.bin = python.parent
        self.home = home
        self.api = f"http://127.0.0.1:{free_port()}/api"
        self.process: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.api, timeout=30)

    def env(self, **extra: str) -> dict[str, str]:
        drop = ("PREFECT_", "BATON", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(
            # The process worker starts each run as `python -m prefect.engine`, whichever `python` is first on PATH
            PATH=f"{self.bin}{os.pathsep}{env.get('PATH', os.defpath)}",
            HOME=str(self.home),
            PREFECT_HOME=str(self.home / ".prefect"),
            PREFECT_API_URL=self.api,
            DO_NOT_TRACK="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_UI_ENABLED="false",
            PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY="false",
            PREFECT_CLOUD_API_URL="http://127.0.0.1:9/api",  # the discard port: a stray call fails at once, locally
        )
        env.update(extra)
        return env

    def start(self, log: Path, timeout: float = 120.0) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        port = self.api.rsplit(":", 1)[1].split("/")[0]
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [str(self.bin / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Prefect's server exited with {self.process.returncode}: see {log}")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/health").status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"Prefect's server did not answer within {timeout:.0f} s: see {log}")

    def stop(self) -> None:
        self.http.close()
        if self.process is not None:
            _stop(self.process)

    def setup(self, names: list[str], flow_dir: Path, out: Path) -> tuple[str, dict[str, str]]:
        """A work pool and a deployment per name (bench/peers/prefect_side.py): Prefect's version, and the ids."""
        script = BENCH / "peers" / "prefect_side.py"
        subprocess.run(
            [str(self.bin / "python"), str(script), "--flow-dir", str(flow_dir), "--out", str(out), *names],
            env=self.env(),
            stdout=subprocess.DEVNULL,
            check=True,
        )
        answer = json.loads(out.read_text())
        return answer["prefect"], answer["deployments"]

    def worker(self, pool: str, limit: int, poll: float | None, log: Path) -> subprocess.Popen[bytes]:
        command = [str(self.bin / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
        if limit:
            command += ["--limit", str(limit)]
        extra = {"PREFECT_WORKER_QUERY_SECONDS": str(poll)} if poll else {}
        with log.open("ab") as out:
            return subprocess.Popen(
                command, env=self.env(**extra), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def _call(self, method: str, path: str, retries: int = PREFECT_RETRIES, **kwargs: Any) -> Any:
        """One API call, retried as Prefect's client retries it; its JSON answer."""
        for attempt in range(retries + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except (httpx.TimeoutException, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                if attempt == retries:
                    raise
                time.sleep(2**attempt)
                continue
            if response.status_code not in PREFECT_RETRY_CODES or attempt == retries:
                break
            retry_after = response.headers.get("Retry-After", "")
            time.sleep(float(retry_after) if retry_after.replace(".", "", 1).isdigit() else 2**attempt)
        response.raise_for_status()
        return response.json()

    def create_run(self, deployment_id: str) -> dict[str, Any]:
        # What Prefect's client sends for run_deployment(): a Scheduled state, due now
        body = {"parameters": {"name": "bench"}, "state": {"type": "SCHEDULED", "name": "Scheduled"}}
        return dict(self._call("POST", f"/deployments/{deployment_id}/create_flow_run", json=body))

    def run(self, run_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/flow_runs/{run_id}"))

    def states(self, run_id: str) -> list[tuple[str, datetime]]:
        """The run's state history: (type, server timestamp), oldest first."""
        states = self._call("GET", "/flow_run_states/", params={"flow_run_id": run_id})
        return sorted(((s["type"], _timestamp(s["timestamp"])) for s in states), key=lambda s: s[1])

    def ended_count(self, deployment_id: str, retries: int = PREFECT_RETRIES) -> int:
        """How many of the deployment's runs are in a final state: one count query, lighter on Prefect's server
        than Baton's bench poll (a list of the runs), so the bench's polls load Prefect no more than Baton."""
        body = {
            "deployments": {"id": {"any_": [deployment_id]}},
            "flow_runs": {"state": {"type": {"any_": PREFECT_FINAL}}},
        }
        return int(self._call("POST", "/flow_runs/count", retries, json=body))

    def final_states(self, deployment_id: str) -> dict[str, int]:
        """How many of the deployment's runs are in each final state, by name (Completed, Crashed...)."""
        counts: dict[str, int] = {}
        offset = 0
        while True:
            body = {"deployments": {"id": {"any_": [deployment_id]}}, "limit": PAGE, "offset": offset}
            page = self._call("POST", "/flow_runs/filter", json=body)
            for run in page:
                if run["state_type"] in PREFECT_FINAL:
                    counts[run["state_name"]] = counts.get(run["state_name"], 0) + 1
            if len(page) < PAGE:
                return counts
            offset += PAGE


def _prefect_run_one(prefect: Prefect, deployment_id: str, timeout: float = 180.0) -> tuple[float, float, str]:
    """bench/dispatch.py's _run_one on Prefect: one run, from creation to its end."""
    run = prefect.create_run(deployment_id)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = prefect.run(run["id"])
        if run["state_type"] in PREFECT_FINAL:
            break
        # The figures are the server's timestamps; the poll only decides when the next run is created. Baton's
        # bench polls every 20 ms; Prefect's server spends more per request, so it gets 100 ms to stay unloaded.
        time.sleep(0.1)
    states = prefect.states(run["id"])
    kinds = [kind for kind, _ in states]
    if run["state_type"] not in PREFECT_FINAL or "RUNNING" not in kinds:
        raise RuntimeError(f"Prefect run {run['id']} did not run: {kinds} ({run['state_name']})")
    created = _timestamp(run["created"])
    pending = next(ts for kind, ts in states if kind == "PENDING")
    running = next(ts for kind, ts in states if kind == "RUNNING")
    return (pending - created).total_seconds(), (running - created).total_seconds(), run["state_name"]


def _prefect_latencies(
    prefect: Prefect, pool: str, deployment_id: str, runs: int, poll: float | None, log: Path
) -> Latency:
    worker = prefect.worker(pool, 0, poll, log)
    try:
        _prefect_run_one(prefect, deployment_id)  # warm-up, as on Baton: waits for the worker and fills the caches
        measured = [_prefect_run_one(prefect, deployment_id) for _ in range(runs)]
    finally:
        _stop(worker)
    return Latency(*(list(column) for column in zip(*measured, strict=True)))


def _prefect_throughput(
    prefect: Prefect, pool: str, deployment_id: str, runs: int, limit: int, poll: float | None, log: Path
) -> Throughput:
    """bench/throughput.py's _throughput on Prefect: ``runs`` runs wait, one process worker starts."""
    for _ in range(runs):
        prefect.create_run(deployment_id)
    assert prefect.process is not None
    server_pid = prefect.process.pid
    # The server's tree, should it run anything in child processes
    baseline = _tree_pss_bytes(server_pid)
    server_cpu = _tree_cpu_seconds(server_pid)
    started = time.monotonic()
    worker = prefect.worker(pool, limit, poll, log)
    memory = _PeakMemory([server_pid, worker.pid])
    memory.start()
    try:
        # Prefect's runs take seconds each (up to ~8 s of CPU on a loaded 2-core machine), and with a limit its
        # worker takes new ones only at its polls
        deadline = started + max(600.0, runs * 12.0)
        ended = unanswered = polls = 0
        while time.monotonic() < deadline:
            try:
                polls += 1
                # No retries here: their waits would delay seeing the end; the next poll comes soon enough
                ended = prefect.ended_count(deployment_id, retries=0)
            except httpx.HTTPError:  # a server swamped by the runs' start-up: part of the figure, said in the table
                unanswered += 1
            if ended >= runs:
                break
            time.sleep(0.2)  # Prefect answers a locked database with an immediate 503: no faster retries either
        elapsed = time.monotonic() - started
        # Wait until the worker has reaped its flow-run processes: their CPU is its children's then
        settle = time.monotonic() + 30
        while len(_descendants(worker.pid)) > 1 and time.monotonic() < settle:
            time.sleep(0.1)
        worker_cpu = _tree_cpu_seconds(worker.pid)
        server_cpu = _tree_cpu_seconds(server_pid) - server_cpu
        # As on Baton: the bench's own polls are not the runs' cost; ten on the idle server are taken out
        before = _tree_cpu_seconds(server_pid)
        for _ in range(10):
            prefect.ended_count(deployment_id)
        server_cpu -= polls * (_tree_cpu_seconds(server_pid) - before) / 10
    finally:
        peak = memory.stop()
        _stop(worker)
    counts = prefect.final_states(deployment_id)
    return Throughput(elapsed, counts, unanswered, worker_cpu, server_cpu, peak, baseline)


class Results(NamedTuple):
    latency: Latency | None
    throughput: dict[int, Throughput | None]


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _attempt(label: str, errors: list[str], measure: Callable[[], T]) -> T | None:
    """One workload: its figures, or None and the reason in ``errors`` (the other workloads still run)."""
    _progress(label)
    try:
        return measure()
    except Exception as exc:  # any failure: reported under the table
        errors.append(f"{label}: {type(exc).__name__}: {exc}")
        _progress(f"{label} failed: {exc}")
        return None


def _baton(args: argparse.Namespace, tmp: Path, limits: list[int], errors: list[str]) -> Results:
    server = ServerProcess(tmp / "baton").start()
    try:
        _register(server.client(), "bench-local", {"type": "local"})
        agent_args = ["local", "start", "--name", "bench-local", "--no-hostname-label"]
        latency = _attempt(
            f"Baton: dispatch latency, {args.latency_runs} runs",
            errors,
            lambda: Latency(
                *_latencies(server, agent_args, "bench-local", args.latency_runs, args.logs / "baton-agent.log")
            ),
        )
        throughput = {
            limit: _attempt(
                f"Baton: {args.runs} runs at once, {_limit_label(limit)}",
                errors,
                lambda limit=limit: _throughput(server, args.runs, limit, args.logs / f"baton-agent-{limit}.log", []),
            )
            for limit in limits
        }
    finally:
        server.stop()
    return Results(latency, throughput)


def _prefect(
    args: argparse.Namespace, tmp: Path, limits: list[int], errors: list[str]
) -> tuple[str, dict[str, Latency | None], Results]:
    """Prefect's version, its latency by poll ("1 s", "default") and its throughput by limit."""
    prefect = Prefect(args.prefect_python, tmp / "prefect")
    # The deployment runs the flow from its directory: a copy, so nothing Prefect writes lands in the checkout
    flow_dir = tmp / "prefect-flow"
    flow_dir.mkdir()
    shutil.copy(BENCH / "peers" / "flow.py", flow_dir)
    polls: dict[str, float | None] = {"1 s": 1.0, "default": None}
    _progress("Prefect: server start, work pools and deployments")
    prefect.start(args.logs / "prefect-server.log")
    try:
        pools = {poll: f"latency-poll-{poll.replace(' ', '')}" for poll in polls}
        pools |= {str(limit): f"throughput-limit-{limit}" for limit in limits}
        version, deployments = prefect.setup(list(pools.values()), flow_dir, tmp / "prefect-deployments.json")
        latency = {
            poll: _attempt(
                f"Prefect: dispatch latency, {args.latency_runs} runs, worker poll {poll}",
                errors,
                lambda poll=poll: _prefect_latencies(
                    prefect,
                    pools[poll],
                    deployments[pools[poll]],
                    args.latency_runs,
                    polls[poll],
                    args.logs / f"prefect-worker-{pools[poll]}.log",
                ),
            )
            for poll in polls
        }
        throughput = {
            limit: _attempt(
                f"Prefect: {args.runs} runs at once, {_limit_label(limit)}",
                errors,
                lambda limit=limit: _prefect_throughput(
                    prefect,
                    pools[str(limit)],
                    deployments[pools[str(limit)]],
                    args.runs,
                    limit,
                    args.prefect_poll,
                    args.logs / f"prefect-worker-{limit}.log",
                ),
            )
            for limit in limits
        }
    finally:
        prefect.stop()
    return version, latency, Results(None, throughput)


def _limit_label(limit: int) -> str:
    return f"--limit {limit}" if limit else "no limit"


def _ratio(baton_figure: float | None, prefect_figure: float | None) -> str:
    if baton_figure is None or prefect_figure is None or baton_figure <= 0:
        return "-"
    ratio = prefect_figure / baton_figure
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"


def _cell(value: float | None, digits: int) -> str:
    return "failed" if value is None else f"{value:.{digits}f}"


def _states(counts: dict[str, int]) -> str:
    return ", ".join(f"{state} {n}" for state, n in sorted(counts.items())) or "none ended"


def _print_table(
    args: argparse.Namespace, version: str, baton_results: Results, latency: dict[str, Latency | None], prefect: Results
) -> None:
    print(
        f"\nBaton {baton.__version__} vs Prefect {version}: the same flow, one local agent / process worker, a process"
        f" per run, SQLite, {os.cpu_count()} cores"
    )
    print("ratio: Prefect's figure / Baton's (times: above 1 = Prefect slower; runs/s: below 1 = Prefect slower)\n")
    width = 38
    print(
        f"{'dispatch latency, ' + str(args.latency_runs) + ' runs one at a time':<{width}}"
        f"{'Baton':>9} {'Prefect poll 1 s':>17} {'ratio':>7} {'Prefect default poll':>21} {'ratio':>7}"
    )
    print(f"{'  (Baton long-polls: one figure)':<{width}}{'ms':>9} {'ms':>17} {'':>7} {'ms (10 s)':>21}")
    for label, column in (("Submitted", 0), ("Running", 1)):
        for name, fraction in (("p50", 0.5), ("p95", 0.95)):

            def figure(measured: Latency | None, column: int = column, fraction: float = fraction) -> float | None:
                return None if measured is None else _percentile(measured[column], fraction) * 1000

            mine, fast, default = figure(baton_results.latency), figure(latency["1 s"]), figure(latency["default"])
            print(
                f"{'  creation -> ' + label + ' ' + name:<{width}}{_cell(mine, 1):>9} {_cell(fast, 1):>17}"
                f" {_ratio(mine, fast):>7} {_cell(default, 1):>21} {_ratio(mine, default):>7}"
            )
    outcomes = [
        f"{who} {_states({s: m.outcomes.count(s) for s in set(m.outcomes)})}"
        for who, m in (
            ("Baton", baton_results.latency),
            ("Prefect 1 s", latency["1 s"]),
            ("default", latency["default"]),
        )
        if m is not None
    ]
    print(f"  final states: {'; '.join(outcomes)}")
    poll = f"poll {args.prefect_poll:g} s" if args.prefect_poll else "default poll"
    for limit, mine in baton_results.throughput.items():
        theirs = prefect.throughput[limit]
        print(
            f"\n{str(args.runs) + ' runs released at once, ' + _limit_label(limit):<{width}}"
            f"{'Baton':>9} {'Prefect (' + poll + ')':>21} {'ratio':>7}"
        )
        rows: list[tuple[str, Callable[[Throughput], float], int]] = [
            ("  runs/s to all ended", lambda t: t.ended / t.elapsed, 2),
            ("  seconds to all ended", lambda t: t.elapsed, 1),
            ("  CPU per run, all processes (ms)", lambda t: t.cpu_per_run * 1000, 0),
            ("    of which the server's (ms)", lambda t: t.server_cpu / max(t.ended, 1) * 1000, 0),
            ("  peak PSS above baseline (MiB)", lambda t: (t.peak - t.baseline) / 2**20, 0),
        ]
        for label, read, digits in rows:
            a = None if mine is None else read(mine)
            b = None if theirs is None else read(theirs)
            print(f"{label:<{width}}{_cell(a, digits):>9} {_cell(b, digits):>21} {_ratio(a, b):>7}")
        ended = [
            f"{who} {_states(t.counts)}{f' ({t.unanswered} polls unanswered)' if t.unanswered else ''}"
            for who, t in (("Baton", mine), ("Prefect", theirs))
            if t is not None
        ]
        print(f"  ended of {args.runs}: {'; '.join(ended)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="runs released at once (default 200)")
    parser.add_argument("--latency-runs", type=int, default=20, help="runs one at a time for latency (default 20)")
    parser.add_argument("--limit", type=int, default=4, help="the agent's and the worker's limit (default 4)")
    parser.add_argument(
        "--prefect-python",
        type=Path,
        default=BENCH.parent / ".cache" / "peers-venv" / "bin" / "python",
        help="the Python of the virtual environment with Prefect (default .cache/peers-venv, as make installs it)",
    )
    parser.add_argument("--prefect-poll", type=float, help="the Prefect worker's poll for --runs (default its own)")
    parser.add_argument(
        "--logs",
        type=Path,
        default=BENCH.parent / ".cache" / "bench-peers-logs",
        help="the agents', workers' and Prefect server's logs, emptied first (default .cache/bench-peers-logs)",
    )
    args = parser.parse_args()
    if not (args.prefect_python.parent / "prefect").exists():
        parser.error(f"no Prefect next to {args.prefect_python}: run `make bench-peers`, which installs it")
    started = time.monotonic()
    limits = [args.limit, 0]
    errors: list[str] = []
    shutil.rmtree(args.logs, ignore_errors=True)
    args.logs.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="baton-bench-peers-") as name:
        tmp = Path(name)
        baton_results = _baton(args, tmp, limits, errors)
        version, latency, prefect_results = _prefect(args, tmp, limits, errors)
        _print_table(args, version, baton_results, latency, prefect_results)
        if errors:
            failures = "\n  ".join(errors)
            print(f"\nfailed (logs in {args.logs}):\n  {failures}")
    print(f"\n(whole bench {time.monotonic() - started:.0f} s; other load on this machine shows in every figure)")
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

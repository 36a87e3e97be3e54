"""Overhead per task of Baton's executors (issue 14), beside Prefect 3's task runners on the same workload.

Run with ``.venv/bin/python bench/tasks.py`` (``--tasks 1000``). The workload: one flow that maps a task that adds
one to a number over N numbers and sums the results. Baton's figures, per executor:

- **recorded**: the flow run's task runs recorded in a real API server on 127.0.0.1 (SQLite), as in a flow run:
  the map's children created Pending together (one request per 1,000), then each Running and Success, shipped in
  batches by the flow's process (``engine/state_batches.py``); the figure includes waiting for the last batch;
- **in-process**: the same flow called directly, nothing recorded (the SDK's and executor's own cost).

Prefect 3 (``make bench-peers`` makes its environment; ``prefect-dask`` for its Dask runner) records its task runs
in a ``prefect server start`` of its own on 127.0.0.1 (SQLite): its figures compare with Baton's recorded ones. One
difference to keep in mind: Prefect 3's task engine sends task-run states as events that its server records in the
background, so its flow does not wait for them to be stored; Baton's flow waits only for its last batch. Each
figure is wall time for the whole map divided by N, in ms per task; ratios are Prefect's over Baton's (above 1:
Baton is faster). The machine's other load shows in every figure: compare the ratios of one run rather than figures
across runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from baton import flow, task
from baton.client import Client
from baton.engine.reporter import ApiTaskRunReporter
from support import HELLO_SOURCE, ServerProcess, free_port, wait_for

EXECUTORS = ["sequential", "thread:8", "process:8", "dask"]
PREFECT_RUNNERS = "thread:8,process:8,dask"
PEERS_PYTHON = Path(__file__).resolve().parent.parent / ".cache" / "peers-venv" / "bin" / "python"


@task
def tiny(i: int) -> int:
    return i + 1


@flow
def mapped(n: int) -> int:
    return sum(future.result() for future in tiny.map(list(range(n))))


def _timed(n: int, spec: str, reporter: ApiTaskRunReporter | None = None) -> float:
    started = time.perf_counter()
    total = mapped.run({"n": n}, reporter, spec)
    if reporter is not None:
        reporter.flush()  # every state recorded, as the engine waits before the run's final state
    assert total == n * (n + 1) // 2, total
    return time.perf_counter() - started


def _recorded(server: ServerProcess, n: int, spec: str) -> float:
    client = Client(server.url, server.admin_key)
    try:
        run = client.create_flow_run(flow_name="bench-tasks", parameters={})
        return _timed(n, spec, ApiTaskRunReporter(client, run.id))
    finally:
        client.close()


def _prefect(n: int, runners: str, timeout: float) -> dict[str, float | None]:
    """Prefect's figures, its flow run against a ``prefect server start`` of its own on 127.0.0.1: its process and
    Dask runners' workers are other processes, which cannot reach an ephemeral API held by the flow's process
    ("Timed out while attempting to connect to ephemeral Prefect API server")."""
    if not PEERS_PYTHON.exists():
        print(f"  (no Prefect 3 environment at {PEERS_PYTHON}: make bench-peers makes it)")
        return {}
    env = {"DO_NOT_TRACK": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "WARNING"}
    with tempfile.TemporaryDirectory(prefix="bench-prefect-") as home:
        env["PREFECT_HOME"] = home
        env["PATH"] = "/usr/bin:/bin"
        port = free_port()
        server = subprocess.Popen(
            [str(PEERS_PYTHON.parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
            url = env["PREFECT_API_URL"]
            wait_for(lambda: server.poll() is not None or _healthy(url), timeout=180, what="Prefect's server")
            if server.poll() is not None:
                print(f"  Prefect's server exited at start-up with code {server.returncode}")
                return {}
            done = subprocess.run(
                [str(PEERS_PYTHON), str(Path(__file__).parent / "peers" / "tasks_prefect.py"), str(n), runners],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        finally:
            _stop(server)
    if done.returncode != 0:
        print(f"  Prefect 3 failed: {done.stderr[-2000:]}")
        return {}
    for line in done.stderr.splitlines():
        if line.startswith("Prefect's "):
            print(f"  {line}")
    figures: dict[str, float | None] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def _stop(server: subprocess.Popen[bytes]) -> None:
    """Prefect's server and what it started (its own session), politely then by force; gone already is fine."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)
        try:
            server.wait(30)
            return
        except subprocess.TimeoutExpired:
            continue


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--prefect-runners", default=PREFECT_RUNNERS, help="of thread:8, process:8, dask")
    parser.add_argument("--prefect-timeout", type=float, default=900.0)
    args = parser.parse_args()
    n = args.tasks
    mapped(2)  # warm-up: imports
    in_process = {}
    for spec in EXECUTORS:
        print(f"  in-process, {spec}...", file=sys.stderr, flush=True)
        in_process[spec] = _timed(n, spec)
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "home").start()
        try:
            server.client().register_flow(
                {"name": "bench-tasks", "entrypoint": "hello", "source": HELLO_SOURCE, "source_filename": "/b/h.py"}
            )
            recorded = {}
            for spec in EXECUTORS:
                print(f"  recorded, {spec}...", file=sys.stderr, flush=True)
                recorded[spec] = _recorded(server, n, spec)
        finally:
            server.stop()
    print("  Prefect 3...", file=sys.stderr, flush=True)
    prefect = _prefect(n, args.prefect_runners, args.prefect_timeout)
    print(f"{n} tiny mapped tasks, ms per task (wall time of the whole map / {n}):")
    print(f"  {'executor':<12} {'Baton in-process':>17} {'Baton recorded':>15} {'Prefect 3':>10} {'Prefect/Baton':>14}")
    names = {"sequential": "(none)", "thread:8": "ThreadPool(8)", "process:8": "ProcessPool(8)", "dask": "Dask"}
    for spec in EXECUTORS:
        theirs = prefect.get(spec)
        ratio = f"{theirs / recorded[spec]:.1f}x" if theirs else "-"
        shown = f"{theirs * 1000 / n:.2f}" if theirs else "-"
        print(
            f"  {spec:<12} {in_process[spec] * 1000 / n:>17.2f} {recorded[spec] * 1000 / n:>15.2f} {shown:>10}"
            f" {ratio:>14}   (Prefect: {names[spec]})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

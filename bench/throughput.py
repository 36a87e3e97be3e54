"""Throughput with real flow-run processes: N runs wait, one local agent starts, how fast do they all end?

Run with ``.venv/bin/python bench/throughput.py`` (``--runs 200 --limit 0 --limit 4`` by default). Starts a real API
server (SQLite) and, for each ``--limit`` (0: no limit), creates ``--runs`` runs of a trivial flow while no agent
runs, then starts one real local agent and times it from its start until every run has ended. Printed per limit:

- runs/s from the agent's start to the last run's end, and how many ended Success;
- CPU per run: the CPU time of the server, the agent and every flow-run process it started and reaped (read from
  /proc: the agent's tree, with what it and its warm process reaped), divided by the runs; other load on the
  machine does not count, nor the server's CPU for the bench's own polls (ten are timed afterwards and taken out);
- peak memory: the highest sum of PSS over the server, the agent and its live children, above the level before
  the agent started (sampled every 100 ms; PSS shares a page among the processes that map it).

Reference (issue 12, same 2-core machine): Prefect 3.9's process worker did 0.35-0.47 runs/s with a limit of 4,
~2.8 s of CPU per run, and 107 of 200 runs Crashed without a limit.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from dispatch import _register

from baton.client import Client
from baton.exceptions import ServerUnavailableError
from baton.schemas.states import FINAL_STATES
from support import ServerProcess

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PREFECT_RUNS_PER_SECOND = 0.41  # 0.35-0.47 with --limit 4, measured when issue 12 was filed
PREFECT_CPU_SECONDS_PER_RUN = 2.8
POLL_SECONDS = 1.0  # how often the bench looks whether every run has ended


def _cpu_seconds(pid: int, *, children: bool) -> float:
    """utime + stime of ``pid`` (+ cutime + cstime, its reaped children's, with ``children``), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the ")" closing the command name: field 0 is the state; utime, stime, cutime, cstime are 11-14.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def _descendants(root: int) -> list[int]:
    """``root`` and its live descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


def _tree_pss_bytes(root: int) -> int:
    """The proportional set size (PSS) of ``root`` and its live descendants: a page shared by N of them counts
    1/N in each (RSS would count a warm process's pages once per forked run). A process that vanishes counts 0."""
    total = 0
    for pid in _descendants(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
    return total


def _tree_cpu_seconds(root: int) -> float:
    """CPU of ``root``, its live descendants (a warm process among them), and all they have reaped."""
    total = 0.0
    for pid in _descendants(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += _cpu_seconds(pid, children=True)
    return total


class _PeakMemory(threading.Thread):
    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.1):
            self.peak = max(self.peak, sum(_tree_pss_bytes(pid) for pid in self.pids))

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def _all_ended(client: Client, flow_name: str, runs: int) -> dict[str, int]:
    """How many of the flow's runs are in each final state (pages of 200)."""
    counts: dict[str, int] = {}
    for run in client.list_flow_runs(flow_name=flow_name, limit=runs):
        if run.state in FINAL_STATES:
            counts[run.state] = counts.get(run.state, 0) + 1
    return counts


def _last_end(client: Client, flow_name: str, runs: int) -> float:
    """When the flow's last run ended, by the server's clock (this machine's: seconds since the epoch)."""
    ended = [run.end_time for run in client.list_flow_runs(flow_name=flow_name, limit=runs) if run.end_time]
    return max(ended).timestamp()


class Throughput(NamedTuple):
    """What ``_throughput`` measured: times in seconds, memory in bytes."""

    elapsed: float
    counts: dict[str, int]  # final state -> runs
    unanswered: int  # the bench's lists the server did not answer
    agent_cpu: float  # the agent, its warm process and every flow-run process
    server_cpu: float
    peak: int  # highest PSS of the server, the agent and its children
    baseline: int  # the server's PSS before the agent started

    @property
    def ended(self) -> int:
        return sum(self.counts.values())

    @property
    def cpu_per_run(self) -> float:
        return (self.agent_cpu + self.server_cpu) / max(self.ended, 1)


def _throughput(server: ServerProcess, runs: int, limit: int, log: Path, extra_args: list[str]) -> Throughput:
    client = server.client()
    flow_name = f"bench-throughput-{limit}"
    _register(client, flow_name, {"type": "local"})
    for _ in range(runs):
        client.create_flow_run(flow_name=flow_name, parameters={"name": "bench"})
    assert server.process is not None
    server_pid = server.process.pid
    baseline = _tree_pss_bytes(server_pid)
    server_cpu = _cpu_seconds(server_pid, children=False)
    # --limit 0 is "no limit" (without --limit the agent takes its machine's default, agent/capacity.py)
    agent_args = ["agent", "local", "start", "--name", flow_name, "--no-hostname-label", "--limit", str(limit)]
    agent_args += extra_args
    with log.open("wb") as agent_log:
        started, started_at = time.monotonic(), time.time()
        agent = subprocess.Popen(
            [sys.executable, "-m", "baton.cli", *agent_args],
            env=server.env(),
            stdout=subprocess.DEVNULL,
            stderr=agent_log,
        )
    memory = _PeakMemory([server_pid, agent.pid])
    memory.start()
    try:
        deadline = started + max(120.0, runs * 2.0)
        counts: dict[str, int] = {}
        unanswered = polls = 0
        while time.monotonic() < deadline:
            try:
                polls += 1
                counts = _all_ended(client, flow_name, runs)
            except ServerUnavailableError:  # a server swamped by the runs' start-up: part of the figure, said below
                unanswered += 1
                continue
            if sum(counts.values()) >= runs:
                break
            # Seldom: each look lists every run, work that competes with the runs for the server. The end is timed
            # by the server's own end times below, not by when a look saw it; what the looks cost the server's CPU
            # is taken out below.
            time.sleep(POLL_SECONDS)
        elapsed = time.monotonic() - started
        if sum(counts.values()) >= runs:
            polls += 1  # a look as costly as the others
            elapsed = _last_end(client, flow_name, runs) - started_at
        # The runs have told the API they ended; wait until the agent has reaped their processes (their CPU is
        # its children's then), leaving at most its warm process
        settle = time.monotonic() + 15
        while len(_descendants(agent.pid)) > 2 and time.monotonic() < settle:
            time.sleep(0.1)
        agent_cpu = _tree_cpu_seconds(agent.pid)
        server_cpu = _cpu_seconds(server_pid, children=False) - server_cpu
        # The bench's own polls are not the runs' cost: measure ten on the idle server and take them out
        before = _cpu_seconds(server_pid, children=False)
        for _ in range(10):
            _all_ended(client, flow_name, runs)
        server_cpu -= polls * (_cpu_seconds(server_pid, children=False) - before) / 10
    finally:
        peak = memory.stop()
        agent.terminate()
        agent.wait(60)
    return Throughput(elapsed, counts, unanswered, agent_cpu, server_cpu, peak, baseline)


def _measure(server: ServerProcess, runs: int, limit: int, log: Path, extra_args: list[str]) -> None:
    measured = _throughput(server, runs, limit, log, extra_args)
    elapsed, counts, unanswered, agent_cpu, server_cpu, peak, baseline = measured
    ended, cpu_per_run = measured.ended, measured.cpu_per_run
    options = " ".join([f"--limit {limit}" if limit else "no limit", *extra_args])
    print(f"{runs} runs waiting, one local agent, {options}:")
    print(f"  ended {ended}/{runs} in {elapsed:.1f} s: {counts}")
    if unanswered:
        print(f"  the server did not answer the bench's list within 30 s {unanswered} times")
    print(
        f"  runs/s {ended / elapsed:8.2f}   (Prefect 3.9 process worker, --limit 4: ~{PREFECT_RUNS_PER_SECOND}/s; "
        f"Baton {ended / elapsed / PREFECT_RUNS_PER_SECOND:.0f}x)"
    )
    print(
        f"  CPU per run {cpu_per_run * 1000:6.0f} ms (agent and flow runs {agent_cpu:.1f} s, server {server_cpu:.1f} s;"
        f" Prefect ~{PREFECT_CPU_SECONDS_PER_RUN * 1000:.0f} ms: Baton {PREFECT_CPU_SECONDS_PER_RUN / cpu_per_run:.1f}x"
        " less)"
    )
    print(f"  peak memory   +{(peak - baseline) / 2**20:6.0f} MiB over the server's {baseline / 2**20:.0f} MiB")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--limit", type=int, action="append", help="0 for no limit (repeatable; default 0 and 4)")
    parser.add_argument("--no-prefork", action="store_true", help="the agent spawns each run (no warm process)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        server = ServerProcess(Path(tmp) / "home").start()
        try:
            for limit in args.limit or [0, 4]:
                extra = ["--no-prefork"] if args.no_prefork else []
                _measure(server, args.runs, limit, Path(tmp) / f"agent-{limit}.log", extra)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

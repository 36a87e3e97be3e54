"""Chaos: many agents deploy thousands of runs while the API server is SIGKILLed and restarted; count what survived.

Run with ``make chaos`` (or ``.venv/bin/python bench/chaos.py --agents 8 --runs-per-agent 5000``). Starts real API
server(s) on 127.0.0.1 (SQLite in a throwaway $BATON_HOME, or ``--database postgresql``: a throwaway PostgreSQL
cluster with ``--replicas`` servers on it), ``--agents`` agent processes (``python -m baton.agent.testing``: the
real agent loop and protocol, deployments that act like successful flow runs, one line per deployment in a
record file), and creator threads that create the runs while it all goes on. When a share of the runs have been
deployed, a server is SIGKILLed, kept down ``--down-seconds``, and started again on the same port and database
(``--kills`` times; with replicas, each kill takes the next replica).

It prints:
- runs created (acknowledged to a creator, and present in the database);
- deployed once, deployed twice (from the agents' own records: the ground truth), never deployed;
- lost: acknowledged runs that did not end in Success;
- for each kill, how long until the API answered again and until the first run succeeded after it.

Reference: Prefect Server let two agents run the same flow run (its only guard was a 30 s in-memory lock) and its
Lazarus took 10-20 minutes to recover a lost run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sqlalchemy import func, select

from baton.agent.testing import read_deployments, spawn_agent_process
from baton.client import Client
from baton.engine.retry import call_with_retry
from baton.server.database.connection import create_database_engine, create_session_factory
from baton.server.database.orm import FlowRun, FlowRunState
from support import ServerProcess, clean_env, register_source_flow

# Runs are created by this many threads, spread over the replicas, all through the chaos.
CREATORS = 4


@dataclass
class Kill:
    at: float  # seconds since the start
    wall: datetime
    back_after: float = 0.0  # seconds from the kill until the API answered again


@dataclass
class Chaos:
    servers: list[ServerProcess]
    database_url: str
    total: int
    acknowledged: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    kills: list[Kill] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started


def _create_runs(chaos: Chaos, client: Client, count: int) -> None:
    """Create ``count`` runs, retrying through outages with one idempotency key per run: a create whose answer was
    lost returns the first run on its retry, so the database must hold exactly the acknowledged runs."""
    for _ in range(count):
        key = uuid.uuid4().hex
        run = call_with_retry(
            lambda key=key: client.create_flow_run(flow_name="chaos", idempotency_key=key),
            what="create a run",
            timeout_seconds=600,
        )
        with chaos.lock:
            chaos.acknowledged.append(run.id)


def _deployed_count(records: list[str]) -> int:
    count = 0
    for record in records:
        with contextlib.suppress(FileNotFoundError), open(record, encoding="utf-8") as lines:
            count += sum(1 for _ in lines)
    return count


def _kill_and_restart(chaos: Chaos, server: ServerProcess, down_seconds: float) -> None:
    kill = Kill(at=chaos.elapsed(), wall=datetime.now(UTC))
    print(f"  {kill.at:6.1f} s  SIGKILL server :{server.port}; down for {down_seconds:.1f} s", flush=True)
    server.restart(down_seconds=down_seconds, timeout=120)
    kill.back_after = chaos.elapsed() - kill.at
    print(f"  {chaos.elapsed():6.1f} s  server :{server.port} answers again", flush=True)
    chaos.kills.append(kill)


def _run_states(database_url: str) -> tuple[dict[str, str], dict[str, int], list[datetime]]:
    """From the database itself: each run's state, its number of Submitted states, and every Success time."""
    engine = create_database_engine(database_url, 1)
    try:
        with create_session_factory(engine)() as session:
            states = {run_id: state for run_id, state in session.execute(select(FlowRun.id, FlowRun.state))}
            submitted = {
                run_id: count
                for run_id, count in session.execute(
                    select(FlowRunState.flow_run_id, func.count())
                    .where(FlowRunState.name == "Submitted")
                    .group_by(FlowRunState.flow_run_id)
                )
            }
            successes = list(session.scalars(select(FlowRunState.timestamp).where(FlowRunState.name == "Success")))
    finally:
        engine.dispose()
    return states, submitted, successes


@contextlib.contextmanager
def _database(kind: str, tmp: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'baton.db'}"
        return
    from postgres_support import throwaway_database

    with throwaway_database() as url:
        yield url


def _wait_until_done(chaos: Chaos, creators: list[threading.Thread], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for creator in creators:
        creator.join(max(0.0, deadline - time.monotonic()))
    engine = create_database_engine(chaos.database_url, 1)
    try:
        with create_session_factory(engine)() as session:
            while time.monotonic() < deadline:
                open_runs = session.scalar(
                    select(func.count()).where(FlowRun.state.not_in(["Success", "Failed", "Cancelled"]))
                )
                session.rollback()  # a fresh snapshot at each look
                if not open_runs and len(chaos.acknowledged) >= chaos.total:
                    return
                time.sleep(0.5)
    finally:
        engine.dispose()


def _report(chaos: Chaos, records: list[str], args: argparse.Namespace) -> int:
    states, submitted, successes = _run_states(chaos.database_url)
    deployments = read_deployments(*records)
    per_run = Counter(len(deployments.get(run_id, [])) for run_id in states)
    acknowledged = set(chaos.acknowledged)
    lost = sorted(run_id for run_id in acknowledged if states.get(run_id) != "Success")
    not_acknowledged = len(set(states) - acknowledged)
    twice_by_server = sum(1 for count in submitted.values() if count > 1)
    finals = Counter(states.values())
    print()
    print(
        f"chaos: {args.database}, {len(chaos.servers)} server(s), {args.agents} agents x {args.runs_per_agent} runs,"
        f" server SIGKILLed {len(chaos.kills)} times ({args.down_seconds:.1f} s down each)"
    )
    print(
        f"  runs created        {len(acknowledged):7d} acknowledged, {len(states)} in the database"
        f" ({not_acknowledged} created by a retried request whose first answer was lost)"
    )
    print(f"  deployed once       {per_run[1]:7d}")
    print(
        f"  deployed twice      {sum(n for k, n in per_run.items() if k > 1):7d}"
        f"   (server history: {twice_by_server} runs with more than one Submitted)"
    )
    print(f"  never deployed      {per_run[0]:7d}")
    print(f"  lost                {len(lost):7d}   (acknowledged, not Success)")
    print(f"  final states        {dict(finals)}")
    for number, kill in enumerate(chaos.kills, 1):
        after = sorted(ts for ts in successes if ts.replace(tzinfo=UTC) > kill.wall)
        first = (after[0].replace(tzinfo=UTC) - kill.wall).total_seconds() if after else float("nan")
        print(
            f"  kill {number} at {kill.at:6.1f} s: API back after {kill.back_after:5.1f} s,"
            f" first Success after the kill {first:5.1f} s"
        )
    duration = chaos.elapsed()
    print(f"  total {duration:.1f} s, {len(states) / duration:.0f} runs/s end to end")
    for run_id in lost[:10]:
        print(f"  lost run {run_id}: {states.get(run_id, 'missing from the database')}")
    return 1 if lost or per_run[0] or any(k > 1 for k in per_run) else 0


def _start_agents(chaos: Chaos, key: str, tmp: Path, count: int) -> tuple[list[Any], list[str]]:
    records = [str(tmp / f"agent-{i}.jsonl") for i in range(count)]
    processes = [
        spawn_agent_process(
            chaos.servers[i % len(chaos.servers)].url, key, f"chaos-{i}", record, env=clean_env(tmp / f"agent-{i}")
        )
        for i, record in enumerate(records)
    ]
    return processes, records


def _stop_agents(processes: list[Any], records: list[str]) -> None:
    for process in processes:
        process.terminate()
    for process, record in zip(processes, records, strict=True):
        process.wait(timeout=120)
        if process.returncode != 0:
            tail = Path(f"{record}.log").read_text(encoding="utf-8", errors="replace")[-1500:]
            print(f"  an agent exited with {process.returncode}:\n{tail}")


def run(args: argparse.Namespace) -> int:
    total = args.agents * args.runs_per_agent
    with (
        tempfile.TemporaryDirectory(prefix="baton-chaos-") as tmp_name,
        _database(args.database, Path(tmp_name)) as url,
    ):
        tmp = Path(tmp_name)
        replicas = args.replicas if args.database == "postgresql" else 1
        # The production defaults, not the test suite's: failed-auth limit and the grace after a restart.
        production = {"BATON__SERVER__FAILED_AUTH_LIMIT": "20", "BATON__SERVER__OUTAGE_GRACE_MARGIN_SECONDS": "30"}
        servers = [
            ServerProcess(tmp / f"server-{i}", BATON__SERVER__DATABASE_URL=url, **production).start()
            for i in range(replicas)
        ]
        chaos = Chaos(servers=servers, database_url=url, total=total)
        admin = servers[0].client()
        register_source_flow(admin, name="chaos")
        key = admin.create_api_key("runner", name="chaos agents").key
        user_key = admin.create_api_key("user", name="chaos creators").key
        processes, records = _start_agents(chaos, key, tmp, args.agents)
        clients = [Client(servers[i % replicas].url, user_key) for i in range(CREATORS)]
        try:
            print(f"chaos: {total} runs, {args.agents} agents, {replicas} server(s) on {args.database}", flush=True)
            shares = [total // CREATORS + (1 if i < total % CREATORS else 0) for i in range(CREATORS)]
            creators = [
                threading.Thread(target=_create_runs, args=(chaos, client, share), daemon=True)
                for client, share in zip(clients, shares, strict=True)
            ]
            for creator in creators:
                creator.start()
            for number in range(args.kills):
                threshold = total * (number + 1) / (args.kills + 1)
                while _deployed_count(records) < threshold:
                    time.sleep(0.2)
                _kill_and_restart(chaos, servers[number % replicas], args.down_seconds)
            _wait_until_done(chaos, creators, args.timeout)
        finally:
            _stop_agents(processes, records)
            for client in clients:
                client.close()
            for server in servers:
                server.stop()
        return _report(chaos, records, args)


def main() -> int:
    import logging

    logging.getLogger("baton").setLevel(logging.ERROR)  # the creators' retry warnings would drown the report
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=8)
    parser.add_argument("--runs-per-agent", type=int, default=250)
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--replicas", type=int, default=2, help="servers on one PostgreSQL (ignored for SQLite)")
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--down-seconds", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up waiting for the runs after this")
    args = parser.parse_args()
    if args.agents < 1 or args.runs_per_agent < 1 or args.kills < 0 or args.replicas < 1:
        parser.error("--agents, --runs-per-agent and --replicas must be at least 1, --kills at least 0")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())

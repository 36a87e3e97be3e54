"""Issue 12: are claim, create, list, get and log reads as fast with a long history as on an empty database?

Run with::

    .venv/bin/python bench/scale.py --runs 1000000 --log-lines 10000000 --database both
    .venv/bin/python bench/scale.py --runs 20000 --log-lines 200000 --database sqlite      # a quick look

Per database (SQLite in a throwaway $BATON_HOME; PostgreSQL: a throwaway cluster on 127.0.0.1, as the tests use):

1. A real server (``python -m baton.server``) on 127.0.0.1; through its API: ``--flows`` flows of 3 versions each
   (labelled ``bench``), a flow with 8 runs (``scale-rare``, labelled ``rare``), a user key, a runner key and an
   agent registered with it, as an agent registers.
2. Empty database, over HTTP, ``--samples`` times each: create a run (user key); the agent's claim (runner key,
   ``POST /api/agents/{id}/claim`` with the agent's long poll, answered at once with the run just created); write
   10 log lines to it (it is then cancelled, untimed); get a run; read a run's logs; list runs (first page, default
   sort), by state, by a busy flow, by the rare flow and by its label. Each read operation, and the writes together,
   stop after 90 s once they have 20 samples. Before them, the CPU of the idle server (and of PostgreSQL, which runs
   its queries) over 10 s: the server's background services run every second.
3. The server stops; ``--runs`` finished runs (Success 80 %, Failed 15 %, Cancelled 5 %, created over ``--weeks``
   weeks, over every version of the busy flows) go straight into the database, each with its 5 states, 2 labels,
   a task run and ``--log-lines`` / ``--runs`` log lines, copied from runs made through the API and written with
   the ORM's table metadata (sqlite3 ``executemany``; ``COPY`` on PostgreSQL). The ``flow_runs`` triggers count them
   and the server's own ``run_counts.fold`` folds the counts, as its run-counts service would. PostgreSQL is then
   ``VACUUM ANALYZE``d, as autovacuum would after such a load; SQLite is not analyzed (Baton never runs ANALYZE).
4. The server starts again and 2 is measured again. Both times measuring starts 31 s after the server started:
   the lease and recovery services wait one lease / heartbeat timeout (30 s) after a start.

Printed per database: p50/p90/p99 of each operation empty and seeded, the ratio of the p50s, the database's size,
and for an operation whose p50 grew more than ``--explain-above`` times (all with ``--explain``) the plans of the
two slowest SELECTs its handler runs, replayed in-process on the seeded database and rolled back (PostgreSQL:
``EXPLAIN ANALYZE``). ``--keep`` keeps the seeded database (PostgreSQL: its cluster running) for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import JSON, Engine, Integer, Table, event, select, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from throughput import _tree_cpu_seconds

from baton.schemas.actions import FlowRunCreate
from baton.server import shaping
from baton.server.database.connection import create_database_engine, create_session_factory, transaction
from baton.server.database.orm import Agent, FlowRun, FlowRunLabel, FlowRunState, Log, TaskRun, utcnow
from baton.server.models import claims, flow_runs, lateness, logs, lost_runs, pages, run_counts
from baton.server.models import notification_outbox as outbox
from baton.server.models.names import random_run_name
from baton.server.models.tenants import authenticate
from support import HELLO_SOURCE, ServerProcess, register_source_flow

VERSIONS = 3  # per flow name: a flow's runs span versions, as re-registered code makes them
RARE_RUNS = 8  # a weekly flow: fewer runs than a page, so its list never fills a page early
SERVICES_GRACE_SECONDS = 31.0  # claim lease / run heartbeat timeout (30 s; grace margin 0), plus 1 s
BUDGET_SECONDS = 90.0  # each read operation, and the writes together, stop after this long once they have
MIN_SAMPLES = 20  # this many samples: a slow one shows anyway
WARM_UPS = 5
CHUNK = 10_000  # runs per seeding transaction
FINALS = ["Success"] * 16 + ["Failed"] * 3 + ["Cancelled"]
MESSAGES = {"Success": None, "Failed": "Flow run failed: ValueError('bad input')", "Cancelled": "cancelled by user"}
# Shared by many rows, so serialised once per write (``_once_per_object``).
LABELS = [["bench", f"team-{n:02d}"] for n in range(20)]
DEPLOYMENTS = [{"pid": 1000 + n, "host": "scale-host"} for n in range(1000)]
CLAIM = {"limit": 1, "wait_seconds": 20.0, "prefetch_seconds": 0.0}  # the local agent's long poll, one free slot
WRITES = ["create run", "claim (agent long poll)", "write 10 log lines"]
READS = ["get run", "read run logs", "list runs", "list runs state=Cancelled", "list runs flow=<busy>"]
READS += ["list runs flow=<rare>", "list runs label=rare"]
IDLE = "idle CPU, server + db (% core)"


@dataclass
class Setup:
    """What the API made (all in the default tenant)."""

    tenant_id: str
    user_key: str
    runner_key: str
    agent_id: str  # the measured agent
    history_agent_id: str  # the agent the seeded runs ran on
    flow_ids: list[list[str]]  # per busy flow name, its versions' ids, oldest first
    template_ids: dict[str, str]  # flow version id -> a run made of it through the API
    busy_flow: str = "scale-00"  # the measured runs are of its latest version
    rare_flow: str = "scale-rare"


@dataclass
class Phase:
    times: dict[str, list[float]] = field(default_factory=lambda: {name: [] for name in WRITES + READS})
    idle_cpu: float = 0.0  # % of one core
    size: int = 0  # database bytes


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def _set_up(server: ServerProcess, flows: int) -> Setup:
    admin = server.client()
    # A changed source is a new version; runs made by name are of the latest one.
    flow_ids = [
        [
            register_source_flow(admin, f"scale-{n:02d}", ["bench"], source=f"{HELLO_SOURCE}\n# v{v}\n")
            for v in range(VERSIONS)
        ]
        for n in range(flows)
    ]
    rare = register_source_flow(admin, "scale-rare", labels=["bench", "rare"])
    for _ in range(RARE_RUNS):
        admin.cancel_flow_run(admin.create_flow_run(flow_id=rare).id)
    template_ids = {}
    for flow_id in (version for versions in flow_ids for version in versions):
        template_ids[flow_id] = admin.create_flow_run(flow_id=flow_id, parameters={"name": "template"}).id
        admin.cancel_flow_run(template_ids[flow_id])  # not claimable: each claim must find the run just made
    runner_key = admin.create_api_key("runner", name="scale agents").key
    with server.client(runner_key) as runner:
        agent, history = (runner.register_agent(name, "local", ["bench"]) for name in ("scale", "scale-history"))
    return Setup(
        tenant_id=admin.whoami().tenant_id,
        user_key=admin.create_api_key("user", name="scale user").key,
        runner_key=runner_key,
        agent_id=agent.id,
        history_agent_id=history.id,
        flow_ids=flow_ids,
        template_ids=template_ids,
    )


# --- measuring over HTTP --------------------------------------------------------------------------------------


def _idle_cpu(server_pid: int, database_pid: int | None) -> float:
    """% of a core the idle server (and the PostgreSQL cluster, whose backends run the server's queries) use."""
    pids = [server_pid] + ([database_pid] if database_pid else [])
    before = [_tree_cpu_seconds(pid) for pid in pids]
    time.sleep(10.0)
    return sum(_tree_cpu_seconds(pid) - cpu for pid, cpu in zip(pids, before, strict=True)) * 10.0


def _rounds(samples: int) -> Iterator[bool]:
    """One per request, whether it is timed (not a warm-up); none after BUDGET_SECONDS once MIN_SAMPLES are in."""
    deadline = time.monotonic() + BUDGET_SECONDS
    for index in range(WARM_UPS + samples):
        if index >= WARM_UPS + MIN_SAMPLES and time.monotonic() > deadline:
            return
        yield index >= WARM_UPS


def _measure(
    server: ServerProcess,
    setup: Setup,
    samples: int,
    read_ids: list[str] | None,
    started: float,
    database_pid: int | None,
) -> Phase:
    """Every operation (after warm-ups); the runs to get and read the logs of are ``read_ids`` (None: those made
    here by the creates). ``database_pid``: PostgreSQL's postmaster, whose CPU counts in the idle CPU."""
    time.sleep(max(0.0, started + SERVICES_GRACE_SECONDS - time.monotonic()))
    assert server.process is not None
    phase = Phase(idle_cpu=_idle_cpu(server.process.pid, database_pid))
    user = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {setup.user_key}"}, timeout=600)
    runner = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {setup.runner_key}"}, timeout=600)

    def call(operation: str | None, client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            answer = client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            if method != "GET" or operation == "retried":
                raise SystemExit(f"{method} {path}: {exc!r}; the server's log ends:\n{server.log()[-3000:]}") from exc
            # Seen once in many runs on a loaded machine: a reset keep-alive connection. A read may be sent again.
            print(f"    {method} {path}: {exc!r}; sent again (not timed)", flush=True)
            return call("retried", client, method, path, **kwargs)
        elapsed = time.perf_counter() - start
        if answer.status_code >= 400:
            raise SystemExit(f"{method} {path} answered {answer.status_code}: {answer.text[:500]}")
        if operation in phase.times:
            phase.times[operation].append(elapsed)
        return answer.json()

    made: list[str] = []
    try:
        for recorded in _rounds(samples):
            create, claim, write = (name if recorded else None for name in WRITES)
            body = {"flow_name": setup.busy_flow, "parameters": {"name": "scale"}}
            run = call(create, user, "POST", "/api/flow_runs", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
            claimed = call(claim, runner, "POST", f"/api/agents/{setup.agent_id}/claim", json=CLAIM)["runs"]
            if [item["flow_run"]["id"] for item in claimed] != [run["id"]]:
                raise SystemExit(f"the claim did not answer the run just created ({run['id']}): {claimed}")
            now = datetime.now(UTC).isoformat()
            line = {"timestamp": now, "name": "stdout", "message": "hello"}
            lines = [line | {"key": uuid.uuid4().hex} for _ in range(10)]
            call(write, user, "POST", f"/api/flow_runs/{run['id']}/logs", json={"logs": lines})
            call(None, user, "POST", f"/api/flow_runs/{run['id']}/cancel")
            made.append(run["id"])
        rng = random.Random(12)
        ids = read_ids or made
        paths: dict[str, Callable[[], str]] = {
            "get run": lambda: f"/api/flow_runs/{rng.choice(ids)}",
            "read run logs": lambda: f"/api/flow_runs/{rng.choice(ids)}/logs",
            "list runs": lambda: "/api/flow_runs",
            "list runs state=Cancelled": lambda: "/api/flow_runs?state=Cancelled",
            "list runs flow=<busy>": lambda: f"/api/flow_runs?flow_name={setup.busy_flow}",
            "list runs flow=<rare>": lambda: f"/api/flow_runs?flow_name={setup.rare_flow}",
            "list runs label=rare": lambda: "/api/flow_runs?label=rare",
        }
        for operation in READS:
            for recorded in _rounds(samples):
                if not call(operation if recorded else None, user, "GET", paths[operation]()):
                    raise SystemExit(f"{operation}: nothing found")
    finally:
        user.close()
        runner.close()
    return phase


# --- seeding --------------------------------------------------------------------------------------------------


def _once_per_object(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``process`` remembering its result per object (the rows keep every object alive, so ids stay unique)."""
    done: dict[int, Any] = {}

    def cached(value: Any) -> Any:
        if id(value) not in done:
            done[id(value)] = process(value)
        return done[id(value)]

    return cached


def _json_text(process: Callable[[Any], Any]) -> Callable[[Any], str]:
    """PostgreSQL: the text of the psycopg ``Json`` that ``process`` makes, so that it is made once per object here
    rather than at every row by psycopg (COPY's text format takes JSON text as it is)."""

    def text_of(value: Any) -> str:
        wrapped = process(value)
        return str((wrapped.dumps or json.dumps)(wrapped.obj))

    return text_of


class Sink:
    """Rows into a table fast, through the DBAPI: sqlite3 ``executemany`` or PostgreSQL ``COPY``. Values pass the
    column types' own bind processors (the ORM's formats: UTC text times on SQLite, JSON text)."""

    def __init__(self, engine: Engine) -> None:
        self.dialect = engine.dialect
        self.postgres = engine.dialect.name == "postgresql"
        self.raw: Any = engine.raw_connection()
        if not self.postgres:
            # A throwaway database being loaded: no fsync, a cache the size of the indexes, and no foreign-key
            # lookups per row (the rows are consistent by construction).
            for pragma in ("synchronous=OFF", "cache_size=-2000000", "foreign_keys=OFF"):
                self.raw.execute(f"PRAGMA {pragma}")

    def write(self, table: Table, rows: list[dict[str, Any]]) -> None:
        # Every column but an autoincrement key, NULL or not: one left out would be NULL, and a NULL copy (a run's
        # flow_name, a label's tenant_id and created: migration 0013) leaves its rows out of the lists measured.
        required = {
            column.name for column in table.columns if not (column.primary_key and isinstance(column.type, Integer))
        }
        unknown, missing = set(rows[0]) - set(table.c.keys()), required - set(rows[0])
        if unknown or missing:
            raise SystemExit(
                f"bench/scale.py is behind {table.name}: {sorted(unknown)} unknown, {sorted(missing)} missing"
            )
        columns = [column for column in table.columns if column.name in rows[0]]
        keys = [column.name for column in columns]
        converted = []  # only the columns whose type converts (times, JSON) pay for a call; SQL NULL stays NULL
        for index, column in enumerate(columns):
            process = column.type.dialect_impl(self.dialect).bind_processor(self.dialect)
            if process is not None and isinstance(column.type, JSON):
                process = _once_per_object(_json_text(process) if self.postgres else process)
            if process is not None:
                converted.append((index, process))

        def values() -> Iterator[list[Any]]:
            for row in rows:
                value = [row[key] for key in keys]
                for index, process in converted:
                    if value[index] is not None:
                        value[index] = process(value[index])
                yield value

        names = ", ".join(keys)
        if not self.postgres:
            self.raw.executemany(f"INSERT INTO {table.name} ({names}) VALUES ({', '.join('?' * len(keys))})", values())
            return
        with self.raw.cursor() as cursor:
            # No foreign-key trigger per row (consistent by construction), except on flow_runs: its own triggers
            # must fire, they count the runs.
            cursor.execute(f"SET session_replication_role = {'origin' if table.name == 'flow_runs' else 'replica'}")
            with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
                for row in values():
                    copy.write_row(row)

    def begin(self) -> None:
        if not self.postgres:
            self.raw.execute("BEGIN")  # the connection is in autocommit mode (database/connection.py)

    def commit(self) -> None:
        if self.postgres:
            self.raw.commit()
        else:
            self.raw.execute("COMMIT")


Rows = dict[str, list[dict[str, Any]]]  # table name -> rows


def _run_rows(
    index: int, template: dict[str, Any], created: datetime, lines: int, agent: str, rng: random.Random
) -> Rows:
    """One finished run as a real one would be: its row, 5 states, 2 labels, a task run and ``lines`` log lines."""
    run_id, task_id, state = str(uuid.uuid4()), str(uuid.uuid4()), rng.choice(FINALS)
    labels, deployment = LABELS[index % len(LABELS)], DEPLOYMENTS[index % len(DEPLOYMENTS)]
    claimed, submitted, running = (created + timedelta(seconds=s) for s in (0.05, 0.3, 1.0))
    ended = running + timedelta(seconds=rng.uniform(1, 600))
    messages = [f"hello scale {n}: item {index}" for n in range(lines)]
    run = template | {"id": run_id, "name": random_run_name(), "labels": labels, "label_count": 2, "state": state}
    run |= {"state_message": MESSAGES[state], "state_version": 4, "agent_id": agent, "deployment": deployment}
    run |= {"lease_expires_at": None, "lease_returns": 0, "run_token_hash": None, "heartbeat_at": ended}
    run |= {"scheduled_start_time": created, "created": created, "start_time": running, "end_time": ended}
    run |= {"updated": ended, "idempotency_key": os.urandom(16).hex(), "idempotency_hash": os.urandom(32).hex()}
    run |= {"log_count": lines, "log_bytes": sum(len(m.encode()) + len("stdout") for m in messages)}
    run |= {"logs_dropped": 0, "attempt": 1, "retried_from": None, "schedule_key": None}
    history = [  # a transition stores data=None as JSON null, the creation's first state as SQL NULL
        ("Scheduled", None, None, created),
        ("Pending", "claimed by agent scale-history", JSON.NULL, claimed),
        ("Submitted", f"PID: {deployment['pid']}", deployment, submitted),
        ("Running", None, JSON.NULL, running),
        (state, MESSAGES[state], JSON.NULL, ended),
    ]
    step, tenant_id = (ended - running) / max(lines, 1), run["tenant_id"]
    task = {"id": task_id, "tenant_id": tenant_id, "flow_run_id": run_id, "task_name": "greet", "state": state}
    task |= {"message": None, "attempt": 1, "start_time": running, "end_time": ended, "created": running}
    return {
        "flow_runs": [run],
        "flow_run_states": [
            {"flow_run_id": run_id, "name": name, "message": message, "data": data, "timestamp": at}
            for name, message, data, at in history
        ],
        "flow_run_labels": flow_runs.label_rows(run_id, tenant_id, created, labels),
        "task_runs": [task],
        "logs": [
            {
                "tenant_id": tenant_id,
                "flow_run_id": run_id,
                "task_run_id": task_id if n % 2 else None,  # half the lines are the task's
                "key": os.urandom(16).hex(),  # 32 hex digits like the engine's uuid4().hex, made cheaper
                "timestamp": running + step * n,
                "level": 20,
                "name": "stdout",
                "message": message,
            }
            for n, message in enumerate(messages)
        ],
    }


def seed(url: str, setup: Setup, runs: int, log_lines: int, weeks: float) -> list[str]:
    """Add ``runs`` finished runs and ``log_lines`` log lines, oldest first; up to 2000 of their ids."""
    tables: list[Any] = [FlowRun.__table__, FlowRunState.__table__, FlowRunLabel.__table__, TaskRun.__table__]
    tables.append(Log.__table__)
    engine = create_database_engine(url, 1)
    rng = random.Random(7)
    first = datetime.now(UTC) - timedelta(weeks=weeks)
    span = (timedelta(weeks=weeks) - timedelta(hours=1)) / runs  # the newest an hour old
    sampled: list[str] = []
    try:
        with engine.connect() as connection:
            query = select(FlowRun.__table__).where(FlowRun.id.in_(setup.template_ids.values()))
            templates = {row["id"]: dict(row) for row in connection.execute(query).mappings()}
        sink, start, done = Sink(engine), time.perf_counter(), 0
        try:
            while done < runs:
                chunk: dict[str, list[dict[str, Any]]] = {table.name: [] for table in tables}
                for index in range(done, min(runs, done + CHUNK)):
                    versions = setup.flow_ids[index % len(setup.flow_ids)]
                    template = templates[setup.template_ids[versions[index * VERSIONS // runs]]]
                    lines = log_lines // runs + (1 if index < log_lines % runs else 0)
                    created = first + span * index + timedelta(seconds=rng.uniform(0, 1))
                    for name, rows in _run_rows(index, template, created, lines, setup.history_agent_id, rng).items():
                        chunk[name].extend(rows)
                    if index % max(1, runs // 2000) == 0:
                        sampled.append(chunk["flow_runs"][-1]["id"])
                sink.begin()
                for table in tables:
                    if chunk[table.name]:
                        sink.write(table, chunk[table.name])
                sink.commit()
                done += len(chunk["flow_runs"])
                if done % (CHUNK * 10) == 0 or done == runs:
                    rate = done / (time.perf_counter() - start)
                    print(f"    {done:>10,} runs seeded ({rate:,.0f} runs/s)", flush=True)
        finally:
            sink.raw.close()
        while True:  # the run-counts service's own fold, as after any bulk import
            with transaction(create_session_factory(engine)) as session:
                if run_counts.fold(session) < run_counts.FOLD_BATCH:
                    break
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
                connection.execute(text("VACUUM ANALYZE"))
                connection.execute(text("CHECKPOINT"))
        else:
            raw: Any = engine.raw_connection()  # outside a transaction, as a checkpoint must be
            try:
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                raw.close()
    finally:
        engine.dispose()
    return sampled


def _size(url: str) -> int:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        return sum(file.stat().st_size for file in path.parent.glob(path.name + "*"))
    engine = create_database_engine(url, 1)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT pg_database_size(current_database())")).scalar_one())
    finally:
        engine.dispose()


# --- plans ------------------------------------------------------------------------------------------------------


def _replays(setup: Setup, run_id: str) -> dict[str, Callable[[Session], object]]:
    """What each operation's handler (``server/api``) or the idle server runs, to replay in-process."""

    def listed(**where: str) -> Callable[[Session], object]:
        def replay(session: Session) -> object:
            principal = authenticate(session, setup.user_key)
            assert principal is not None
            page = flow_runs.list_flow_runs(session, setup.tenant_id, flow_runs.RunFilter(**where))
            return shaping.flow_runs(session, principal, page.runs, flow_runs.HEAVY_FIELDS)

        return replay

    def get(session: Session) -> object:
        principal = authenticate(session, setup.user_key)
        assert principal is not None
        return shaping.flow_run(session, principal, flow_runs.get_flow_run(session, setup.tenant_id, run_id))

    def read_logs(session: Session) -> object:
        limit = pages.lines_within(session, setup.tenant_id, run_id, 0, 1000, 4 * 1024 * 1024)
        return logs.read_logs(session, setup.tenant_id, run_id, 0, limit)

    def create(session: Session) -> object:
        payload = FlowRunCreate(flow_name=setup.busy_flow, parameters={"name": "scale"})
        return flow_runs.create_flow_run_once(session, setup.tenant_id, payload, uuid.uuid4().hex)

    def claim(session: Session) -> object:  # nothing is due: the candidates query, then the next-due one
        agent = session.get(Agent, setup.agent_id)
        assert agent is not None
        return claims.claim_runs(session, agent, 1, 0.0, 30.0)

    def services(session: Session) -> object:  # every second, idle (server/app.py's _services)
        now, week = utcnow(), 7 * 24 * 3600.0
        claims.expire_leases(session, 3)
        lost_runs.recover_lost_runs(session, lost_runs.RecoveryPolicy(30.0, False, 3))
        lateness.skip_too_late_runs(session, now)
        outbox.find_late_runs(session, now, week)
        outbox.find_lost_agents(session, now, 90.0, week)
        return run_counts.fold(session)

    return {
        "create run": create,
        "claim (agent long poll)": claim,
        "get run": get,
        "read run logs": read_logs,
        "list runs": listed(),
        "list runs state=Cancelled": listed(state="Cancelled"),
        "list runs flow=<busy>": listed(flow_name=setup.busy_flow),
        "list runs flow=<rare>": listed(flow_name=setup.rare_flow),
        "list runs label=rare": listed(label="rare"),
        IDLE: services,
    }


@contextmanager
def _selects(engine: Engine) -> Iterator[dict[str, Any]]:
    """Every distinct SELECT run on ``engine`` within the block, with its parameters."""
    seen: dict[str, Any] = {}

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, many: bool) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")) and not many:
            seen.setdefault(statement, parameters)

    event.listen(engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", capture)


def print_plans(url: str, setup: Setup, run_id: str, operations: list[str]) -> None:
    """For each operation, its replay's two slowest SELECTs (each run again alone, all rows fetched: SQLite does its
    work as rows are fetched) with their plans; everything rolled back."""
    engine = create_database_engine(url, 1)
    replays = _replays(setup, run_id)
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    try:
        for operation in operations:
            if operation not in replays:
                print(f"\n  {operation}: no replay (its SELECTs are those of create run and get run)")
                continue
            with _selects(engine) as selects, Session(engine) as session:
                try:
                    replays[operation](session)
                finally:
                    session.rollback()
            timed = []
            with engine.connect() as connection, connection.begin() as transaction:
                for statement, parameters in selects.items():
                    start = time.perf_counter()
                    connection.exec_driver_sql(statement, parameters).fetchall()
                    timed.append((time.perf_counter() - start, statement, parameters))
                for seconds, statement, parameters in sorted(timed, key=lambda item: -item[0])[:2]:
                    shown = re.sub(r"^SELECT (.{50}).*? FROM ", r"SELECT \1 ... FROM ", " ".join(statement.split()))
                    print(f"\n  {operation}, {seconds * 1000:.1f} ms in-process: {shown[:1200]}")
                    for row in connection.exec_driver_sql(prefix + statement, parameters):
                        print(f"      {str(row[-1])[:200]}")
                transaction.rollback()
    finally:
        engine.dispose()


# --- one database, and the report -----------------------------------------------------------------------------


@contextmanager
def _database(kind: str, folder: Path, keep: bool) -> Iterator[tuple[str, int | None]]:
    """A fresh database's URL: a SQLite file in ``folder``, or a new PostgreSQL cluster's (left running with
    ``keep``), with its postmaster's pid."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'home' / 'baton.db'}", None
        return
    from postgres_support import PostgresCluster, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    cluster = PostgresCluster(bin_dir).start()
    try:
        yield cluster.create_database(), int((cluster.data / "postmaster.pid").read_text().split()[0])
    finally:
        if keep:
            stop = f"{'runuser -u postgres -- ' if os.geteuid() == 0 else ''}{bin_dir}/pg_ctl -D {cluster.data} stop"
            print(f"  kept: PostgreSQL on port {cluster.port} in {cluster.root}; stop it with: {stop}")
        else:
            cluster.stop()


def run_database(kind: str, args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix=f"baton-scale-{kind}-"))
    try:
        with _database(kind, folder, args.keep) as (url, database_pid):
            server = ServerProcess(folder / "home", BATON__SERVER__DATABASE_URL=url)
            try:
                started = time.monotonic()
                setup = _set_up(server.start(), args.flows)
                print(f"{kind}: measuring the empty database ({args.samples} samples each)", flush=True)
                empty = _measure(server, setup, args.samples, None, started, database_pid)
                empty.size = _size(url)
                server.stop()
                print(f"{kind}: seeding {args.runs:,} runs and {args.log_lines:,} log lines", flush=True)
                seeding = time.perf_counter()
                sampled = seed(url, setup, args.runs, args.log_lines, args.weeks)
                seconds = time.perf_counter() - seeding
                started = time.monotonic()
                print(f"{kind}: measuring the seeded database", flush=True)
                seeded = _measure(server.start(), setup, args.samples, sampled, started, database_pid)
                seeded.size = _size(url)
            finally:
                server.stop()
            how = "then VACUUM ANALYZE" if kind == "postgresql" else "not analyzed: Baton never runs ANALYZE"
            print(
                f"\n{kind}: {args.runs:,} finished runs, {args.log_lines:,} log lines seeded in {seconds:.0f} s ({how})"
            )
            ratios = _report(empty, seeded)
            slower = [name for name, ratio in ratios.items() if args.explain or ratio > args.explain_above]
            if slower:
                print_plans(url, setup, sampled[len(sampled) // 2], slower)
    finally:
        if args.keep:
            print(f"  kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def _report(empty: Phase, seeded: Phase) -> dict[str, float]:
    """Print the table; the ratio of the p50s (seeded / empty) of each operation."""
    print(f"  database {empty.size / 2**20:,.1f} MiB empty, {seeded.size / 2**20:,.1f} MiB seeded")
    widths = (10, 8, 8, 12, 8, 8)
    headers = zip(("empty p50", "p90", "p99", "seeded p50", "p90", "p99"), widths, strict=True)
    print(f"  {'operation (ms)':<30}{''.join(f'{name:>{width}}' for name, width in headers)}{'ratio':>9}{'n':>5}")
    ratios = {}
    for operation, times in seeded.times.items():
        before = [_percentile(empty.times[operation], f) * 1000 for f in (0.5, 0.9, 0.99)]
        after = [_percentile(times, f) * 1000 for f in (0.5, 0.9, 0.99)]
        ratios[operation] = after[0] / before[0]
        figures = "".join(f"{value:>{width}.1f}" for value, width in zip(before + after, widths, strict=True))
        print(f"  {operation:<30}{figures}{ratios[operation]:>8.2f}x{len(times):>5}")
    # A few % of a core either way is noise; more, growing with the history, is not.
    ratios[IDLE] = seeded.idle_cpu / max(empty.idle_cpu, 0.1) if seeded.idle_cpu - empty.idle_cpu > 2 else 1.0
    print(f"  {IDLE:<30}{empty.idle_cpu:>10.1f}{'':>16}{seeded.idle_cpu:>12.1f}{'':>16}{ratios[IDLE]:>8.2f}x")
    return ratios


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="finished runs to seed")
    parser.add_argument("--log-lines", type=int, default=10_000_000, help="log lines to seed, spread over the runs")
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--samples", type=int, default=300, help="timed requests per operation and phase")
    parser.add_argument("--flows", type=int, default=10, help="busy flow names (3 versions each)")
    parser.add_argument("--weeks", type=float, default=8.0, help="the seeded runs' creation times span this")
    parser.add_argument("--explain-above", type=float, default=1.5, help="print plans above this p50 ratio")
    parser.add_argument("--explain", action="store_true", help="print the plans of every operation")
    parser.add_argument("--keep", action="store_true", help="keep the seeded database(s) for inspection")
    args = parser.parse_args()
    if args.runs < 1 or args.log_lines < 0 or args.samples < MIN_SAMPLES or args.flows < 1:
        parser.error(f"--runs and --flows must be at least 1, --samples {MIN_SAMPLES}, --log-lines 0")
    for kind in ("sqlite", "postgresql") if args.database == "both" else (args.database,):
        run_database(kind, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

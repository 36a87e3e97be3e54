"""Server time of every web UI page with 100,000 runs in the database (issue 10: under 50 ms each).

Run with ``.venv/bin/python bench/ui_pages.py`` (``--runs N``; ``--postgres`` for a throwaway PostgreSQL cluster,
``--database-url postgresql://...`` for your own).
Starts a real API server on 127.0.0.1 in a throwaway $BATON_HOME, registers flows through the API, adds the runs
straight into the database (copies of a run made through the API, spread over the last 48 hours and over every
state, each with its state history and labels; Running ones only in the last 10 minutes, as live runs are), waits
for the server to fold their run counts (and, on PostgreSQL, vacuums and analyzes as autovacuum would), signs in
through the form, then asks each page 20 times and prints the median and the 95th percentile of its answer time
over loopback, beside the 50 ms target. Exits 1 when a page's median passes the target.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from baton.server.database.connection import create_database_engine
from baton.server.database.orm import FlowRun, FlowRunCountDelta, FlowRunLabel, FlowRunState
from baton.server.models.flow_runs import label_rows
from support import HELLO_SOURCE, ServerProcess, register_source_flow

TARGET_MS = 50.0
FLOWS = 50
REPEATS = 20
STATES = ["Success"] * 70 + ["Failed"] * 10 + ["Cancelled"] * 5 + ["Scheduled"] * 10 + ["Running"] * 5
CHUNK = 5000
FINAL = ("Success", "Failed", "Cancelled")
RUNNING_WINDOW = timedelta(minutes=10)


def seed_runs(database_url: str, template_ids: list[str], count: int, now: datetime) -> None:
    """``count`` copies of the template runs, created over the last 48 h, in every state, with one state row and
    one label each."""
    engine = create_database_engine(database_url, 2)
    rng = random.Random(7)
    try:
        with engine.begin() as connection:
            templates = [dict(row._mapping) for row in connection.execute(select(FlowRun.__table__))]
            templates = [row for row in templates if row["id"] in template_ids]
            made = 0
            while made < count:
                runs, states, labels = [], [], []
                for _ in range(min(CHUNK, count - made)):
                    row = dict(rng.choice(templates))
                    created = now - timedelta(seconds=rng.uniform(0, 48 * 3600))
                    state = rng.choice(STATES)
                    if state == "Running" and now - created > RUNNING_WINDOW:
                        # A run still going two days on is a lost one: the recovery service would spend the whole
                        # measurement failing thousands of them. Live runs are recent, with a fresh heartbeat.
                        state = "Success"
                    label = f"team-{rng.randint(1, 20)}"
                    row.update(
                        id=str(uuid.uuid4()),
                        name=f"run-{made}",
                        state=state,
                        created=created,
                        updated=created,
                        scheduled_start_time=created,
                        labels=[label],
                        label_count=1,
                        idempotency_key=None,
                        schedule_key=None,
                        run_token_hash=None,
                        start_time=created if state != "Scheduled" else None,
                        end_time=created + timedelta(seconds=3) if state in FINAL else None,
                        heartbeat_at=now if state == "Running" else None,
                    )
                    runs.append(row)
                    states.append(
                        {"flow_run_id": row["id"], "name": state, "timestamp": created, "message": None, "data": None}
                    )
                    labels.extend(label_rows(row["id"], row["tenant_id"], created, [label]))
                    made += 1
                connection.execute(insert(FlowRun.__table__), runs)
                connection.execute(insert(FlowRunState.__table__), states)
                connection.execute(insert(FlowRunLabel.__table__), labels)
    finally:
        engine.dispose()


def settle(database_url: str, timeout: float = 120.0) -> float:
    """Wait for the server to fold the seeded runs' count changes, then vacuum and analyze as autovacuum would
    soon after a load this size (PostgreSQL; SQLite is analyzed by nobody, as in production): the pages are
    measured in the steady state, not during the load's aftermath. Seconds the fold took."""
    start = time.perf_counter()
    engine = create_database_engine(database_url, 1)
    try:
        while True:
            with engine.connect() as connection:
                pending = connection.execute(select(func.count()).select_from(FlowRunCountDelta)).scalar_one()
            if pending == 0:
                break
            if time.perf_counter() - start > timeout:
                raise SystemExit(f"the server left {pending} count changes unfolded after {timeout:.0f} s")
            time.sleep(0.2)
        folded = time.perf_counter() - start
        if engine.dialect.name == "postgresql":
            with engine.connect() as connection:
                autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
                autocommit.execute(text("VACUUM ANALYZE"))
                with contextlib.suppress(DBAPIError):  # needs superuser or pg_checkpoint; without, measure anyway
                    autocommit.execute(text("CHECKPOINT"))  # its writes done now, not during the measurement
        return folded
    finally:
        engine.dispose()


def sign_in(url: str, key: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=30)
    form = client.get("/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token is not None, "no CSRF token on the sign-in form"
    answer = client.post("/login", data={"api_key": key, "csrf_token": token[1], "next": "/"})
    assert answer.status_code == 303, f"sign-in failed: {answer.status_code} {answer.text[:200]}"
    return client


def time_page(client: httpx.Client, path: str) -> tuple[float, float, int]:
    """Median and p95 answer time (ms) of ``path`` over REPEATS requests after 3 warm-ups, and its size."""
    size = 0
    for _ in range(3):
        answer = client.get(path)
        assert answer.status_code == 200, f"{path}: {answer.status_code} {answer.text[:300]}"
        size = len(answer.content)
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        client.get(path)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--database-url", default=None, help="default: SQLite in the throwaway home")
    parser.add_argument("--postgres", action="store_true", help="a throwaway PostgreSQL cluster on 127.0.0.1")
    args = parser.parse_args(argv)
    if args.postgres:
        from postgres_support import throwaway_database

        with throwaway_database() as url:
            return measure(args.runs, url)
    return measure(args.runs, args.database_url)


def measure(runs: int, database_url: str | None) -> int:
    """Seed, settle and time every page on a server with ``database_url`` (None: SQLite); 1 when one is too slow."""
    with tempfile.TemporaryDirectory(prefix="baton-ui-bench-") as folder:
        env = {"BATON__SERVER__DATABASE_URL": database_url} if database_url else {}
        server = ServerProcess(Path(folder) / "home", **env).start()
        try:
            admin = server.client()
            names = [f"flow-{n:02d}" for n in range(FLOWS)]
            for name in names:
                register_source_flow(admin, name, source=HELLO_SOURCE)
            template_ids = [admin.create_flow_run(flow_name=name).id for name in names]
            admin.register_agent("bench-agent", "local", [])
            start = time.perf_counter()
            seed_runs(server.database_url, template_ids, runs, datetime.now(UTC))
            database = server.database_url.split(":")[0]
            print(f"seeded {runs:,} runs in {time.perf_counter() - start:.1f} s ({database})")
            print(f"the server folded their counts in {settle(server.database_url):.1f} s")
            client = sign_in(server.url, server.admin_key)
            run_id = template_ids[0]
            pages = [
                "/",
                "/runs",
                "/runs?state=Failed",
                "/runs?label=team-3",
                "/runs?flow=flow-07&window=24h",
                f"/runs/{run_id}",
                "/flows",
                "/flows/flow-07",
                "/agents",
                "/keys",
            ]
            worst = 0.0
            print(f"{'page':<34} {'median ms':>10} {'p95 ms':>8} {'KiB':>6} {'vs 50 ms':>9}")
            for path in pages:
                median, p95, size = time_page(client, path)
                worst = max(worst, median)
                print(f"{path:<34} {median:>10.1f} {p95:>8.1f} {size / 1024:>6.0f} {median / TARGET_MS:>8.2f}x")
            client.close()
        finally:
            server.stop()
    print(f"slowest page median: {worst:.1f} ms (target {TARGET_MS:.0f} ms)")
    return 1 if worst > TARGET_MS else 0


if __name__ == "__main__":
    sys.exit(main())

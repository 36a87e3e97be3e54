"""Scheduler: 1,000 flows each on a one-minute cron; how long each tick takes and how late the runs are created.

Run with ``.venv/bin/python bench/scheduler.py`` (SQLite in a throwaway directory) or ``--database postgresql`` (a
throwaway PostgreSQL cluster). The scheduler service (``server/services/scheduler.py``) runs in this process against
that database, exactly as the server runs it, on the real clock:

1. *fill*: the first tick with a horizon (``--fill-horizon``, default 600 s): every flow's next runs at once, as
   after a start or an upgrade;
2. *real time*: ``--minutes`` minutes with a horizon of 0 (runs created only once they are due) and a tick every
   ``--interval`` seconds, so each minute's 1,000 runs are created by the first tick after they fall due: how long
   the idle ticks and the busy ticks take, and how late each run is created (the end of the tick that created it,
   minus its scheduled time: an upper bound, as a tick's runs commit in chunks along the way).

With the default horizon (an hour) runs are created long before they are due, so they are never late; the second
part measures the worst case.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from sqlalchemy import delete, func, select

from baton.schemas.actions import FlowCreate
from baton.server.database.connection import create_database_engine, create_session_factory, transaction
from baton.server.database.migrate import upgrade
from baton.server.database.orm import FlowRun, FlowRunState, ScheduleMark
from baton.server.models import flows, tenants
from baton.server.models.schedules import SchedulePolicy
from baton.server.services.scheduler import SchedulerService


@contextmanager
def database(kind: str) -> Iterator[str]:
    if kind == "sqlite":
        with tempfile.TemporaryDirectory(prefix="baton-bench-scheduler-") as directory:
            yield f"sqlite:///{directory}/baton.db"
        return
    from postgres_support import throwaway_database

    with throwaway_database() as url:
        yield url


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def run(args: argparse.Namespace) -> None:
    with database(args.database) as url:
        engine = create_database_engine(url, 5)
        upgrade(engine)
        factory = create_session_factory(engine)
        with transaction(factory) as session:
            tenant_id = tenants.create_tenant(session, "bench").id
            for index in range(args.flows):
                payload = FlowCreate(name=f"flow-{index:04d}", entrypoint="f", source="x", schedule="* * * * *")
                flows.register_flow(session, tenant_id, payload)
        print(f"database: {args.database}; {args.flows} flows, each on the cron '* * * * *'")

        # 1. The fill: every flow's runs for the horizon in one tick.
        fill = SchedulerService(factory, SchedulePolicy(horizon_seconds=args.fill_horizon))
        result = fill.tick()
        print(
            f"fill (horizon {args.fill_horizon:.0f} s): {result.created} runs created in {result.seconds:.2f} s "
            f"({result.created / max(result.seconds, 1e-9):.0f} runs/s)"
        )
        again = fill.tick()
        print(f"the next tick: {again.created} runs created (the horizon moved on meanwhile) in {again.seconds:.2f} s")

        # 2. Real time, horizon 0: each minute's runs are created once due.
        with transaction(factory) as session:
            session.execute(delete(FlowRunState))
            session.execute(delete(FlowRun))
            session.execute(delete(ScheduleMark))
        service = SchedulerService(factory, SchedulePolicy(horizon_seconds=0, catchup_seconds=300))
        service.tick()  # marks every clock at "now": from here on, runs are created as they fall due
        idle: list[float] = []
        busy: list[float] = []
        lateness: list[float] = []
        deadline = time.monotonic() + args.minutes * 60
        next_tick = time.monotonic()
        while time.monotonic() < deadline:
            started = datetime.now(UTC)
            result = service.tick()
            ended = datetime.now(UTC)
            if result.created:
                busy.append(result.seconds)
                with transaction(factory) as session:
                    due = session.execute(
                        select(FlowRun.scheduled_start_time, func.count())
                        .where(FlowRun.created >= started)
                        .group_by(FlowRun.scheduled_start_time)
                    ).all()
                for when, count in due:
                    lateness.extend([(ended - when).total_seconds()] * int(count))
                print(f"  tick at {started:%H:%M:%S}: {result.created} runs in {result.seconds:.2f} s")
            else:
                idle.append(result.seconds)
            next_tick = max(next_tick + args.interval, time.monotonic())
            time.sleep(max(0.0, next_tick - time.monotonic()))
        with transaction(factory) as session:
            total = session.scalar(select(func.count()).select_from(FlowRun)) or 0
            keys = session.scalar(select(func.count(func.distinct(FlowRun.schedule_key))).select_from(FlowRun)) or 0
        engine.dispose()

    print(f"real time ({args.minutes} min, horizon 0, a tick every {args.interval:.0f} s):")
    print(f"  idle ticks: {len(idle)}, median {statistics.median(idle) * 1000:.0f} ms, max {max(idle) * 1000:.0f} ms")
    if busy:
        print(f"  busy ticks: {len(busy)}, median {statistics.median(busy):.2f} s, max {max(busy):.2f} s")
    if lateness:
        print(
            f"  runs created late by (tick end - scheduled): median {statistics.median(lateness):.2f} s, "
            f"p95 {percentile(lateness, 0.95):.2f} s, max {max(lateness):.2f} s over {len(lateness)} runs"
        )
    print(f"  runs: {total}, distinct schedule keys: {keys}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--flows", type=int, default=1000)
    parser.add_argument("--minutes", type=float, default=2.0, help="how long the real-time part runs")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between ticks (the server's default)")
    parser.add_argument("--fill-horizon", type=float, default=600.0)
    run(parser.parse_args())
    return 0


if __name__ == "__main__":
    sys.exit(main())

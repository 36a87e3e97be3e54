"""Prefect 3's side of bench/tasks.py: N tiny mapped tasks on each of its task runners; prints JSON figures.

Run by bench/tasks.py with the peers environment's Python (.cache/peers-venv). Prefect records every task run in its
own (ephemeral, SQLite) API, as Baton records them in its server: the figures include that bookkeeping.
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    count = int(sys.argv[1])
    runners = sys.argv[2].split(",")
    from prefect import flow, task
    from prefect.task_runners import ProcessPoolTaskRunner, ThreadPoolTaskRunner

    @task
    def tiny(i: int) -> int:
        return i + 1

    def make(runner: object) -> object:
        @flow(task_runner=runner, log_prints=False, persist_result=False)
        def mapped(n: int) -> int:
            return sum(tiny.map(list(range(n))).result())

        return mapped

    choices = {
        "thread:8": lambda: ThreadPoolTaskRunner(max_workers=8),
        "process:8": lambda: ProcessPoolTaskRunner(max_workers=8),
    }
    try:
        from prefect_dask import DaskTaskRunner

        choices["dask"] = lambda: DaskTaskRunner(
            cluster_kwargs={"n_workers": 2, "threads_per_worker": 4, "dashboard_address": None}
        )
    except ImportError:
        pass
    figures = {}
    make(ThreadPoolTaskRunner(max_workers=2))(2)  # warm-up: the ephemeral API starts
    for name in runners:
        if name not in choices:
            figures[name] = None
            continue
        started = time.perf_counter()
        try:
            total = make(choices[name]())(count)
        except Exception as exc:  # one runner's failure is told, the others are still measured
            print(f"Prefect's {name} runner failed: {exc!r}"[:500], file=sys.stderr)
            figures[name] = None
            continue
        assert total == count * (count + 1) // 2, total
        figures[name] = time.perf_counter() - started
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

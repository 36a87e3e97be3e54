"""Start-up of the flow-run process: ``python -m baton.engine`` from spawn to its first request to the API.

Run with ``.venv/bin/python bench/engine_start.py`` (``--runs 20``). Each round spawns the engine exactly as an agent
does (the run's id, a token and the API's URL in its environment) against a listener on 127.0.0.1 that records when
the first request arrives and answers 503, then stops the process. Printed: the wall time from spawn to first request
(p50, p90) and the CPU the process spent until then (user + system, from /proc). ``-X importtime`` figures of the
same process are printed with ``--imports``: the ten most expensive top-level imports.

Reference (issue 12): ~280 ms of imports when the issue was filed; a Prefect 3 flow-run process takes ~1 s.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid

from throughput import _cpu_seconds


def _environment(port: int, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATON")}
    env.update(
        BATON__API__URL=f"http://127.0.0.1:{port}",
        BATON__API__KEY="bench-token",
        BATON_FLOW_RUN_ID=str(uuid.uuid4()),
        **extra,
    )
    return env


def _one(listener: socket.socket, port: int, extra_env: dict[str, str]) -> tuple[float, float, str]:
    """Spawn the engine; return (seconds to first request, CPU seconds by then, stderr when asked)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, *extra_env.pop("_flags", "").split(), "-m", "baton.engine"],
        env=_environment(port, extra_env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        listener.settimeout(30)
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            elapsed = time.monotonic() - started
            cpu = _cpu_seconds(process.pid, children=False)
            connection.sendall(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    finally:
        process.kill()
        _, stderr = process.communicate(timeout=30)
    return elapsed, cpu, stderr.decode(errors="replace")


def _import_table(listener: socket.socket, port: int) -> None:
    _, _, stderr = _one(listener, port, {"_flags": "-X importtime"})
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        # Nested imports are indented by two more spaces per level: keep the ones the process itself made.
        if cumulative.strip().isdigit() and name.startswith(" ") and not name.startswith("  "):
            rows.append((int(cumulative), name.strip()))
    print("  most expensive imports made by the engine itself (cumulative, one process):")
    for micros, name in sorted(rows, reverse=True)[:10]:
        print(f"    {micros / 1000:7.1f} ms  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--imports", action="store_true", help="also print the -X importtime table")
    args = parser.parse_args()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        _one(listener, port, {})  # warm-up: the page cache holds the modules afterwards
        walls, cpus = [], []
        for _ in range(args.runs):
            wall, cpu, _ = _one(listener, port, {})
            walls.append(wall)
            cpus.append(cpu)
        walls.sort()
        p90 = walls[int(0.9 * (len(walls) - 1))]
        print(f"python -m baton.engine, spawn to first request, {args.runs} runs:")
        print(
            f"  wall p50 {statistics.median(walls) * 1000:6.1f} ms   p90 {p90 * 1000:6.1f} ms"
            f"   CPU p50 {statistics.median(cpus) * 1000:6.1f} ms (goal <= 60 ms; Prefect 3 ~1000 ms)"
        )
        if args.imports:
            _import_table(listener, port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

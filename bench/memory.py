"""Peak memory of the API server under 50 concurrent maximal requests of every kind (issue 8, item 7).

Run with ``.venv/bin/python bench/memory.py``. Starts a real API server (SQLite, default limits) on 127.0.0.1 in a
throwaway $BATON_HOME, fills it with maximal objects (a flow whose run config is at the body limit, runs whose
parameters are at the body limit, many runs with large parameters, long log lines up to the limit), then fires
rounds of 50 concurrent requests of one kind each, and a last round mixing every kind: lists at their largest
``limit`` with every heavy field included, reads of the largest run and flow, log pages, creations, flow
registrations and log writes with maximal bodies, and maximal bodies without a key. The server process's RSS is
sampled every 10 ms throughout (psutil when installed, else /proc/PID/status); the peak is printed beside the bound,
and the command exits 1 when the peak passes it.

Every loop is bounded in count and time; all traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import HELLO_SOURCE, ServerProcess

MIB = 1024 * 1024
BODY_LIMIT = 10 * MIB  # ServerSettings.max_body_bytes' default
# What the server's RSS must stay under. Each request holds at most one list page (ServerSettings.max_list_bytes,
# 4 MiB) or one object of at most two bodies' size (a run's parameters and run config), and at most
# max_requests_in_flight (8) requests, with max_body_bytes_in_flight (40 MiB) of bodies, are handled at once.
# Measured peak on the reference machine (2 cores): about 1.0 GiB; the bound leaves 50 % of margin.
DEFAULT_BOUND_MIB = 1536
CONCURRENCY = 50
ROUND_TIMEOUT = 300.0


def rss_bytes(pid: int) -> int:
    try:
        import psutil  # type: ignore[import-not-found, unused-ignore]

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Samples a process's RSS in a thread; ``peak`` since the last :meth:`reset`, and overall."""

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0
        self.overall = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def reset(self) -> None:
        self.peak = rss_bytes(self.pid)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                value = rss_bytes(self.pid)
            except (OSError, ValueError):
                return
            self.peak = max(self.peak, value)
            self.overall = max(self.overall, value)


def _blob(size: int, char: str = "x") -> str:
    return char * size


def flow_payload(name: str, env_size: int) -> dict[str, Any]:
    return {
        "name": name,
        "entrypoint": "hello",
        "source": HELLO_SOURCE,
        "source_filename": "/bench/hello.py",
        "labels": ["bench-never-claimed"],
        "parameters_schema": {"type": "object", "properties": {"blob": {"type": "string"}}},
        "tasks": [],
        "run_config": {"type": "local", "env": {"BIG": _blob(env_size)}},
    }


@dataclass
class World:
    big_run: str = ""
    big_flow: str = ""
    log_run: str = ""
    max_params: int = 0
    counts: Counter[str] = field(default_factory=Counter)


def fill(server: ServerProcess, admin_key: str, big_runs: int, medium_runs: int, log_batches: int) -> World:
    """Maximal objects: run config and parameters at the body limit, many medium runs, long log lines."""
    world = World()
    margin = 64 * 1024  # JSON around the blob stays under the limit
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=120) as http:
        big_flow = http.post("/api/flows", json=flow_payload("big", BODY_LIMIT - margin))
        big_flow.raise_for_status()
        world.big_flow = big_flow.json()["id"]
        http.post("/api/flows", json=flow_payload("plain", 10)).raise_for_status()
        world.max_params = BODY_LIMIT - margin
        for _ in range(big_runs):
            body = {"flow_name": "big", "parameters": {"blob": _blob(world.max_params)}}
            response = http.post("/api/flow_runs", json=body)
            response.raise_for_status()
            world.big_run = response.json()["id"]
        for _ in range(medium_runs):
            body = {"flow_name": "plain", "parameters": {"blob": _blob(256 * 1024)}}
            http.post("/api/flow_runs", json=body).raise_for_status()
        world.log_run = world.big_run
        for _ in range(log_batches):
            response = http.post(f"/api/flow_runs/{world.log_run}/logs", json=log_batch())
            world.counts[f"fill logs {response.status_code}"] += 1
    return world


def log_batch() -> dict[str, Any]:
    line = _blob(99_000)
    return {"logs": [{"timestamp": "2030-01-01T00:00:00Z", "message": line} for _ in range(100)]}


@dataclass(frozen=True)
class Kind:
    name: str
    method: str
    path: str
    body: Callable[[World], Any] | None = None
    authenticated: bool = True


def kinds(world: World) -> list[Kind]:
    params_body = {"flow_name": "big", "parameters": {"blob": _blob(world.max_params)}}
    return [
        Kind("list runs, all fields", "GET", "/api/flow_runs?limit=1000&include=parameters,states"),
        Kind("list runs", "GET", "/api/flow_runs?limit=1000"),
        Kind("read largest run", "GET", f"/api/flow_runs/{world.big_run}"),
        Kind("read largest flow", "GET", f"/api/flows/{world.big_flow}?include_source=true"),
        Kind("list flows", "GET", "/api/flows?all_versions=true"),
        Kind("read logs", "GET", f"/api/flow_runs/{world.log_run}/logs?limit=5000"),
        Kind("create run, max body", "POST", "/api/flow_runs", lambda w: params_body),
        Kind("register flow, max body", "POST", "/api/flows", lambda w: flow_payload("big", BODY_LIMIT - 64 * 1024)),
        Kind("write logs, max body", "POST", f"/api/flow_runs/{world.log_run}/logs", lambda w: log_batch()),
        Kind("no key, max body", "POST", "/api/flow_runs", lambda w: params_body, authenticated=False),
    ]


async def fire(server: ServerProcess, key: str, world: World, chosen: list[Kind]) -> Counter[str]:
    """CONCURRENCY requests, spread over ``chosen``, all at once; returns the count of each (kind, status)."""
    outcomes: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.url, timeout=ROUND_TIMEOUT, limits=limits) as http:

        async def one(kind: Kind) -> None:
            headers = {"Authorization": f"Bearer {key}"} if kind.authenticated else {}
            try:
                response = await http.request(
                    kind.method, kind.path, json=kind.body(world) if kind.body else None, headers=headers
                )
                outcomes[f"{kind.name}: {response.status_code}"] += 1
            except httpx.HTTPError as exc:
                # A request refused without a key is answered and closed before its body is read: a client still
                # sending a large body sees the connection closed (ReadError/WriteError) rather than the 401.
                outcome = "refused, closed" if not kind.authenticated else type(exc).__name__
                outcomes[f"{kind.name}: {outcome}"] += 1

        await asyncio.wait_for(
            asyncio.gather(*(one(chosen[i % len(chosen)]) for i in range(CONCURRENCY))), ROUND_TIMEOUT
        )
    return outcomes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bound-mib", type=int, default=DEFAULT_BOUND_MIB, help="fail above this peak RSS")
    parser.add_argument("--big-runs", type=int, default=5, help="runs with parameters at the body limit")
    parser.add_argument("--medium-runs", type=int, default=400, help="runs with 256 KiB of parameters")
    parser.add_argument("--log-batches", type=int, default=20, help="log writes of 100 lines of 99 KB")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-memory-") as home:
        server = ServerProcess(Path(home))
        server.start(timeout=60)
        try:
            assert server.process is not None
            key = server.admin_key
            started = time.monotonic()
            world = fill(server, key, args.big_runs, args.medium_runs, args.log_batches)
            print(f"filled in {time.monotonic() - started:.1f} s: {dict(world.counts)}")
            all_kinds = kinds(world)
            rounds = [[kind] for kind in all_kinds] + [all_kinds]
            with RssSampler(server.process.pid) as sampler:
                idle = rss_bytes(server.process.pid)
                print(f"server RSS after filling: {idle / MIB:.0f} MiB")
                for chosen in rounds:
                    sampler.reset()
                    began = time.monotonic()
                    outcomes = asyncio.run(fire(server, key, world, chosen))
                    label = chosen[0].name if len(chosen) == 1 else "mixed: every kind at once"
                    print(
                        f"  {label:<28} {time.monotonic() - began:6.1f} s  peak {sampler.peak / MIB:7.0f} MiB  "
                        + ", ".join(f"{k.split(': ')[-1]}x{n}" for k, n in sorted(outcomes.items()))
                    )
                peak = sampler.overall
        finally:
            server.stop()
    print(f"peak RSS {peak / MIB:.0f} MiB; bound {args.bound_mib} MiB")
    return 0 if peak <= args.bound_mib * MIB else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Runs a service's ``run_once`` every interval until stopped; one error policy for all services.

A failing iteration is logged with its traceback and retried at the next tick: a database hiccup must not kill
the lease service for the rest of the server's life.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

logger = logging.getLogger("baton.server.services")


async def run_periodically(name: str, run_once: Callable[[], None], interval: float, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    next_tick = loop.time()
    while not stop.is_set():
        try:
            await asyncio.to_thread(run_once)
        except Exception:
            logger.exception("service %s failed; retrying in %.1fs", name, interval)
        # Drift-free: the next tick is scheduled from the previous one, not from when this one ended.
        next_tick = max(next_tick + interval, loop.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=next_tick - loop.time())

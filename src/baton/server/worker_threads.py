"""The server's worker threads: where its handlers run their blocking work (database transactions) off the event loop.

:func:`run_in_worker` does what Starlette's ``run_in_threadpool`` (anyio's ``to_thread.run_sync``) did for every
request, with less machinery per call: a ``concurrent.futures`` pool and one future wrapped for the loop, instead of
anyio's capacity limiter, cancel scope and run-variable lookups. Each request crosses to a worker thread and back
once or twice (its authentication, its handler), and anyio's crossing cost ~10% of a cheap request's CPU on the
server (``GET /api/whoami`` 0.78 → 0.71 ms, a run read 1.79 → 1.62 ms, in-process, interleaved rounds).

What it keeps of anyio's behaviour:

* **Bounded**: at most :data:`MAX_WORKERS` threads, anyio's default; more calls queue.
* **Context**: the function runs in a copy of the caller's context variables.
* **No abandoned thread**: a thread cannot be stopped, so a cancelled caller waits for its function to end before
  the cancellation goes on, and nothing the request holds (an admission slot, a database connection) is released
  while its function still runs. A call cancelled before a thread took it never runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

MAX_WORKERS = 40

_P = ParamSpec("_P")
_T = TypeVar("_T")

_lock = threading.Lock()
_pools: dict[int, ThreadPoolExecutor] = {}  # by process id: a pool made before a fork has no threads in the child


def _executor() -> ThreadPoolExecutor:
    """This process's pool, made at its first use (the tests' servers are forked from a process that imported this)."""
    pid = os.getpid()
    pool = _pools.get(pid)
    if pool is None:
        with _lock:
            pool = _pools.get(pid)
            if pool is None:
                pool = _pools[pid] = ThreadPoolExecutor(MAX_WORKERS, thread_name_prefix="baton-worker")
    return pool


async def run_in_worker(func: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """``func(*args, **kwargs)`` in a worker thread; see the module's docstring."""
    context = contextvars.copy_context()
    work = _executor().submit(context.run, functools.partial(func, *args, **kwargs))
    try:
        return await asyncio.wrap_future(work)
    except asyncio.CancelledError:
        if not work.cancel():  # a thread has it: wait for the end, whatever else is cancelled meanwhile
            await _outlive_cancellation(work)
        raise


async def _outlive_cancellation(work: Future[_T]) -> None:
    while not work.done():
        waiter = asyncio.wrap_future(work)
        # The caller gets its cancellation, not this outcome: retrieved here, so that asyncio does not report it.
        waiter.add_done_callback(_retrieve)
        try:
            await asyncio.wait([waiter])
        except asyncio.CancelledError:
            continue


def _retrieve(waiter: asyncio.Future[Any]) -> None:
    if not waiter.cancelled():
        waiter.exception()

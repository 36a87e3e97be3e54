"""The server's worker threads (``baton.server.worker_threads``): results, context, and cancellation that never
abandons a running thread."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from baton.server import worker_threads
from baton.server.worker_threads import run_in_worker

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def test_the_result_and_the_exception_come_back_to_the_caller() -> None:
    async def main() -> tuple[int, str]:
        total = await run_in_worker(sum, [1, 2, 3])
        with pytest.raises(ValueError, match="refused") as caught:
            await run_in_worker(_refuse, "refused")
        return total, str(caught.value)

    assert asyncio.run(main()) == (6, "refused")


def _refuse(message: str) -> None:
    raise ValueError(message)


def test_the_function_runs_off_the_event_loop_with_a_copy_of_the_callers_context() -> None:
    async def main() -> tuple[str, bool, str]:
        REQUEST_ID.set("r-42")
        loop_thread = threading.get_ident()

        def look() -> tuple[str, bool]:
            seen = REQUEST_ID.get()
            REQUEST_ID.set("changed in the thread")
            return seen, threading.get_ident() != loop_thread

        seen, elsewhere = await run_in_worker(look)
        return seen, elsewhere, REQUEST_ID.get()

    assert asyncio.run(main()) == ("r-42", True, "r-42")


def test_a_cancelled_caller_waits_for_its_running_function_before_its_cancellation_goes_on() -> None:
    started, release, ended = threading.Event(), threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(10)
        ended.set()
        return "done"

    async def main() -> tuple[bool, bool, bool]:
        task = asyncio.create_task(run_in_worker(hold))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        await asyncio.sleep(0.2)
        waited = not task.done()  # still waiting for the thread
        task.cancel()  # cancelled again meanwhile: still waits
        await asyncio.sleep(0.05)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return waited, task.cancelled(), ended.is_set()

    assert asyncio.run(main()) == (True, True, True)


def test_a_call_cancelled_before_a_thread_took_it_never_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_threads, "_pools", {})
    monkeypatch.setattr(worker_threads, "MAX_WORKERS", 2)
    release = threading.Event()
    ran: list[str] = []

    def hold() -> None:
        release.wait(10)

    async def main() -> None:
        busy = [asyncio.create_task(run_in_worker(hold)) for _ in range(2)]
        await asyncio.sleep(0.1)
        queued = asyncio.create_task(run_in_worker(ran.append, "queued"))
        await asyncio.sleep(0.1)
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        release.set()
        await asyncio.gather(*busy)
        await asyncio.sleep(0.1)

    asyncio.run(main())

    assert ran == []


def test_a_forked_process_makes_its_own_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_threads, "_pools", {})
    parent = worker_threads._executor()
    monkeypatch.setattr(worker_threads.os, "getpid", lambda: -1)  # as in a child forked after the pool was made

    child = worker_threads._executor()

    assert child is not parent
    assert worker_threads._executor() is child

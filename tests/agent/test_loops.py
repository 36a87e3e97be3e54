"""Loop machinery: backoff with jitter, the error policy, the drift-free ticker."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from baton.agent.loops import (
    ErrorPolicy,
    IntervalTicker,
    retry_call,
    sleep_or_wake,
)
from baton.agent.shared import HEARTBEAT_SOON_SECONDS, Wakeups
from baton.agent.testing import InMemoryAgent
from baton.backoff import Backoff
from baton.exceptions import NotFoundError, ServerUnavailableError
from baton.settings import AgentSettings, BatonSettings

from .app_api import AppApi


def test_backoff_grows_exponentially_with_jitter_up_to_its_cap() -> None:
    backoff = Backoff(base_seconds=1.0, max_seconds=8.0)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        delays = {backoff.delay(attempt) for _ in range(50)}
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(delays) > 1, "jittered"


def test_error_policy_gives_up_after_max_failures_in_a_row_naming_each_kind() -> None:
    policy = ErrorPolicy(max_consecutive=3, backoff=Backoff(0.01, 0.01))
    refused = ServerUnavailableError("connection refused")
    refused.__cause__ = ConnectionRefusedError()
    policy.failed(refused, "poll")
    policy.failed(ServerUnavailableError("HTTP 503"), "poll")
    with pytest.raises(ServerUnavailableError) as caught:
        policy.failed(ServerUnavailableError("HTTP 503 again"), "poll")
    message = str(caught.value)
    assert "3 API calls (poll) failed in a row" in message
    assert "ServerUnavailableError/ConnectionRefusedError: connection refused" in message
    assert "ServerUnavailableError: HTTP 503" in message
    assert "again" not in message  # one example of each kind


def test_a_success_resets_only_its_own_duty() -> None:
    policy = ErrorPolicy(max_consecutive=2)
    policy.failed(ServerUnavailableError("x"), "poll")
    policy.failed(ServerUnavailableError("x"), "heartbeat")
    policy.succeeded("heartbeat")
    assert policy.consecutive("poll") == 1
    assert policy.consecutive("heartbeat") == 0
    with pytest.raises(ServerUnavailableError):
        policy.failed(ServerUnavailableError("x"), "poll")


def test_retry_call_retries_transient_errors_and_raises_others() -> None:
    policy = ErrorPolicy(max_consecutive=5, backoff=Backoff(0.001, 0.001))
    attempts: list[int] = []
    failures: list[str] = []

    async def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ServerUnavailableError("HTTP 502")
        return "ok"

    async def refused() -> str:
        raise NotFoundError(404, "no such run")

    assert asyncio.run(retry_call(flaky, policy, on_failure=lambda exc: failures.append(str(exc)))) == "ok"
    assert len(attempts) == 3
    assert failures == ["HTTP 502", "HTTP 502"]
    assert policy.consecutive() == 0
    with pytest.raises(NotFoundError):
        asyncio.run(retry_call(refused, policy))


def test_sleep_or_wake_returns_early_when_woken() -> None:
    async def scenario() -> tuple[bool, float, bool]:
        wake = asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, wake.set)
        started = time.monotonic()
        woken = await sleep_or_wake(5.0, wake)
        elapsed = time.monotonic() - started
        return woken, elapsed, await sleep_or_wake(0.01, wake)

    woken, elapsed, second = asyncio.run(scenario())
    assert woken and elapsed < 1.0
    assert not second, "the wake-up was consumed"


def test_sleep_or_wake_can_be_cancelled_even_as_it_is_woken() -> None:
    # asyncio.wait_for on 3.11 can swallow this cancellation; a loop built on it would never end.
    async def scenario() -> bool:
        wake = asyncio.Event()

        async def sleeper() -> None:
            while True:
                await sleep_or_wake(10, wake)

        task = asyncio.ensure_future(sleeper())
        await asyncio.sleep(0.01)
        wake.set()
        task.cancel()
        try:
            await asyncio.wait_for(task, 2)
        except asyncio.CancelledError:
            return True
        return False

    for _ in range(20):
        assert asyncio.run(scenario())


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_ticker_keeps_a_fixed_grid_and_skips_missed_ticks() -> None:
    clock = FakeClock()
    ticker = IntervalTicker(1.0, clock=clock)

    async def scenario() -> None:
        await ticker.wait()  # the first tick comes at once
        assert ticker.next_tick == 101.0
        clock.now = 101.3  # the tick's work ended past the next tick: it comes at once, then 102, not 102.3
        await ticker.wait()
        assert ticker.next_tick == 102.0
        clock.now = 105.5  # a long stall: ticks 102..105 are skipped, not bunched
        await ticker.wait()
        assert ticker.next_tick == 106.0

    asyncio.run(scenario())


def test_ticker_never_ticks_early_keeps_its_grid_and_wakes_early() -> None:
    # Ordering, not milliseconds: a busy machine may be late to a tick, never early, and never off the grid.
    async def scenario() -> None:
        ticker = IntervalTicker(0.05)
        origin = ticker.next_tick
        for _ in range(4):
            due = ticker.next_tick
            await ticker.wait()
            assert time.monotonic() >= due, "a tick came before its time"
            await asyncio.sleep(0.02)  # work inside a tick does not shift the grid
            steps = (ticker.next_tick - origin) / 0.05
            assert steps == pytest.approx(round(steps)) and round(steps) >= 1
        slow = IntervalTicker(600.0)
        await slow.wait()  # the first tick comes at once
        asyncio.get_running_loop().call_later(0.01, slow.wake)
        await asyncio.wait_for(slow.wait(), 60)  # woken long before its 600 s tick
        assert slow.next_tick == pytest.approx(time.monotonic() + 600.0, abs=60), "a wake-up is off the grid"

    asyncio.run(scenario())


def test_an_agent_with_default_settings_rides_out_six_minutes_of_outage(
    app_api: AppApi, settings: BatonSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The figure documented for operators. Each pause is at least half its step (equal jitter): with the jitter at
    # its lowest, the 29 pauses before the 30th failure in a row add up to 0.5 + 1 + 2 + 4 + 8 + 24 x 15 s.
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    defaults = settings.model_copy(update={"agent": AgentSettings()})
    policy = InMemoryAgent(settings=defaults, client=app_api).policy
    pauses: list[float] = []
    with pytest.raises(ServerUnavailableError, match="30 API calls"):
        while True:
            pauses.append(policy.failed(ServerUnavailableError("connection refused"), "poll"))
    assert (len(pauses), sum(pauses)) == (29, 375.5)


def test_heartbeats_asked_soon_share_one_wake_that_comes_after_the_delay() -> None:
    async def scenario() -> float:
        wakeups = Wakeups()
        ticker = wakeups.heartbeat = IntervalTicker(3600)
        await ticker.wait()  # its first tick returns at once; the next is an hour away
        started = time.monotonic()
        for _ in range(5):  # the Submitted of a burst of runs
            wakeups.wake_heartbeat_soon()
        await asyncio.wait_for(ticker.wait(), 10)
        waited = time.monotonic() - started
        with pytest.raises(TimeoutError):  # one wake for the five: none is left pending
            await asyncio.wait_for(ticker.wait(), HEARTBEAT_SOON_SECONDS * 3)
        wakeups.wake_heartbeat_soon()  # and the next ask schedules a wake of its own
        await asyncio.wait_for(ticker.wait(), 10)
        return waited

    assert asyncio.run(scenario()) >= HEARTBEAT_SOON_SECONDS * 0.9

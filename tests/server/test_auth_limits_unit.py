"""The failed-authentication limiter on its own, with a clock the tests move by hand."""

from __future__ import annotations

import threading

import pytest

from baton.server.auth_limits import FailedAuthLimiter, retry_after_header


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def limiter(clock: FakeClock, limit: int = 3, window: float = 10.0, max_addresses: int = 100) -> FailedAuthLimiter:
    return FailedAuthLimiter(limit, window, max_addresses=max_addresses, clock=clock)


def test_an_address_is_refused_once_it_reaches_the_limit(clock: FakeClock) -> None:
    limits = limiter(clock)
    for _ in range(2):
        limits.record_failure("10.0.0.1")
        assert limits.retry_after("10.0.0.1") is None

    limits.record_failure("10.0.0.1")

    assert limits.retry_after("10.0.0.1") == pytest.approx(10.0)


def test_other_addresses_are_not_affected(clock: FakeClock) -> None:
    limits = limiter(clock)
    for _ in range(3):
        limits.record_failure("10.0.0.1")

    assert limits.retry_after("10.0.0.2") is None
    assert limits.retry_after("unknown") is None


def test_the_window_slides_one_failure_at_a_time(clock: FakeClock) -> None:
    limits = limiter(clock)
    limits.record_failure("a")  # t=0
    clock.advance(4)
    limits.record_failure("a")  # t=4
    limits.record_failure("a")  # t=4
    clock.advance(1)  # t=5

    # The oldest failure (t=0) leaves the window at t=10.
    assert limits.retry_after("a") == pytest.approx(5.0)
    clock.advance(5)  # t=10
    assert limits.retry_after("a") is None

    # One more failure fills the window again, until the t=4 ones leave it.
    limits.record_failure("a")
    assert limits.retry_after("a") == pytest.approx(4.0)
    clock.advance(4)
    assert limits.retry_after("a") is None


def test_failures_outside_the_window_do_not_add_up(clock: FakeClock) -> None:
    limits = limiter(clock)
    for _ in range(10):
        limits.record_failure("a")
        clock.advance(5.1)  # never more than two within 10 s

    assert limits.retry_after("a") is None


def test_addresses_whose_failures_expired_are_pruned(clock: FakeClock) -> None:
    limits = limiter(clock)
    limits.record_failure("a")
    clock.advance(6)
    limits.record_failure("b")
    assert limits.tracked_addresses() == 2

    clock.advance(4)  # a's failure is 10 s old
    assert limits.tracked_addresses() == 1
    clock.advance(6)
    assert limits.tracked_addresses() == 0


def test_memory_is_bounded_by_forgetting_the_least_recent_address(clock: FakeClock) -> None:
    limits = limiter(clock, max_addresses=3)
    for _ in range(3):
        limits.record_failure("old")
    clock.advance(1)
    for address in ("b", "c"):
        limits.record_failure(address)
    limits.record_failure("old")  # "old" is the most recent now: "b" is the least recent

    limits.record_failure("d")

    assert limits.tracked_addresses() == 3
    assert limits.retry_after("old") is not None  # kept
    for address in ("b", "c", "d"):
        assert limits.retry_after(address) is None


def test_an_address_keeps_only_as_many_times_as_the_limit(clock: FakeClock) -> None:
    limits = limiter(clock, limit=2)
    for _ in range(1000):
        limits.record_failure("a")

    assert limits.retry_after("a") == pytest.approx(10.0)
    clock.advance(10)
    assert limits.retry_after("a") is None


def test_the_limiter_is_exact_under_concurrent_failures() -> None:
    limits = FailedAuthLimiter(limit=10_000, window_seconds=3600)
    threads = [threading.Thread(target=lambda: [limits.record_failure("a") for _ in range(1000)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert limits.retry_after("a") is None  # 8000 < 10000
    for _ in range(2000):
        limits.record_failure("a")
    assert limits.retry_after("a") is not None


@pytest.mark.parametrize(("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.01, "2"), (59.5, "60")])
def test_retry_after_is_whole_seconds_rounded_up(seconds: float, header: str) -> None:
    assert retry_after_header(seconds) == header


@pytest.mark.parametrize("args", [(0, 10.0), (1, 0.0), (1, -1.0)])
def test_nonsense_settings_are_refused(args: tuple[int, float]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        FailedAuthLimiter(*args)

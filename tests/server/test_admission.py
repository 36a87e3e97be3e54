"""The server-wide admission bounds (``limits.ByteBudget``): first come first served, never over the total."""

from __future__ import annotations

import asyncio

import pytest

from baton.server.limits import ByteBudget


def test_holders_never_exceed_the_total_and_waiters_go_in_order() -> None:
    async def scenario() -> list[str]:
        budget = ByteBudget(10)
        order: list[str] = []
        first = await budget.acquire(8)

        async def wait(name: str, size: int) -> None:
            taken = await budget.acquire(size)
            order.append(name)
            assert budget.available >= 0
            budget.release(taken)

        big, small = asyncio.create_task(wait("big", 10)), asyncio.create_task(wait("small", 1))
        await asyncio.sleep(0)
        assert order == []  # small fits, but waits behind big: no starvation of large requests
        budget.release(first)
        await asyncio.gather(big, small)
        return order

    assert asyncio.run(scenario()) == ["big", "small"]


def test_a_request_larger_than_the_total_takes_all_of_it() -> None:
    async def scenario() -> int:
        budget = ByteBudget(10)
        taken = await budget.acquire(1000)
        assert budget.available == 0
        budget.release(taken)
        return budget.available

    assert asyncio.run(scenario()) == 10


def test_a_waiter_that_goes_away_gives_nothing_up_and_blocks_nobody() -> None:
    async def scenario() -> int:
        budget = ByteBudget(4)
        held = await budget.acquire(4)
        gone = asyncio.create_task(budget.acquire(4))
        after = asyncio.create_task(budget.acquire(2))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        budget.release(held)
        budget.release(await after)
        return budget.available

    assert asyncio.run(scenario()) == 4

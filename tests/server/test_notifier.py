"""The claim wake-ups (``server/notifier.py``): a run due now wakes one waiting claim that can take it, the longest
waiting; a wake that finds nothing is passed on; news of the whole queue wakes every waiter of the tenant."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from baton.server.notifier import RunNotifier, RunWake, Waiter


def run(test: Callable[[RunNotifier], Any]) -> Any:
    async def main() -> Any:
        return test(RunNotifier(asyncio.get_running_loop()))

    return asyncio.run(main())


def woken(*waiters: Waiter) -> list[bool]:
    return [waiter.event.is_set() for waiter in waiters]


def enrolled(notifier: RunNotifier, tenant: str, *labels: list[str]) -> list[Waiter]:
    waiters = []
    for agent_labels in labels:
        waiter = notifier.enroll(tenant)
        waiter.labels = frozenset(agent_labels)
        waiters.append(waiter)
    return waiters


def test_a_new_run_wakes_only_the_longest_waiting_claim_that_can_take_it() -> None:
    def check(notifier: RunNotifier) -> None:
        gpu, plain_first, plain_second = enrolled(notifier, "t", ["gpu"], [], [])
        other_tenant = notifier.enroll("u")

        notifier.notify_run("t", RunWake(frozenset()))  # an unlabelled run: unlabelled agents only

        assert woken(gpu, plain_first, plain_second, other_tenant) == [False, True, False, False]
        assert plain_first.take_wake() == RunWake(frozenset(), frozenset({plain_first.id}))
        notifier.notify_run("t", RunWake(frozenset({"gpu"})))
        assert woken(gpu, plain_second) == [True, False]

    run(check)


def test_a_wake_that_claimed_nothing_goes_to_the_next_waiter_once_each() -> None:
    def check(notifier: RunNotifier) -> None:
        first, second = enrolled(notifier, "t", ["a"], ["a", "b"])
        notifier.notify_run("t", RunWake(frozenset({"a"})))
        wake = first.take_wake()
        assert wake is not None and woken(first, second) == [False, False]

        notifier.pass_on(first, wake)  # its claim took nothing: another agent was quicker, or a limit is full
        assert woken(first, second) == [False, True]
        passed = second.take_wake()
        assert passed is not None
        notifier.pass_on(second, passed)  # nobody left who has not had it: the wake ends
        assert woken(first, second) == [False, False]

    run(check)


def test_a_wake_that_claimed_nothing_ends_if_its_agent_could_take_the_run() -> None:
    def check(notifier: RunNotifier) -> None:
        able, other = enrolled(notifier, "t", ["a"], ["a"])
        notifier.notify_run("t", RunWake(frozenset({"a"})))
        wake = able.take_wake()
        assert wake is not None

        # Its agent could take the run and found nothing: the run is gone, or held for every agent alike.
        notifier.claimed_nothing(able, wake)
        assert woken(able, other) == [False, False]

    run(check)


def test_a_wake_that_claimed_nothing_goes_on_if_its_agent_could_not_take_the_run() -> None:
    def check(notifier: RunNotifier) -> None:
        unknown = notifier.enroll("t")  # woken before its first attempt read its agent's labels
        able = enrolled(notifier, "t", ["gpu"])[0]
        notifier.notify_run("t", RunWake(frozenset({"gpu"})))
        wake = unknown.take_wake()
        assert wake is not None and woken(able) == [False]

        unknown.labels = frozenset()  # its attempt read its agent: no labels, so it could not take a "gpu" run
        notifier.claimed_nothing(unknown, wake)
        assert woken(unknown, able) == [False, True]

    run(check)


def test_a_waiter_leaving_with_an_unused_wake_passes_it_on() -> None:
    def check(notifier: RunNotifier) -> None:
        leaving, staying = enrolled(notifier, "t", [], [])
        notifier.notify_run("t", RunWake(frozenset()))
        assert woken(leaving, staying) == [True, False]

        notifier.leave(leaving)  # its call ended (it returned runs, timed out, or its client went away)

        assert woken(staying) == [True]
        assert staying.take_wake() is not None

    run(check)


def test_a_waiter_whose_agent_is_not_known_yet_takes_any_run() -> None:
    def check(notifier: RunNotifier) -> None:
        unknown = notifier.enroll("t")  # enrolled before its first claim attempt read the agent
        notifier.notify_run("t", RunWake(frozenset({"anything"})))
        assert woken(unknown) == [True]

    run(check)


def test_news_of_the_queue_wakes_every_waiter_of_the_tenant_and_closing_wakes_all() -> None:
    def check(notifier: RunNotifier) -> None:
        one, two = enrolled(notifier, "t", ["a"], [])
        other = notifier.enroll("u")
        notifier.notify("t")
        assert woken(one, two, other) == [True, True, False]
        notifier.notify_all()
        assert woken(other) == [True]
        notifier.closing = True
        assert woken(notifier.enroll("t")) == [True]

    run(check)

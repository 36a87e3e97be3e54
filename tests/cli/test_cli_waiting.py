"""`baton run --watch` explains a due run that waits for an agent: after a few seconds, then again only when explain
says something new, at most every EXPLAIN_EVERY_SECONDS (a clock of the test's own: no waiting)."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from cli_support import T0, make_run
from rich.console import Console

from baton.cli.waiting import EXPLAIN_EVERY_SECONDS, FIRST_EXPLAIN_AFTER_SECONDS, WaitExplainer
from baton.exceptions import ServerUnavailableError
from baton.schemas.responses import RunExplanation


@dataclass
class Explains:
    summaries: list[str | Exception]
    calls: int = 0
    asked: list[str] = field(default_factory=list)

    def explain_flow_run(self, flow_run_id: str) -> RunExplanation:
        self.asked.append(flow_run_id)
        answer = self.summaries[min(self.calls, len(self.summaries) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return RunExplanation(
            flow_run_id=flow_run_id, state="Scheduled", labels=[], scheduled_start_time=T0, late=False,
            summary=answer, agents=[],
        )  # fmt: skip


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def explainer(summaries: list[str | Exception]) -> tuple[WaitExplainer, Explains, Clock, io.StringIO]:
    client, clock, out = Explains(summaries), Clock(), io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    watcher = WaitExplainer(client, console, clock=clock, now=lambda: T0 + timedelta(minutes=1))  # type: ignore[arg-type]
    return watcher, client, clock, out


def test_a_due_run_still_scheduled_after_a_few_seconds_is_explained_once_per_new_answer() -> None:
    watcher, client, clock, out = explainer(["no live agent can take it", "no live agent can take it", "1 live"])
    run = make_run("Scheduled")

    watcher(run)  # first sight: too soon
    clock.now += FIRST_EXPLAIN_AFTER_SECONDS - 0.1
    watcher(run)
    assert client.calls == 0

    clock.now += 0.2
    watcher(run)
    assert out.getvalue() == "waiting for an agent: no live agent can take it\n"

    clock.now += 1
    watcher(run)  # rate-limited
    clock.now += EXPLAIN_EVERY_SECONDS
    watcher(run)  # asked again: same answer, not printed again
    clock.now += EXPLAIN_EVERY_SECONDS
    watcher(run)  # a new answer is printed
    assert client.calls == 3
    assert out.getvalue().splitlines() == [
        "waiting for an agent: no live agent can take it",
        "waiting for an agent: 1 live",
    ]


def test_runs_that_are_not_waiting_are_never_explained() -> None:
    watcher, client, clock, _out = explainer(["x"])
    future: Any = make_run("Scheduled", scheduled_start_time=T0 + timedelta(hours=1))
    for run in (make_run("Running"), make_run("Pending"), future, make_run("Success")):
        for _ in range(3):
            watcher(run)
            clock.now += 10 * EXPLAIN_EVERY_SECONDS
    assert client.calls == 0


def test_an_explain_that_fails_does_not_end_the_watch() -> None:
    watcher, client, clock, out = explainer([ServerUnavailableError("down"), "no agent has ever registered"])
    run = make_run("Scheduled")
    watcher(run)
    clock.now += FIRST_EXPLAIN_AFTER_SECONDS
    watcher(run)
    clock.now += EXPLAIN_EVERY_SECONDS
    watcher(run)

    assert client.calls == 2
    assert out.getvalue() == "waiting for an agent: no agent has ever registered\n"

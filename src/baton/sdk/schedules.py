"""The schedule classes flows are decorated with: thin constructors of the API's clocks (``schemas/schedules.py``).

Usage::

    from baton import CronSchedule, IntervalSchedule, RRuleSchedule, flow

    @flow(schedule=[CronSchedule("0 9 * * 1-5", timezone="Europe/Berlin"), IntervalSchedule(3600)])
    def report() -> None: ...

An invalid schedule raises :class:`~baton.exceptions.InvalidScheduleError` (a ValueError) at once, with the
message the API would give; one whose clocks never fire again is refused by ``baton register`` (exit 2).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from baton.exceptions import InvalidScheduleError
from baton.schemas.schedules import (
    DEFAULT_ANCHOR,
    CronClock,
    IntervalClock,
    RRuleClock,
    Schedule,
    describe_errors,
    parse_schedule,
    schedule_problem,
)


def _options(
    parameter_defaults: Mapping[str, Any] | None,
    labels: Iterable[str] | None,
    start_date: datetime | None,
    end_date: datetime | None,
) -> dict[str, Any]:
    return {
        "parameter_defaults": dict(parameter_defaults or {}),
        "labels": list(labels or []),
        "start_date": start_date,
        "end_date": end_date,
    }


class CronSchedule(CronClock):
    """Runs at the wall-clock times of a five-field cron expression in ``timezone``."""

    def __init__(
        self,
        cron: str,
        timezone: str = "UTC",
        *,
        parameter_defaults: Mapping[str, Any] | None = None,
        labels: Iterable[str] | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> None:
        try:
            super().__init__(cron=cron, timezone=timezone, **_options(parameter_defaults, labels, start_date, end_date))
        except ValidationError as exc:
            raise InvalidScheduleError(describe_errors(exc)) from None


class IntervalSchedule(IntervalClock):
    """Runs every ``every`` seconds (exact elapsed time, DST-independent) through ``anchor``."""

    def __init__(
        self,
        every: int,
        anchor: datetime = DEFAULT_ANCHOR,
        *,
        parameter_defaults: Mapping[str, Any] | None = None,
        labels: Iterable[str] | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> None:
        try:
            super().__init__(every=every, anchor=anchor, **_options(parameter_defaults, labels, start_date, end_date))
        except ValidationError as exc:
            raise InvalidScheduleError(describe_errors(exc)) from None


class RRuleSchedule(RRuleClock):
    """Runs at the times of an RFC 5545 recurrence rule (``DTSTART;TZID=...`` sets its zone)."""

    def __init__(
        self,
        rrule: str,
        timezone: str = "UTC",
        *,
        parameter_defaults: Mapping[str, Any] | None = None,
        labels: Iterable[str] | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
    ) -> None:
        try:
            super().__init__(
                rrule=rrule, timezone=timezone, **_options(parameter_defaults, labels, start_date, end_date)
            )
        except ValidationError as exc:
            raise InvalidScheduleError(describe_errors(exc)) from None


def to_schedule(value: Any) -> Schedule | None:
    """A flow's ``schedule=`` argument as a checked :class:`Schedule` (None: no schedule).

    Accepts a schedule object, a list of them, a cron string, a dict (``{"cron": ...}``, ``{"interval": N}``, the
    API's JSON form) or a :class:`Schedule`.

    Raises:
        InvalidScheduleError: with the message the API would answer with (422).
    """
    if value is None:
        return None
    if isinstance(value, CronClock | IntervalClock | RRuleClock):
        value = [value]
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        value = [
            item.model_dump() if isinstance(item, CronClock | IntervalClock | RRuleClock) else item for item in value
        ]
    # Only the form is checked here: decoration also runs in every flow-run process, where a schedule that has
    # ended since (its last run is this one) must not stop the flow from loading. Registration checks that each
    # clock still fires (check_fires).
    try:
        return parse_schedule(value)
    except ValueError as exc:
        raise InvalidScheduleError(str(exc)) from None


def check_fires(schedule: Schedule | None, where: str) -> None:
    """Raise InvalidScheduleError when a clock of ``schedule`` has no occurrence from now on (at registration)."""
    problem = None if schedule is None else schedule_problem(schedule)
    if problem is not None:
        raise InvalidScheduleError(f"{where}: invalid schedule: {problem}")

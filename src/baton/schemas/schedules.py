"""The schedule contract: one source of truth for the SDK (``@flow(schedule=...)``) and the API (``FlowCreate``).

A schedule is a list of clocks; each clock fires on its own times and may carry parameter defaults and labels for
the runs it creates (as Prefect 1's clocks)::

    {"clocks": [
        {"type": "cron", "cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"},
        {"type": "interval", "every": 900, "anchor": "2026-01-01T00:00:00Z", "labels": ["fast"]},
        {"type": "rrule", "rrule": "DTSTART;TZID=America/New_York:20260101T080000\\nRRULE:FREQ=WEEKLY;BYDAY=MO",
         "parameter_defaults": {"full": true}}
    ]}

Shorthands (accepted and normalized to the form above): a cron string, ``{"cron": ...}`` and ``{"interval": N}``
(the forms stored before schedules fired), a single clock, or a list of clocks.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, TypeAdapter, ValidationError, field_validator, model_validator

from baton.labels import MAX_LABELS, normalize_labels
from baton.schemas.core import StrictModel, check_storable_text

MAX_CLOCKS = 20
# Shorter than this between two runs of one clock is a mistake (and a flood of runs): cron's minute is the usual
# finest grain; intervals and rrules may go down to this.
MIN_INTERVAL_SECONDS = 10
MAX_INTERVAL_SECONDS = 10 * 366 * 24 * 3600
# The interval anchor when none is given: intervals then fall on whole multiples since the Unix epoch.
DEFAULT_ANCHOR = datetime(1970, 1, 1, tzinfo=UTC)
# How many occurrences the rrule frequency check looks at.
_FREQUENCY_SAMPLE = 200
# A clock must fire within this long of its start (or of its registration): looking further costs (rrules walk
# their empty periods) and a schedule that waits longer is more likely a mistake than a plan.
FIRES_WITHIN = timedelta(days=10 * 365 + 3)


# The instants a schedule may name: far enough either way for any real schedule, and far from datetime's own ends
# (year 1 with a +14:00 offset cannot even be converted to UTC).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError("needs a timezone (e.g. 2026-01-01T09:00:00Z or +01:00)")
    if not EARLIEST.year <= value.year < LATEST.year:
        raise ValueError(f"must be between {EARLIEST.date()} and {LATEST.date()}")
    return value.astimezone(UTC)


def _timezone(name: str) -> str:
    from baton.schedules import zone

    zone(name)
    return name


class _ClockBase(StrictModel):
    parameter_defaults: dict[str, Any] = Field(
        default_factory=dict, description="overlaid on the flow's defaults for the runs this clock creates"
    )
    labels: list[str] = Field(
        default_factory=list,
        max_length=MAX_LABELS,
        description="labels of the runs this clock creates (empty: the flow's, as for any new run)",
    )
    start_date: datetime | None = Field(default=None, description="no occurrence before this instant")
    end_date: datetime | None = Field(default=None, description="no occurrence after this instant")

    _norm_labels = field_validator("labels")(normalize_labels)
    _aware_dates = field_validator("start_date", "end_date")(_aware)

    @field_validator("parameter_defaults")
    @classmethod
    def _storable(cls, value: dict[str, Any]) -> dict[str, Any]:
        check_storable_text(value)
        return value

    @model_validator(mode="after")
    def _ordered_dates(self) -> _ClockBase:
        if self.start_date is not None and self.end_date is not None and self.end_date < self.start_date:
            raise ValueError(f"end_date {self.end_date.isoformat()} is before start_date {self.start_date.isoformat()}")
        return self

    def clock_id(self) -> str:
        """A short stable id of the clock's content: part of the scheduled runs' unique key. A changed clock is
        another clock (its runs are replaced); an unchanged one keeps its id across flow versions."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def describe(self) -> str:
        """One human line naming the clock (each kind says more)."""
        return f"{type(self).__name__} {self.clock_id()}"


class CronClock(_ClockBase):
    type: Literal["cron"] = "cron"
    cron: str = Field(min_length=1, max_length=200, description="five fields (minute hour day month weekday) or @daily")
    timezone: str = Field(default="UTC", max_length=100, description="IANA time zone the cron's wall times are in")

    _tz = field_validator("timezone")(_timezone)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        value = " ".join(value.split())
        if not value.startswith("@") and len(value.split(" ")) != 5:
            raise ValueError(
                f"invalid cron {value!r}: give five fields (minute hour day-of-month month day-of-week), "
                "e.g. '0 9 * * 1-5'"
            )
        # Imported here: the flow-run process imports this module (through the SDK) and never checks a cron.
        from croniter import CroniterError, croniter

        try:
            croniter(value, datetime(2026, 1, 1))
        except (CroniterError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"invalid cron {value!r}: {exc}") from None
        return value

    def describe(self) -> str:
        return f"cron {self.cron!r} ({self.timezone})"


class IntervalClock(_ClockBase):
    type: Literal["interval"] = "interval"
    every: int = Field(
        ge=MIN_INTERVAL_SECONDS, le=MAX_INTERVAL_SECONDS, strict=True, description="seconds between runs"
    )
    anchor: datetime = Field(default=DEFAULT_ANCHOR, description="an instant the interval passes through")

    @field_validator("anchor")
    @classmethod
    def _aware_anchor(cls, value: datetime) -> datetime:
        aware = _aware(value)
        assert aware is not None
        return aware

    def describe(self) -> str:
        return f"every {self.every} s from {self.anchor.isoformat()}"


class RRuleClock(_ClockBase):
    type: Literal["rrule"] = "rrule"
    rrule: str = Field(min_length=1, max_length=5000, description="RFC 5545 text; DTSTART;TZID=... sets its zone")
    timezone: str = Field(default="UTC", max_length=100, description="the zone of a DTSTART without TZID or 'Z'")

    _tz = field_validator("timezone")(_timezone)

    @model_validator(mode="after")
    def _valid_rrule(self) -> RRuleClock:
        from baton.schedules import parse_rrule, rrule_sample, wall_to_utc

        rule, where = parse_rrule(self.rrule, self.timezone, self.start_date)
        previous: datetime | None = None
        try:
            for occurrence in rrule_sample(rule, where, datetime.now(UTC), _FREQUENCY_SAMPLE):
                when = wall_to_utc(occurrence, where)
                if previous is not None and timedelta(0) < when - previous < timedelta(seconds=MIN_INTERVAL_SECONDS):
                    raise ValueError(
                        f"rrule fires more often than every {MIN_INTERVAL_SECONDS} s "
                        f"({previous.isoformat()} then {when.isoformat()})"
                    )
                previous = when
        except (TypeError, OverflowError) as exc:
            raise ValueError(f"rrule cannot be evaluated: {exc}") from None
        return self

    def describe(self) -> str:
        return f"rrule {' '.join(self.rrule.split())!r}"


Clock = Annotated[CronClock | IntervalClock | RRuleClock, Field(discriminator="type")]


def _legacy_clock(value: Any) -> Any:
    """A clock given in a shorthand: a cron string, ``{"cron": ...}``, ``{"interval": N}``."""
    if isinstance(value, str):
        return {"type": "cron", "cron": value}
    if isinstance(value, dict) and "type" not in value:
        if "cron" in value:
            return {"type": "cron", **value}
        if "interval" in value:
            if "every" in value:
                raise ValueError("give 'interval' or 'every', not both")
            rest = {k: v for k, v in value.items() if k != "interval"}
            return {"type": "interval", "every": value["interval"], **rest}
        if "rrule" in value:
            return {"type": "rrule", **value}
    return value


class Schedule(StrictModel):
    clocks: list[Clock] = Field(min_length=1, max_length=MAX_CLOCKS)
    _by_id: dict[str, CronClock | IntervalClock | RRuleClock] | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"clocks": [_legacy_clock(item) for item in value]}
        if isinstance(value, dict) and "clocks" in value:
            clocks = value["clocks"]
            if isinstance(clocks, list):
                return {**value, "clocks": [_legacy_clock(item) for item in clocks]}
            return value
        if isinstance(value, str | dict):
            return {"clocks": [_legacy_clock(value)]}
        return value

    @model_validator(mode="after")
    def _distinct(self) -> Schedule:
        ids = [clock.clock_id() for clock in self.clocks]
        if len(set(ids)) != len(ids):
            raise ValueError("two clocks of the schedule are the same: give each once")
        return self

    def by_id(self) -> dict[str, CronClock | IntervalClock | RRuleClock]:
        """The clocks by id (computed once: the scheduler asks on every tick)."""
        if self._by_id is None:
            self._by_id = {clock.clock_id(): clock for clock in self.clocks}
        return self._by_id


_SCHEDULE = TypeAdapter(Schedule)


def schedule_problem(schedule: Schedule, now: datetime | None = None) -> str | None:
    """What makes ``schedule`` useless from ``now`` on (a clock that will never fire again), or None.

    Checked at registration only: a stored schedule whose clocks have all ended is still a valid schedule.
    """
    from baton.schedules import next_times

    now = now or datetime.now(UTC)
    for index, clock in enumerate(schedule.clocks):
        start = max(now, clock.start_date or now)
        if next(next_times(clock, now, start + FIRES_WITHIN, limit=1), None) is None:
            return (
                f"clocks.{index} ({clock.describe()}): has no occurrence in the "
                f"{FIRES_WITHIN.days // 365} years after {start.isoformat(timespec='seconds')}"
            )
    return None


def parse_schedule(value: Any) -> Schedule | None:
    """A schedule from any accepted input form; None stays None.

    Raises:
        ValueError: one line per problem, naming the clock (``clocks.N``) and what is wrong with it.
    """
    if value is None:
        return None
    if isinstance(value, Schedule):
        return value
    try:
        return _SCHEDULE.validate_python(value)
    except ValidationError as exc:
        raise ValueError(describe_errors(exc)) from None


def describe_errors(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        loc = list(error["loc"])
        if len(loc) > 2 and loc[0] == "clocks" and loc[2] in ("cron", "interval", "rrule"):
            del loc[2]  # the union's tag, not a field
        location = ".".join(str(part) for part in loc)
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "invalid schedule: " + "; ".join(parts)


class BackfillRequest(StrictModel):
    """``POST /api/schedules/{flow}/backfill``: create the runs of every clock's times in [start, end]."""

    start: datetime
    end: datetime
    max_runs: int | None = Field(
        default=None, ge=1, le=1_000_000, strict=True, description="refuse when more runs than this would be due"
    )

    @field_validator("start", "end", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        if isinstance(value, int | float):
            raise ValueError("a timestamp is an ISO 8601 string with a timezone (e.g. 2026-01-01T09:00:00Z)")
        return value

    @field_validator("start", "end")
    @classmethod
    def _aware_bounds(cls, value: datetime) -> datetime:
        aware = _aware(value)
        assert aware is not None
        return aware

    @model_validator(mode="after")
    def _ordered(self) -> BackfillRequest:
        if self.end < self.start:
            raise ValueError(f"end {self.end.isoformat()} is before start {self.start.isoformat()}")
        return self

"""The schedule contract (schemas/schedules.py), the SDK's schedule classes and when clocks fire (schedules.py),
including real DST change days."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from baton import CronSchedule, IntervalSchedule, RRuleSchedule, flow
from baton.exceptions import InvalidScheduleError
from baton.schedules import next_times, wall_to_utc
from baton.schemas.actions import FlowCreate
from baton.schemas.schedules import MAX_CLOCKS, BackfillRequest, Schedule, parse_schedule, schedule_problem


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def times(value: Any, after: datetime, until: datetime) -> list[str]:
    schedule = parse_schedule(value)
    assert schedule is not None
    return [when.strftime("%m-%d %H:%M") for when in next_times(schedule.clocks[0], after, until)]


# --- the contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("*/5 * * * *", {"type": "cron", "cron": "*/5 * * * *", "timezone": "UTC"}),
        ({"cron": "0 9 * * 1-5", "timezone": "Europe/Berlin"}, {"type": "cron", "timezone": "Europe/Berlin"}),
        ({"interval": 30}, {"type": "interval", "every": 30, "anchor": "1970-01-01T00:00:00Z"}),
        ([{"type": "interval", "every": 600, "labels": ["b", "a", "a"]}], {"every": 600, "labels": ["a", "b"]}),
    ],
)
def test_legacy_and_short_forms_are_normalized_to_clocks(value: Any, expected: dict[str, Any]) -> None:
    schedule = parse_schedule(value)
    assert schedule is not None
    clock = schedule.model_dump(mode="json")["clocks"][0]
    assert {key: clock[key] for key in expected} == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("every tuesday-ish", "clocks.0.cron: invalid cron 'every tuesday-ish': give five fields"),
        ("61 * * * *", "clocks.0.cron: invalid cron '61 * * * *'"),
        ("* * * * * *", "give five fields"),
        ({"cron": "0 9 * * *", "timezone": "Mars/Olympus"}, "clocks.0.timezone: unknown time zone 'Mars/Olympus'"),
        ({"interval": 5}, "clocks.0.every: Input should be greater than or equal to 10"),
        ({"interval": True}, "clocks.0.every"),
        ({"interval": 60, "anchor": "2026-01-01T00:00:00"}, "clocks.0.anchor: needs a timezone"),
        (
            {"cron": "* * * * *", "start_date": "2026-02-01T00:00:00Z", "end_date": "2026-01-01T00:00:00Z"},
            "clocks.0: end_date 2026-01-01T00:00:00+00:00 is before start_date",
        ),
        ([{"type": "rrule", "rrule": "FREQ=DAILY"}], "clocks.0: an rrule needs a DTSTART"),
        ([{"type": "rrule", "rrule": "DTSTART:20260101T000000Z\nRRULE:FREQ=FORTNIGHTLY"}], "not an RFC 5545"),
        (
            [{"type": "rrule", "rrule": "DTSTART:20260101T000000Z\nRRULE:FREQ=SECONDLY;INTERVAL=5"}],
            "rrule fires more often than every 10 s",
        ),
        ([{"type": "rrule", "rrule": "DTSTART;TZID=Nowhere/Land:20260101T090000\nRRULE:FREQ=DAILY"}], "unknown"),
        ({"clocks": []}, "clocks: List should have at least 1 item"),
        ({"clocks": ["* * * * *"] * 2}, "two clocks of the schedule are the same"),
        ({"cron": "* * * * *", "colour": "red"}, "clocks.0.colour: Extra inputs are not permitted"),
        (42, "Input should be a valid dictionary"),
    ],
)
def test_invalid_schedules_name_the_clock_and_the_problem(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match="invalid schedule") as caught:
        parse_schedule(value)
    assert message in str(caught.value)


def test_a_schedule_holds_a_bounded_number_of_clocks() -> None:
    clocks = [{"interval": 60 + i} for i in range(MAX_CLOCKS + 1)]
    with pytest.raises(ValueError, match=f"at most {MAX_CLOCKS} items"):
        parse_schedule(clocks)
    assert len(parse_schedule(clocks[:MAX_CLOCKS]).clocks) == MAX_CLOCKS  # type: ignore[union-attr]


def test_a_clock_that_never_fires_again_is_refused_at_registration_only() -> None:
    never = parse_schedule({"cron": "0 0 31 2 *"})
    ended = parse_schedule({"cron": "0 9 * * *", "end_date": "2020-01-01T00:00:00Z"})
    assert never is not None and ended is not None  # valid schedules: a stored one still parses
    expected = "clocks.0 (cron '0 0 31 2 *' (UTC)): has no occurrence in the 10 years after"
    assert expected in (schedule_problem(never) or "")
    assert "has no occurrence in the 10 years after" in (schedule_problem(ended) or "")
    with pytest.raises(ValueError, match="has no occurrence in the 10 years after"):
        FlowCreate(name="f", entrypoint="f", source="x", schedule={"cron": "0 0 31 2 *"})


def test_flow_create_takes_every_input_form_and_stores_one() -> None:
    created = FlowCreate(name="f", entrypoint="f", source="x", schedule="0 9 * * *")
    assert isinstance(created.schedule, Schedule)
    assert created.model_dump(mode="json")["schedule"]["clocks"][0]["cron"] == "0 9 * * *"
    assert FlowCreate(name="f", entrypoint="f", source="x").schedule is None


def test_backfill_request_needs_aware_ordered_bounds() -> None:
    with pytest.raises(ValueError, match=r"end .* is before start"):
        BackfillRequest.model_validate({"start": "2026-02-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"})
    with pytest.raises(ValueError, match="needs a timezone"):
        BackfillRequest.model_validate({"start": "2026-01-01T00:00:00", "end": "2026-02-01T00:00:00Z"})
    with pytest.raises(ValueError, match="ISO 8601"):
        BackfillRequest.model_validate({"start": 0, "end": "2026-02-01T00:00:00Z"})


# --- the SDK ----------------------------------------------------------------------------------------


def test_flow_takes_schedule_objects_a_list_or_a_cron_string() -> None:
    @flow(
        schedule=[
            CronSchedule("0 9 * * 1-5", "Europe/Berlin", parameter_defaults={"n": 1}),
            IntervalSchedule(3600, labels=["fast"]),
            RRuleSchedule("DTSTART;TZID=America/New_York:20260101T080000\nRRULE:FREQ=WEEKLY;BYDAY=MO"),
        ]
    )
    def report(n: int = 0) -> int:
        return n

    assert report.schedule is not None
    assert [clock.type for clock in report.schedule.clocks] == ["cron", "interval", "rrule"]
    assert report.schedule.clocks[1].labels == ["fast"]

    @flow(schedule="*/15 * * * *")
    def often() -> None: ...

    assert often.schedule is not None and often.schedule.clocks[0].cron == "*/15 * * * *"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: CronSchedule("every tuesday-ish"), "invalid cron 'every tuesday-ish'"),
        (lambda: CronSchedule("0 9 * * *", "Europe/Nowhere"), "unknown time zone 'Europe/Nowhere'"),
        (lambda: IntervalSchedule(1), "greater than or equal to 10"),
        (lambda: RRuleSchedule("FREQ=DAILY"), "needs a DTSTART"),
        (lambda: flow(schedule="every tuesday-ish")(named_function), "invalid cron"),
    ],
)
def test_invalid_schedules_fail_at_decoration_with_a_value_error(make: Any, message: str) -> None:
    with pytest.raises(InvalidScheduleError, match="invalid schedule") as caught:
        make()
    assert isinstance(caught.value, ValueError)
    assert message in str(caught.value)


def named_function() -> None: ...


def test_a_schedule_that_never_fires_again_loads_but_is_refused_at_registration(tmp_path: Any) -> None:
    # A flow-run process loads the flow file too: a schedule that has ended must not stop its last run.
    from baton.sdk.registration import build_flow_payload

    ended = flow(schedule=CronSchedule("0 9 * * *", end_date=datetime(2020, 1, 1, tzinfo=UTC)))(named_function)
    path = tmp_path / "ended.py"
    path.write_text("x = 1\n")
    with pytest.raises(InvalidScheduleError, match=r"ended\.py: flow 'named_function': invalid schedule: clocks\.0"):
        build_flow_payload(ended, path)


# --- occurrences ------------------------------------------------------------------------------------


def test_cron_times_are_aware_utc_ascending_and_within_the_bounds() -> None:
    found = list(next_times(parse_schedule("*/20 * * * *").clocks[0], utc(2026, 1, 1, 0, 0), utc(2026, 1, 1, 1, 0)))  # type: ignore[union-attr]
    assert found == [utc(2026, 1, 1, 0, 20), utc(2026, 1, 1, 0, 40), utc(2026, 1, 1, 1, 0)]
    assert all(when.tzinfo is UTC for when in found)


def test_start_and_end_dates_bound_a_clock() -> None:
    value = {"cron": "0 * * * *", "start_date": "2026-01-01T02:00:00Z", "end_date": "2026-01-01T04:00:00Z"}
    assert times(value, utc(2026, 1, 1), utc(2026, 1, 2)) == ["01-01 02:00", "01-01 03:00", "01-01 04:00"]


def test_berlin_spring_forward_a_time_in_the_gap_runs_once_at_the_end_of_the_gap() -> None:
    # 2026-03-29: Europe/Berlin jumps from 02:00 CET to 03:00 CEST (01:00 UTC); 02:30 does not exist that day.
    daily = {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}
    assert times(daily, utc(2026, 3, 27), utc(2026, 3, 31)) == [
        "03-27 01:30",
        "03-28 01:30",
        "03-29 01:00",
        "03-30 00:30",
    ]
    # Every half hour: 02:00 and 02:30 fall in the gap and become one run with 03:00 (01:00 UTC).
    half_hourly = {"cron": "*/30 * * * *", "timezone": "Europe/Berlin"}
    assert times(half_hourly, utc(2026, 3, 28, 23, 45), utc(2026, 3, 29, 2, 0)) == [
        "03-29 00:00",
        "03-29 00:30",
        "03-29 01:00",
        "03-29 01:30",
        "03-29 02:00",
    ]


def test_berlin_fall_back_a_repeated_time_runs_once_at_its_first_occurrence() -> None:
    # 2026-10-25: Europe/Berlin goes from 03:00 CEST back to 02:00 CET (01:00 UTC); 02:30 happens twice.
    daily = {"cron": "30 2 * * *", "timezone": "Europe/Berlin"}
    assert times(daily, utc(2026, 10, 23), utc(2026, 10, 27)) == [
        "10-23 00:30",
        "10-24 00:30",
        "10-25 00:30",
        "10-26 01:30",
    ]
    half_hourly = {"cron": "*/30 * * * *", "timezone": "Europe/Berlin"}
    assert times(half_hourly, utc(2026, 10, 24, 23, 45), utc(2026, 10, 25, 2, 0)) == [
        "10-25 00:00",  # 02:00 CEST
        "10-25 00:30",  # 02:30 CEST; the repeated 02:00 and 02:30 CET (01:00, 01:30 UTC) do not run again
        "10-25 02:00",  # 03:00 CET
    ]


def test_new_york_spring_forward_and_fall_back() -> None:
    # 2026-03-08 02:00 EST -> 03:00 EDT (07:00 UTC); 2026-11-01 02:00 EDT -> 01:00 EST (06:00 UTC).
    daily = {"cron": "30 2 * * *", "timezone": "America/New_York"}
    assert times(daily, utc(2026, 3, 7), utc(2026, 3, 10)) == ["03-07 07:30", "03-08 07:00", "03-09 06:30"]
    at_one_thirty = {"cron": "30 1 * * *", "timezone": "America/New_York"}
    assert times(at_one_thirty, utc(2026, 10, 31), utc(2026, 11, 3)) == ["10-31 05:30", "11-01 05:30", "11-02 06:30"]


def test_rrule_follows_the_same_dst_rule() -> None:
    rule = [{"type": "rrule", "rrule": "DTSTART;TZID=Europe/Berlin:20260101T023000\nRRULE:FREQ=DAILY"}]
    assert times(rule, utc(2026, 3, 27), utc(2026, 3, 31)) == [
        "03-27 01:30",
        "03-28 01:30",
        "03-29 01:00",
        "03-30 00:30",
    ]
    assert times(rule, utc(2026, 10, 23), utc(2026, 10, 27)) == [
        "10-23 00:30",
        "10-24 00:30",
        "10-25 00:30",
        "10-26 01:30",
    ]
    # A DTSTART without a zone is in the clock's timezone; 'Z' is UTC whatever the clock's timezone says.
    local = [{"type": "rrule", "rrule": "DTSTART:20260101T023000\nRRULE:FREQ=DAILY", "timezone": "America/New_York"}]
    assert times(local, utc(2026, 3, 7), utc(2026, 3, 10)) == ["03-07 07:30", "03-08 07:00", "03-09 06:30"]
    in_utc = [{"type": "rrule", "rrule": "DTSTART:20260101T023000Z\nRRULE:FREQ=DAILY", "timezone": "Asia/Tokyo"}]
    assert times(in_utc, utc(2026, 3, 7), utc(2026, 3, 9)) == ["03-07 02:30", "03-08 02:30"]


def test_rrule_without_dtstart_starts_at_its_start_date() -> None:
    rule = [{"type": "rrule", "rrule": "RRULE:FREQ=HOURLY;INTERVAL=6", "start_date": "2026-05-01T03:00:00Z"}]
    assert times(rule, utc(2026, 5, 1), utc(2026, 5, 2)) == ["05-01 03:00", "05-01 09:00", "05-01 15:00", "05-01 21:00"]


def test_intervals_are_exact_elapsed_seconds_across_dst() -> None:
    # Anchored at Berlin midnight (23:00 UTC), every 3 hours: the clock change does not move the instants.
    every = {"interval": 3 * 3600, "anchor": "2026-03-29T00:00:00+01:00"}
    assert times(every, utc(2026, 3, 28, 22), utc(2026, 3, 29, 9)) == [
        "03-28 23:00",
        "03-29 02:00",
        "03-29 05:00",
        "03-29 08:00",
    ]
    # Times before the anchor are on the same grid.
    assert times(every, utc(2026, 3, 28, 13), utc(2026, 3, 28, 18)) == ["03-28 14:00", "03-28 17:00"]


def test_wall_to_utc_gap_end_is_found_to_the_second() -> None:
    from zoneinfo import ZoneInfo

    berlin = ZoneInfo("Europe/Berlin")
    assert wall_to_utc(datetime(2026, 3, 29, 2, 0, 1), berlin) == utc(2026, 3, 29, 1, 0)
    assert wall_to_utc(datetime(2026, 10, 25, 2, 59), berlin) == utc(2026, 10, 25, 0, 59)


def test_next_times_is_bounded_and_refuses_naive_bounds() -> None:
    clock = parse_schedule({"interval": 60}).clocks[0]  # type: ignore[union-attr]
    assert len(list(next_times(clock, utc(2026, 1, 1), utc(2027, 1, 1), limit=7))) == 7
    with pytest.raises(ValueError, match="aware"):
        list(next_times(clock, datetime(2026, 1, 1), utc(2027, 1, 1)))
    assert list(next_times(clock, utc(2026, 1, 2), utc(2026, 1, 1))) == []


def test_clock_ids_are_stable_and_change_with_the_clock() -> None:
    one = parse_schedule("0 9 * * *").clocks[0]  # type: ignore[union-attr]
    again = parse_schedule({"cron": "0  9 * * *"}).clocks[0]  # type: ignore[union-attr]
    other = parse_schedule({"cron": "0 9 * * *", "timezone": "Europe/Berlin"}).clocks[0]  # type: ignore[union-attr]
    assert one.clock_id() == again.clock_id() != other.clock_id()
    assert len(one.clock_id()) == 12


def test_a_shorthand_interval_with_every_too_is_refused_not_resolved() -> None:
    with pytest.raises(ValueError, match="give 'interval' or 'every', not both"):
        parse_schedule({"interval": 30, "every": 10})

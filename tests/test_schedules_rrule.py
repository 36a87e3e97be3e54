"""RRULE clocks are evaluated with bounded work, and give the occurrences dateutil gives.

dateutil walks a rule from its DTSTART, period by period, and stops a rule with no further occurrence only at the
year 9999: a minutely rule from last year took seconds per evaluation, one that never fires again minutes, and the
scheduler evaluates every clock every few seconds (it froze a server). ``baton.schedules.rrule_walls`` moves each
rule's DTSTART forward on its own grid and stops the walk after a given year.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from dateutil import rrule as dateutil_rrule

from baton.schedules import next_times, parse_rrule, rrule_walls
from baton.schemas.schedules import RRuleClock, parse_schedule, schedule_problem

FREQS = ["YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY"]


def _random_rule(rng: random.Random) -> str:
    freq = rng.choice(FREQS)
    start = datetime(2024, 1, 1) + timedelta(minutes=rng.randrange(0, 2 * 365 * 24 * 60))
    parts = [f"FREQ={freq}", f"INTERVAL={rng.randint(1, 5)}"]
    if rng.random() < 0.3:
        parts.append(f"BYMONTH={','.join(str(m) for m in sorted(rng.sample(range(1, 13), rng.randint(1, 4))))}")
    if rng.random() < 0.3 and freq in ("YEARLY", "MONTHLY"):
        days = sorted(rng.sample([*range(1, 32), -1, -2], rng.randint(1, 3)))
        parts.append(f"BYMONTHDAY={','.join(map(str, days))}")
    elif rng.random() < 0.3:
        days = rng.sample(["MO", "TU", "WE", "TH", "FR", "SA", "SU"], rng.randint(1, 3))
        if freq in ("YEARLY", "MONTHLY") and rng.random() < 0.5:
            days = [f"{rng.choice([1, 2, -1])}{day}" for day in days]
        parts.append(f"BYDAY={','.join(days)}")
    if freq in ("YEARLY", "MONTHLY", "WEEKLY", "DAILY") and rng.random() < 0.4:
        parts.append(f"BYHOUR={','.join(str(h) for h in sorted(rng.sample(range(24), rng.randint(1, 3))))}")
    if freq != "MINUTELY" and rng.random() < 0.3:
        parts.append(f"BYMINUTE={','.join(str(m) for m in sorted(rng.sample(range(60), rng.randint(1, 2))))}")
    if rng.random() < 0.2:
        parts.append(f"WKST={rng.choice(['MO', 'SU', 'WE'])}")
    zone = rng.choice(["Z", ""])
    return f"DTSTART:{start:%Y%m%dT%H%M%S}{zone}\nRRULE:{';'.join(parts)}"


def test_bounded_walks_give_dateutils_occurrences_for_random_rules() -> None:
    # Given 300 random rules (frequencies, intervals, months, days, nth weekdays, hours, week starts) that start
    # in 2024-2025, and random points from just before their start to years after it
    rng = random.Random(20261203)
    compared = 0
    for _ in range(300):
        text = _random_rule(rng)
        rule, where = parse_rrule(text, "Europe/Berlin", None)
        plain = dateutil_rrule.rrulestr(text, forceset=True)
        naive = plain._rrule[0]._dtstart.tzinfo is None
        # Far enough after DTSTART to move it many periods, near enough for dateutil's own walk to stay cheap
        first = plain._rrule[0]._dtstart.replace(tzinfo=None)
        reach = {"MINUTELY": 10, "HOURLY": 200}.get(text.split("FREQ=")[1].split(";")[0], 900)
        start = first + timedelta(minutes=rng.randrange(-60, reach * 24 * 60))
        begin = start if naive else start.replace(tzinfo=plain._rrule[0]._dtstart.tzinfo)
        # When the walk starts from a DTSTART moved next to the point, and stops after the point's year + 2
        bounded = list(zip(range(25), rrule_walls(rule, where, start, last_year=start.year + 2), strict=False))
        # Then it gives the same occurrences as dateutil's walk from the rule's own DTSTART
        expected = []
        for occurrence in plain.xafter(begin, inc=False):
            if occurrence.year > start.year + 2 or len(expected) == 25:
                break
            expected.append(occurrence.replace(tzinfo=None))
        assert [when for _, when in bounded] == expected, text
        compared += len(expected)
    assert compared > 2000  # the rules fired: the comparison compared something


@pytest.mark.timeout(60)  # a guard against a hang (the unbounded walk took minutes), not a measure of speed
@pytest.mark.parametrize(
    "text",
    [
        "DTSTART:20260101T000000\nRRULE:FREQ=DAILY;BYMONTH=2;BYMONTHDAY=30",
        "DTSTART:19700101T000000\nRRULE:FREQ=MINUTELY;INTERVAL=7;BYHOUR=3;BYMINUTE=5;BYMONTHDAY=31;BYMONTH=4",
    ],
)
def test_a_rule_that_never_fires_again_is_refused_without_walking_to_the_year_9999(text: str) -> None:
    schedule = parse_schedule([{"type": "rrule", "rrule": text}])
    assert schedule is not None
    problem = schedule_problem(schedule, datetime(2026, 12, 3, tzinfo=UTC))
    assert problem is not None and "has no occurrence in the 10 years after 2026-12-03T00:00:00+00:00" in problem
    rule, where = parse_rrule(text, "UTC", None)
    assert list(rrule_walls(rule, where, datetime(2026, 12, 3), last_year=2030)) == []


@pytest.mark.timeout(60)
def test_a_minutely_rule_from_years_ago_gives_the_next_minutes() -> None:
    clock = RRuleClock(rrule="DTSTART:19700101T000030Z\nRRULE:FREQ=MINUTELY;INTERVAL=15")
    now = datetime(2026, 12, 3, 7, 40, 5, tzinfo=UTC)
    times = list(next_times(clock, now, now + timedelta(hours=1)))
    assert times == [datetime(2026, 12, 3, 7, 45, 30, tzinfo=UTC) + timedelta(minutes=15 * i) for i in range(4)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("DTSTART:20260101T000000Z\nRRULE:FREQ=MINUTELY;COUNT=100000000", "COUNT is not supported"),
        ("DTSTART:20260101T000000Z\nRRULE:FREQ=DAILY\nEXRULE:FREQ=WEEKLY;COUNT=3", "COUNT is not supported"),
        ("DTSTART:00010101T000000Z\nRRULE:FREQ=DAILY", "DTSTART must be between 1970 and 9000"),
        ("DTSTART:20260101T000000Z\nRRULE:FREQ=SECONDLY;INTERVAL=5", "fires more often than every 10 s"),
    ],
)
def test_rules_whose_evaluation_cannot_be_bounded_are_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RRuleClock(rrule=text)


def test_dates_near_datetimes_ends_are_refused_not_overflowed() -> None:
    with pytest.raises(ValueError, match="between 1970-01-01 and 9000-01-01"):
        parse_schedule({"cron": "0 9 * * *", "start_date": "0001-01-01T00:00:00+14:00"})
    with pytest.raises(ValueError, match="between 1970-01-01 and 9000-01-01"):
        parse_schedule({"interval": 60, "anchor": "9999-12-31T23:00:00-10:00"})

"""When a schedule's clocks fire: pure functions, no database, no clock of their own.

Usage::

    from baton.schedules import next_times
    for when in next_times(clock, after=now, until=now + timedelta(hours=1)):
        ...   # aware UTC datetimes, ascending, each once

The rule for wall-clock schedules (cron, rrule) across daylight-saving changes (docs/design.md, Schedules):

* a wall-clock time that does not exist (it falls in the spring-forward gap, e.g. 02:30 in Europe/Berlin on
  2026-03-29) fires once, at the first valid instant after the gap (03:00 local, 01:00 UTC); several times in the
  same gap, and a time at the gap's end, become one occurrence;
* a wall-clock time that happens twice (the fall-back hour, e.g. 02:30 in Europe/Berlin on 2026-10-25) fires once,
  at its first occurrence (02:30 CEST, 00:30 UTC).

Intervals are exact elapsed seconds from their anchor, whatever the time zone does.
"""

from __future__ import annotations

import datetime as _datetime_module
import types
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter
from dateutil import rrule as dateutil_rrule

if TYPE_CHECKING:
    from baton.schemas.schedules import Clock, IntervalClock

# Generating occurrences is bounded whatever the rule: no caller needs more in one call.
MAX_OCCURRENCES = 100_000
# Near a change of offset, wall-clock iteration starts this much before ``after``'s wall time: a time in a gap or
# a repeated hour maps to an instant up to the shift (at most 2 h anywhere) away from its wall time.
_WALL_MARGIN = timedelta(hours=3)


def _start_wall(after: datetime, where: tzinfo) -> datetime:
    """Where wall-clock iteration starts for occurrences after ``after``: its own wall time when the offset does
    not change within the margin (the common case: iterating a minutely cron back 3 h for nothing costs)."""
    wall = after.astimezone(where).replace(tzinfo=None)
    offsets = {(after + shift).astimezone(where).utcoffset() for shift in (-_WALL_MARGIN, timedelta(0), _WALL_MARGIN)}
    return wall - (_WALL_MARGIN if len(offsets) > 1 else timedelta(seconds=1))


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name``; raises ValueError (a clear one) when there is none of that name."""
    try:
        return ZoneInfo(name)
    except (ValueError, OSError, KeyError) as exc:  # ZoneInfoNotFoundError is a KeyError; bad paths ValueError
        raise ValueError(f"unknown time zone {name!r} (use an IANA name such as 'Europe/Berlin' or 'UTC')") from exc


def _exists(wall: datetime, where: tzinfo) -> bool:
    """Whether the naive wall-clock time ``wall`` happens in ``where`` (it does not in a spring-forward gap)."""
    aware = wall.replace(tzinfo=where, fold=0)
    return aware.astimezone(UTC).astimezone(where).replace(tzinfo=None) == wall


def wall_to_utc(wall: datetime, where: tzinfo) -> datetime:
    """The instant of the naive wall-clock time ``wall`` in ``where``, by the module's DST rule."""
    wall = wall.replace(tzinfo=None, fold=0)
    if _exists(wall, where):
        return wall.replace(tzinfo=where, fold=0).astimezone(UTC)  # fold=0: the first of a repeated time
    # In a gap: both folds give instants around the transition; the transition is the first instant whose wall
    # time is after the gap. Search it to the second (offsets change on whole seconds).
    one = wall.replace(tzinfo=where, fold=0).astimezone(UTC)
    other = wall.replace(tzinfo=where, fold=1).astimezone(UTC)
    low, high = min(one, other), max(one, other)
    while high - low > timedelta(seconds=1):
        middle = low + (high - low) / 2
        middle = middle.replace(microsecond=0)
        if middle.astimezone(where).replace(tzinfo=None) > wall:
            high = middle
        else:
            low = middle
    return high


def _in_dates(when: datetime, clock: Clock) -> bool:
    if clock.start_date is not None and when < clock.start_date:
        return False
    return clock.end_date is None or when <= clock.end_date


def next_times(clock: Clock, after: datetime, until: datetime, limit: int = MAX_OCCURRENCES) -> Iterator[datetime]:
    """The clock's occurrences in (``after``, ``until``], ascending, each once, as aware UTC datetimes.

    Args:
        clock: a cron, interval or rrule clock (``baton.schemas.schedules``).
        after: exclusive lower bound (aware).
        until: inclusive upper bound (aware).
        limit: at most this many.
    """
    if after.tzinfo is None or until.tzinfo is None:
        raise ValueError("after and until must be aware datetimes")
    if clock.start_date is not None and after < clock.start_date:
        after = clock.start_date - timedelta(microseconds=1)
    if clock.end_date is not None and until > clock.end_date:
        until = clock.end_date
    if until <= after:
        return
    source = _interval_times(clock, after) if clock.type == "interval" else _wall_times(clock, after, until)
    count = 0
    last: datetime | None = None
    for when in source:
        if when > until or count >= limit:
            return
        if when <= after or when == last or not _in_dates(when, clock):
            continue
        last = when
        count += 1
        yield when


def _interval_times(clock: IntervalClock, after: datetime) -> Iterator[datetime]:
    step = timedelta(seconds=clock.every)
    elapsed = (after - clock.anchor) // step  # whole steps from the anchor up to ``after`` (negative before it)
    when = clock.anchor + (elapsed + 1) * step
    for _ in range(MAX_OCCURRENCES + 1):
        yield when.astimezone(UTC)
        when += step


def _wall_times(clock: Clock, after: datetime, until: datetime) -> Iterator[datetime]:
    """Wall-clock occurrences mapped to UTC; ascending (the mapping keeps order), possibly repeated in a gap."""
    if clock.type == "cron":
        where: tzinfo = zone(clock.timezone)
        walls: Iterator[datetime] = _cron_walls(clock.cron, _start_wall(after, where))
    elif clock.type == "rrule":
        rule, where = parse_rrule(clock.rrule, clock.timezone, clock.start_date)
        walls = rrule_walls(rule, where, _start_wall(after, where), last_year=until.year + 1)
    else:  # pragma: no cover - the models allow no other type
        raise ValueError(f"unknown clock type {clock.type!r}")
    for wall in walls:
        yield wall_to_utc(wall, where)


def _cron_walls(expression: str, start: datetime) -> Iterator[datetime]:
    # Naive wall times: croniter then does calendar arithmetic only, and the DST rule is applied by wall_to_utc.
    walls = croniter(expression, start)
    for _ in range(MAX_OCCURRENCES + 1):
        try:
            yield walls.get_next(datetime)
        except CroniterBadDateError:  # no further match within croniter's search span (e.g. "0 0 31 2 *")
            return


def rrule_walls(rule: dateutil_rrule.rruleset, where: tzinfo, start: datetime, last_year: int) -> Iterator[datetime]:
    """The rule's occurrences after the naive wall time ``start`` in ``where``, as naive wall times, found by work
    bounded whatever the rule: no occurrence after ``last_year`` is looked for.

    dateutil walks a rule period by period from its DTSTART, and only stops at an occurrence past UNTIL or at the
    year 9999. Left to itself, a minutely rule from years ago walks every minute since (seconds per call), and one
    that never fires again (FEBRUARY 30th) walks to 9999 (up to minutes). So each rule is first moved to a DTSTART
    on its own grid just before ``start`` (``_rebased``: the same occurrences from there on), and walked by a copy
    of dateutil's walk that ends after ``last_year`` (``_capped``).
    """
    naive = _rule_is_naive(rule)
    begin: datetime = start if naive else start.replace(tzinfo=where)
    parts: Any = rule  # dateutil keeps a set's parts in private, untyped attributes
    bounded = dateutil_rrule.rruleset()
    for member in parts._rrule:
        bounded.rrule(_capped(_rebased(member, begin), last_year))
    for member in parts._exrule:
        bounded.exrule(_capped(_rebased(member, begin), last_year))
    for when in parts._rdate:
        bounded.rdate(when)
    for when in parts._exdate:
        bounded.exdate(when)
    for count, occurrence in enumerate(bounded.xafter(begin, inc=False)):
        if count > MAX_OCCURRENCES or occurrence.year > last_year:
            return
        # dateutil builds each occurrence from DTSTART's wall time with DTSTART's zone attached: that wall time
        # is the one the rule means, even when it does not exist (wall_to_utc decides what happens then).
        yield occurrence.replace(tzinfo=None)


# Periods of a fixed length (in wall time, as dateutil counts them); months and years are counted apart.
_FIXED_PERIODS = {
    dateutil_rrule.SECONDLY: timedelta(seconds=1),
    dateutil_rrule.MINUTELY: timedelta(minutes=1),
    dateutil_rrule.HOURLY: timedelta(hours=1),
    dateutil_rrule.DAILY: timedelta(days=1),
    dateutil_rrule.WEEKLY: timedelta(weeks=1),
}


def _rebased(rule: Any, begin: datetime) -> dateutil_rrule.rrule:
    """``rule`` with a DTSTART moved forward to the start of its last period (of its INTERVAL's grid) at or before
    ``begin``: from ``begin`` on it has the same occurrences.

    What dateutil derives from DTSTART (the weekday of a weekly rule, the day of a monthly one, the time of day of
    a daily one) is passed explicitly from the parsed rule, so moving DTSTART changes nothing but where the walk
    starts. COUNT counts from the first DTSTART: such rules are refused at parse time (``parse_rrule``).
    """
    first: datetime = rule._dtstart
    if begin <= first:
        unmoved: dateutil_rrule.rrule = rule
        return unmoved
    interval: int = rule._interval
    period = _FIXED_PERIODS.get(rule._freq)
    if period is not None:
        step = period * interval
        moved = first + ((begin - first) // step) * step
    else:  # monthly or yearly: whole months on the grid, from the first day of the period
        per = interval * (12 if rule._freq == dateutil_rrule.YEARLY else 1)
        months = (begin.year - first.year) * 12 + begin.month - first.month
        index = first.year * 12 + first.month - 1 + (months // per) * per
        year, month = divmod(index, 12)
        month = 0 if rule._freq == dateutil_rrule.YEARLY else month
        moved = first.replace(year=year, month=month + 1, day=1, hour=0, minute=0, second=0)
    weekdays = [*(rule._byweekday or ()), *(dateutil_rrule.weekday(day, n) for day, n in rule._bynweekday or ())]
    monthdays = [*(rule._bymonthday or ()), *(rule._bynmonthday or ())]
    return dateutil_rrule.rrule(
        rule._freq,
        dtstart=moved,
        interval=interval,
        wkst=rule._wkst,
        until=rule._until,
        bysetpos=rule._bysetpos,
        bymonth=rule._bymonth,
        bymonthday=monthdays or None,
        byyearday=rule._byyearday or None,
        byeaster=rule._byeaster or None,
        byweekno=rule._byweekno or None,
        byweekday=weekdays or None,
        byhour=rule._byhour,
        byminute=rule._byminute,
        bysecond=rule._bysecond,
        cache=False,
    )


class _DatetimeUntil:
    """The ``datetime`` module as a copy of dateutil's walk sees it: its last year is the caller's."""

    def __init__(self, last_year: int) -> None:
        self.MAXYEAR = last_year

    def __getattr__(self, name: str) -> Any:
        return getattr(_datetime_module, name)


def _capped(rule: Any, last_year: int) -> dateutil_rrule.rrule:
    """``rule``, walked by dateutil's own ``rrule._iter`` run with ``datetime.MAXYEAR`` read as ``last_year``:
    dateutil's one stop for a rule with no further occurrence, brought near (tests/test_schedules_bounded.py
    shows it holds for the dateutil installed)."""
    walk = types.FunctionType(
        _RRULE_WALK.__code__,
        {**vars(dateutil_rrule), "datetime": _DatetimeUntil(min(last_year, _datetime_module.MAXYEAR))},
        _RRULE_WALK.__name__,
        _RRULE_WALK.__defaults__,
        _RRULE_WALK.__closure__,
    )
    rule._iter = types.MethodType(walk, rule)
    capped: dateutil_rrule.rrule = rule
    return capped


_RRULE_WALK: Any = vars(dateutil_rrule.rrule)["_iter"]


def _first_start(rule: Any) -> datetime | None:
    """The DTSTART of the set's first rule, else its first RDATE; read, not walked to (see ``rrule_walls``)."""
    if rule._rrule:
        start: datetime = rule._rrule[0]._dtstart
        return start
    return min(rule._rdate, default=None)


def _rule_is_naive(rule: dateutil_rrule.rruleset) -> bool:
    first = _first_start(rule)
    return first is None or first.tzinfo is None


def rrule_sample(rule: dateutil_rrule.rruleset, where: tzinfo, now: datetime, count: int) -> list[datetime]:
    """Up to ``count`` occurrences (naive wall times) from the later of the rule's start and ``now``, within two
    years: enough to see how often it fires, found with bounded work."""
    first = _first_start(rule)
    wall = now.astimezone(where).replace(tzinfo=None)
    start = wall if first is None else max(wall, first.replace(tzinfo=None) - timedelta(seconds=1))
    sample: list[datetime] = []
    for occurrence in rrule_walls(rule, where, start, last_year=start.year + 2):
        if len(sample) >= count:
            break
        sample.append(occurrence)
    return sample


def _lookup_zone(name: str) -> ZoneInfo:
    return zone(name)


def parse_rrule(text: str, timezone: str, start_date: datetime | None) -> tuple[dateutil_rrule.rruleset, tzinfo]:
    """The rule set of RFC 5545 ``text`` and the zone its wall times are in.

    The zone is DTSTART's (``DTSTART;TZID=Europe/Berlin:...``, or UTC for ``...Z``); a DTSTART without a zone, and
    a rule without DTSTART (which then starts at ``start_date``), are in ``timezone``. A rule with neither
    DTSTART nor ``start_date`` is refused: it would start whenever it was parsed.

    Raises:
        ValueError: the text is not a rule, a TZID is unknown, or it has no start.
    """
    where = zone(timezone)
    has_start = "DTSTART" in text.upper()
    if not has_start and start_date is None:
        raise ValueError("an rrule needs a DTSTART (e.g. 'DTSTART:20260101T090000Z') or a start_date")
    default_start = None if has_start else start_date.astimezone(where).replace(tzinfo=None)  # type: ignore[union-attr]
    try:
        parsed: Any = dateutil_rrule.rrulestr(
            text, forceset=True, dtstart=default_start, tzids=_lookup_zone, unfold=True
        )
    except (ValueError, TypeError, IndexError, KeyError, OverflowError) as exc:
        raise ValueError(f"not an RFC 5545 recurrence rule: {exc}") from exc
    rule: dateutil_rrule.rruleset = parsed
    for member in (*parsed._rrule, *parsed._exrule):
        if member._count is not None:
            raise ValueError(
                "COUNT is not supported (it counts from DTSTART, which every evaluation would walk from): "
                "end the rule with UNTIL, or give the clock an end_date"
            )
        if not 1970 <= member._dtstart.year < 9000:
            raise ValueError("an rrule's DTSTART must be between 1970 and 9000")
    first = _first_start(rule)
    if first is not None and first.tzinfo is not None:
        if isinstance(first.tzinfo, ZoneInfo):
            where = first.tzinfo
        else:
            if first.utcoffset() != timedelta(0):
                raise ValueError("an rrule's DTSTART must be UTC ('Z'), carry a TZID, or be a local time")
            where = ZoneInfo("UTC")  # 'Z': dateutil's own UTC
    return rule, where

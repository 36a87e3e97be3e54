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
    source = _interval_times(clock, after) if clock.type == "interval" else _wall_times(clock, after)
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


def _wall_times(clock: Clock, after: datetime) -> Iterator[datetime]:
    """Wall-clock occurrences mapped to UTC; ascending (the mapping keeps order), possibly repeated in a gap."""
    if clock.type == "cron":
        where: tzinfo = zone(clock.timezone)
        walls: Iterator[datetime] = _cron_walls(clock.cron, _start_wall(after, where))
    elif clock.type == "rrule":
        rule, where = parse_rrule(clock.rrule, clock.timezone, clock.start_date)
        walls = _rrule_walls(rule, where, _start_wall(after, where))
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


def _rrule_walls(rule: dateutil_rrule.rruleset, where: tzinfo, start: datetime) -> Iterator[datetime]:
    """``start`` is a naive wall time in ``where``."""
    naive = _rule_is_naive(rule)
    begin: datetime = start if naive else start.replace(tzinfo=where)
    for count, occurrence in enumerate(rule.xafter(begin, inc=False)):
        if count > MAX_OCCURRENCES:
            return
        # dateutil builds each occurrence from DTSTART's wall time with DTSTART's zone attached: that wall time
        # is the one the rule means, even when it does not exist (wall_to_utc decides what happens then).
        yield occurrence.replace(tzinfo=None)


def _rule_is_naive(rule: dateutil_rrule.rruleset) -> bool:
    first = next(iter(rule), None)
    return first is None or first.tzinfo is None


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
    first = next(iter(rule), None)
    if first is not None and first.tzinfo is not None:
        if isinstance(first.tzinfo, ZoneInfo):
            where = first.tzinfo
        else:
            if first.utcoffset() != timedelta(0):
                raise ValueError("an rrule's DTSTART must be UTC ('Z'), carry a TZID, or be a local time")
            where = ZoneInfo("UTC")  # 'Z': dateutil's own UTC
    return rule, where

"""Task runs as a Gantt chart (the run page): one row per task run, and one band per mapped task.

``my_task.map(range(1000))`` makes 1,000 task runs named ``my_task[0]`` ... ``my_task[999]`` (issue 14). A row
each would be an 11,000-pixel column of near-identical bars in which nobody can see how many ran side by side, so
the children of a mapped task (two or more runs named ``task[i]``) share one band instead. In the band each child
is a bar in a lane, the lowest lane free when it started: as many lanes as children ran at once at the busiest
moment, so the band's height *is* the parallelism. Past :data:`MAX_LANES` lanes would be slivers, and the band
draws how many ran at each moment instead, stacked by state. The band's label and title sum it up (the range
of map indexes with an en dash, as printed)::

    together[0-999]: 1000 runs, 997 Success, 3 Failed, at most 8 at once

Other task runs keep a row each, exactly as before. Like ``charts`` (whose escaping, number format and SVG
helpers it shares), a pure function of the data and the clock value that returns ``markupsafe.Markup``::

    {{ gantt }}  (built by ``gantt.gantt(bars, now=now)``)
"""

from __future__ import annotations

import heapq
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from markupsafe import Markup

from baton.schemas.states import StateName
from baton.server.ui.charts import _line, _message, _num, _stack, _svg, _text, _utc, duration, state_class

__all__ = ["GANTT_MAX_ROWS", "MAX_LANES", "Mapped", "TaskBar", "gantt", "group_mapped"]

T = TypeVar("T")

# The chart stops after this many rows' height (a band counts its height in rows) and counts the rest.
GANTT_MAX_ROWS = 500
NAME_MAX_CHARS = 28
NOTE_MAX_CHARS = 34  # a band's summary lines, in a smaller font, within the same label column
MIN_BAR_WIDTH = 2.0
# A band's lanes share at most this many pixels (a lane is at least 3 px tall and at most a plain bar's height).
LANES_HEIGHT = 96.0
MAX_LANES = 32  # Python's default thread pool has up to 32 workers: its maps still get a lane per worker
_MIN_LANE = 3.0
# How a mapped child is named: the task's name and the map index in brackets (baton.sdk.tasks, Prefect 1's runs).
# At most 18 digits: an index, not a 500-digit number (a task name's limit) for int() to chew on.
_MAPPED = re.compile(r"(?P<task>.+)\[(?P<index>[0-9]{1,18})\]", re.DOTALL)
_EN_DASH = "\N{EN DASH}"  # between the first and last map index: "[0-999]" typeset
# The aria-label names this many bands at most (it is what a screen reader says for the whole chart).
_LABELLED_BANDS = 10
# Time-axis steps in seconds: sub-second for quick tasks, then clock-like steps people read at a glance.
_TIME_STEPS: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
_TIME_STEPS += (10800, 21600, 43200, 86400, 172800, 432000, 864000)


@dataclass(frozen=True)
class TaskBar:
    """One task run. ``end`` None means still running (drawn to ``now``); ``start`` None means not started."""

    name: str
    state: str
    start: datetime | None
    end: datetime | None
    attempt: int


@dataclass(frozen=True)
class _Span:
    start: datetime
    end: datetime
    running: bool


def _span(bar: TaskBar, now: datetime) -> _Span | None:
    if bar.start is None:
        return None
    start = _utc(bar.start)
    if bar.end is None:
        return _Span(start, max(start, now), running=True)
    # A clock step between hosts can put the end before the start: show a zero-length run, not a negative one.
    return _Span(start, max(start, _utc(bar.end)), running=False)


@dataclass(frozen=True)
class _Plain:
    """A task run drawn on a row of its own."""

    bar: TaskBar
    span: _Span | None
    height: float

    @property
    def spans(self) -> list[_Span | None]:
        return [self.span]


@dataclass(frozen=True)
class _Band:
    """The children of one mapped task, drawn together: ``lanes[i]`` is child i's lane (-1: not started)."""

    task: str
    indexes: list[int]
    children: list[TaskBar]
    spans: list[_Span | None]
    lanes: list[int]
    peak: int  # the most children running at one moment: the number of lanes
    pitch: float  # a lane's height, gap included
    height: float

    @property
    def label(self) -> str:
        """``task[0-999]``, the task's name shortened so that the index range always shows."""
        suffix = f"[{self._range()}]"
        room = max(1, NAME_MAX_CHARS - len(suffix))
        task = self.task if len(self.task) <= room else self.task[: room - 1] + "…"
        return task + suffix

    @property
    def profiled(self) -> bool:
        """Too many at once for a lane each: the band draws how many ran at each moment instead."""
        return self.peak > MAX_LANES

    def states(self) -> list[tuple[str, int]]:
        """How many children are in each state, in the charts' stacking order (Success first)."""
        counts: dict[str, int] = {}
        for child in self.children:
            counts[child.state] = counts.get(child.state, 0) + 1
        return _stack(counts)

    def parallelism(self) -> str:
        waiting = sum(1 for span in self.spans if span is None)
        text = f"at most {self.peak} at once" if self.peak else "none started"
        return text + (f", {waiting} not started" if waiting and self.peak else "")

    def summary(self) -> str:
        """``together[0-999]: 1000 runs, 997 Success, 3 Failed, at most 8 at once``."""
        states = "".join(f", {count} {state}" for state, count in self.states())
        return f"{self.task}[{self._range()}]: {len(self.children)} runs{states}, {self.parallelism()}"

    def _range(self) -> str:
        low, high = min(self.indexes), max(self.indexes)
        return str(low) if low == high else f"{low}{_EN_DASH}{high}"


_Row = _Plain | _Band


def _pack(spans: Sequence[_Span | None]) -> tuple[list[int], int]:
    """Each started child's lane: the lowest lane free when it starts (-1 for a child not started), and how many
    lanes that took. Taken in order of start, this greedy choice needs exactly as many lanes as the most children
    running at one moment, so the lane count is the peak parallelism; a child that starts as another ends is not
    "at once" with it and takes its lane."""
    lanes = [-1] * len(spans)
    started = sorted((span.start, span.end, index) for index, span in enumerate(spans) if span is not None)
    busy: list[tuple[datetime, int]] = []  # (end, lane) of the children running at the current start
    free: list[int] = []
    for start, end, index in started:
        while busy and busy[0][0] <= start:
            heapq.heappush(free, heapq.heappop(busy)[1])
        lane = heapq.heappop(free) if free else len(busy)
        heapq.heappush(busy, (end, lane))
        lanes[index] = lane
    return lanes, max(lanes, default=-1) + 1


def _pitch(peak: int, row_h: float) -> float:
    """A lane's height: a plain bar's for a few lanes, then thinner to keep the band within LANES_HEIGHT."""
    return min(row_h * 0.7, max(_MIN_LANE, LANES_HEIGHT / max(peak, 1)))


def _band_height(peak: int, row_h: float) -> float:
    """Room for the lanes (or the profile past MAX_LANES) and for the label's two lines, whichever is taller."""
    lanes = min(peak * _pitch(peak, row_h), LANES_HEIGHT)
    return max(2.0 * row_h, math.ceil(lanes + row_h * 0.3))


@dataclass(frozen=True)
class Mapped(Generic[T]):
    """The children of one mapped task, in the order given, each with its map index."""

    task: str
    children: list[tuple[int, T]]


def group_mapped(items: Sequence[T], name_of: Callable[[T], str]) -> list[T | Mapped[T]]:
    """``items`` in order, the children of each mapped task (two or more named ``task[i]``) replaced by one
    :class:`Mapped` where its first child is. The chart's bands and the run page's table (``task_table``) group
    by this one rule, so that both always agree on what a mapped task is.

    Args:
        items: Task runs (or anything named like one), in display order.
        name_of: The task run's name, ``my_task`` or ``my_task[7]``.

    Returns:
        The plain items and one :class:`Mapped` per mapped task, in the order of their first appearance.
    """
    matches = [_MAPPED.fullmatch(name_of(item)) for item in items]
    groups: dict[str, list[tuple[int, T]]] = {}
    for item, found in zip(items, matches, strict=True):
        if found:
            groups.setdefault(found["task"], []).append((int(found["index"]), item))
    grouped: list[T | Mapped[T]] = []
    for item, found in zip(items, matches, strict=True):
        family = groups.pop(found["task"], []) if found else []
        if found is None or len(family) == 1:  # a map over one item reads best as the plain row it looks like
            grouped.append(item)
        elif family:  # the first child: the group takes its place (pop: its later children add nothing)
            grouped.append(Mapped(found["task"], family))
    return grouped


def _rows(bars: Sequence[TaskBar], now: datetime, row_h: float) -> list[_Row]:
    """Display rows in the order of ``bars``: a band where a mapped task's first child is, a row for the rest."""
    rows: list[_Row] = []
    for item in group_mapped(bars, lambda bar: bar.name):
        if isinstance(item, Mapped):
            rows.append(_band_of(item.task, item.children, now, row_h))
        else:
            rows.append(_Plain(item, _span(item, now), row_h))
    return rows


def _band_of(task: str, family: Sequence[tuple[int, TaskBar]], now: datetime, row_h: float) -> _Band:
    spans = [_span(child, now) for _, child in family]
    lanes, peak = _pack(spans)
    children = [child for _, child in family]
    indexes = [index for index, _ in family]
    return _Band(task, indexes, children, spans, lanes, peak, _pitch(peak, row_h), _band_height(peak, row_h))


def _fit(rows: Sequence[_Row], row_h: float) -> tuple[list[_Row], int]:
    """The rows that fit in GANTT_MAX_ROWS rows' height, and how many task runs the rest hold."""
    budget, used = GANTT_MAX_ROWS * row_h + 1e-6, 0.0
    for count, row in enumerate(rows):
        used += row.height
        if used > budget:
            return list(rows[:count]), sum(len(rest.spans) for rest in rows[count:])
    return list(rows), 0


# --- the time axis ----------------------------------------------------------------------------------------------


def _time_step(span: float) -> float:
    """The smallest round step that divides ``span`` seconds into at most 6 intervals."""
    for step in _TIME_STEPS:
        if span / step <= 6:
            return step
    return float(math.ceil(span / 6 / 864000) * 864000)


def _offset_label(seconds: float) -> str:
    """A tick label relative to the first start: ``0s``, ``0.5s``, ``30s``, ``1m30s``, ``2h15m``, ``1d6h``."""
    whole = round(seconds)
    if abs(seconds - whole) > 1e-6:  # only sub-second steps make fractions, and they stop below 3 s
        return f"{seconds:.1f}s"
    if whole == 0:
        return "0s"
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    text = ""
    for suffix, size in units:
        amount, whole = divmod(whole, size)
        if amount:
            text += f"{amount}{suffix}"
    return text


@dataclass(frozen=True)
class _Frame:
    """Where time goes on the page: ``x(moment)``, from the first start at ``left``."""

    left: float
    width: float
    origin: datetime
    scale: float  # pixels per second

    def x(self, moment: datetime) -> float:
        return self.left + (moment - self.origin).total_seconds() * self.scale


def _time_axis(left: float, scale: float, step: float, axis_end: float, height: float, axis_h: float) -> list[str]:
    parts = []
    last = round(axis_end / step)
    for index in range(last + 1):
        seconds = index * step
        x = left + seconds * scale
        # The first and last labels sit inside the edges: centred, "1m30s" at the right edge was cut off.
        anchor = "start" if index == 0 else "end" if index == last else "middle"
        parts.append(_line("grid", x, axis_h, x, height))
        parts.append(
            f'<text class="tick t-tick" x="{_num(x)}" y="{_num(axis_h - 6)}" text-anchor="{anchor}" '
            f'data-seconds="{_num(seconds)}">{_offset_label(seconds)}</text>'
        )
    return parts


# --- the chart --------------------------------------------------------------------------------------------------


def _gantt_summary(rows: Sequence[_Row], hidden: int, incomplete: bool) -> str:
    spans = [span for row in rows for span in row.spans]
    running = sum(1 for span in spans if span is not None and span.running)
    waiting = sum(1 for span in spans if span is None)
    first = "the first " if incomplete else ""
    text = f"Task runs: {first}{len(spans) + hidden} tasks, {running} running, {waiting} not started"
    text += f", {hidden} not shown" if hidden else ""
    bands = [row for row in rows if isinstance(row, _Band)]
    named = [band.summary() for band in bands[:_LABELLED_BANDS]]
    if len(bands) > _LABELLED_BANDS:
        named.append(f"{len(bands) - _LABELLED_BANDS} more mapped tasks")
    return text + "".join(f". {line}" for line in named)


def gantt(
    bars: Sequence[TaskBar], *, now: datetime, width: int = 720, row_height: int = 22, incomplete: bool = False
) -> Markup:
    """Task runs as horizontal bars on a time axis relative to the first start: a row per task run, and a band
    per mapped task (two or more runs named ``task[i]``) whose children share lanes.

    Args:
        bars: Task runs in display order; a mapped task's band takes the place of its first child. Rows are drawn
            up to 500 rows' height and the task runs of the rest counted in a final row.
        now: The current time; a run without an end is drawn up to it.
        width: SVG width in pixels.
        row_height: Height of one row in pixels.
        incomplete: ``bars`` are only the run's first task runs (the caller loaded one page): the final row and
            the label say that others exist.

    Returns:
        SVG markup: per task run a ``<g class="row">`` with a ``<text class="task-name">`` and either a
        ``<rect class="bar st-...">`` or a ``<text class="not-started">``; per mapped task a ``<g class="band">``
        (``data-runs``, ``data-peak``) with its summary as ``<title>``, a ``task-name`` and a ``band-note`` text,
        and a ``<rect class="bar st-...">`` per child in its lane (``<g class="lanes">``) or, past
        :data:`MAX_LANES` at once, one ``<path class="profile st-...">`` per state (``<g class="profile">``).

    Raises:
        ValueError: If the size leaves no room to draw.
    """
    if width < 240 or row_height < 10:
        raise ValueError(f"chart width {width} or row height {row_height} is too small (at least 240 and 10)")
    now = _utc(now)
    if not bars:
        parts = [_message(width / 2, 24, "No task runs yet")]
        return _svg(width, 40, "chart-gantt", "Task runs: none yet", parts)
    rows, hidden = _fit(_rows(bars, now, row_height), row_height)
    label_w = min(200.0, width * 0.35)
    axis_h, right = 20.0, 12.0
    plot_w = width - label_w - right
    height = axis_h + sum(row.height for row in rows) + (row_height if hidden or incomplete else 0) + 4
    started = [span for row in rows for span in row.spans if span is not None]
    origin = min((span.start for span in started), default=now)
    span_s = max((span.end - origin).total_seconds() for span in started) if started else 0.0
    # All runs instant (or none started): a plain 0s-1s axis rather than tenths of nothing.
    step = _time_step(span_s) if span_s else 1.0
    axis_end = step * max(1, math.ceil(span_s / step - 1e-9))
    frame = _Frame(label_w, plot_w, origin, plot_w / axis_end)
    parts = [] if not started else _time_axis(label_w, frame.scale, step, axis_end, height, axis_h)
    if any(span.running for span in started) and now >= origin:
        x = frame.x(now)
        parts.append(_line("now", x, axis_h, x, height))
    y = axis_h
    for row in rows:
        drawn = _gantt_row(row, y, row_height, frame) if isinstance(row, _Plain) else _band(row, y, row_height, frame)
        parts.append(drawn)
        y += row.height
    if hidden or incomplete:
        said = [f"{hidden} more"] if hidden else []
        said += ["others not loaded"] if incomplete else []
        more = "and " + ", and ".join(said)  # "and 112 more", "and others not loaded", or both
        parts.append(f'<text class="more" x="4" y="{_num(y + row_height * 0.7)}">{more}</text>')
    return _svg(width, height, "chart-gantt", _gantt_summary(rows, hidden, incomplete), parts)


def _bar_title(bar: TaskBar, span: _Span) -> str:
    seconds = (span.end - span.start).total_seconds()
    so_far = " so far" if span.running else ""
    return f"{_text(bar.name)} — {_text(bar.state)}, {duration(seconds)}{so_far}, attempt {int(bar.attempt)}"


def _bar(bar: TaskBar, span: _Span, frame: _Frame, y: float, height: float, extra: str = "") -> str:
    css = f"bar {state_class(bar.state)}" + (" running" if span.running else "")
    bar_w = max(MIN_BAR_WIDTH, (span.end - span.start).total_seconds() * frame.scale)
    return (
        f'<rect class="{css}" x="{_num(frame.x(span.start))}" y="{_num(y)}" width="{_num(bar_w)}" '
        f'height="{_num(height)}"{extra}><title>{_bar_title(bar, span)}</title></rect>'
    )


def _gantt_row(row: _Plain, y: float, row_h: float, frame: _Frame) -> str:
    # Children are placed relative to the row (one translate per row): fewer numbers to format for 500 rows.
    head = f'<g class="row" transform="translate(0,{_num(y)})">'
    text_y = _num(row_h * 0.7)
    bar, span = row.bar, row.span
    full_name = _text(bar.name)
    name = f'<text class="task-name" x="4" y="{text_y}">{_text(_truncate(bar.name))}<title>{full_name}</title></text>'
    if span is None:
        note = f'<text class="not-started" x="{_num(frame.left + 4)}" y="{text_y}">not started</text>'
        return f"{head}{name}{note}</g>"
    rect = _bar(bar, span, frame, row_h * 0.15, row_h * 0.7, f' data-start="{span.start.isoformat()}"')
    return f"{head}{name}{rect}</g>"


def _truncate(name: str, limit: int = NAME_MAX_CHARS) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


# --- a mapped task's band ---------------------------------------------------------------------------------------


def _band(band: _Band, y: float, row_h: float, frame: _Frame) -> str:
    summary = _text(band.summary())
    head = (
        f'<g class="band" transform="translate(0,{_num(y)})" data-runs="{len(band.children)}" '
        f'data-peak="{band.peak}"><title>{summary}</title>'
    )
    background = (
        f'<rect class="band-bg" x="{_num(frame.left)}" y="1" width="{_num(frame.width)}" '
        f'height="{_num(band.height - 2)}"/>'
    )
    parts = [head, background, *_band_label(band, row_h)]
    # Lanes start where a plain row's bar does: the first lane lines up with the task's name.
    area, top = min(band.peak * band.pitch, LANES_HEIGHT), row_h * 0.15
    if not band.peak:
        parts.append(f'<text class="not-started" x="{_num(frame.left + 4)}" y="{_num(row_h * 0.7)}">not started</text>')
    elif band.profiled:
        parts.append(_profile(band, frame, top, area))
    else:
        parts.append(_lanes(band, frame, top))
    parts.append("</g>")
    return "".join(parts)


def _band_label(band: _Band, row_h: float) -> list[str]:
    """The task and index range, then how many ran and how many at once; the states too when there is room."""
    lines = [f"{len(band.children)} runs, {band.parallelism()}"]
    lines.append(", ".join(f"{count} {state}" for state, count in band.states()))
    first = row_h * 0.7
    parts = [f'<text class="task-name" x="4" y="{_num(first)}">{_text(band.label)}</text>']
    for number, line in enumerate(lines, start=1):
        baseline = first + 13 * number
        if baseline + 4 > band.height:
            break
        shown = _text(_truncate(line, NOTE_MAX_CHARS))
        parts.append(f'<text class="band-note" x="4" y="{_num(baseline)}">{shown}</text>')
    return parts


def _lanes(band: _Band, frame: _Frame, top: float) -> str:
    gap = min(1.0, band.pitch * 0.25)
    # Outcomes other than Success last, so that a short failure is drawn over its neighbours, not under them.
    order = sorted(range(len(band.children)), key=lambda index: band.children[index].state != StateName.SUCCESS)
    parts = [f'<g class="lanes" data-lanes="{band.peak}">']
    for index in order:
        span, lane = band.spans[index], band.lanes[index]
        if span is not None:
            y = top + lane * band.pitch + gap / 2
            parts.append(_bar(band.children[index], span, frame, y, band.pitch - gap))
    parts.append("</g>")
    return "".join(parts)


def _steps(band: _Band, frame: _Frame) -> list[tuple[str, dict[str, int]]]:
    """Where the count of running children changes: the x, and how many of each state run from there on."""
    events = sorted(
        (moment, delta, child.state)
        for child, span in zip(band.children, band.spans, strict=True)
        if span is not None
        for moment, delta in ((span.start, 1), (span.end, -1))
    )
    counts: dict[str, int] = {}
    steps: list[tuple[str, dict[str, int]]] = []
    for position, (moment, delta, state) in enumerate(events):
        counts[state] = counts.get(state, 0) + delta
        # Only after the last event at a moment: a child that ends as another starts is not "at once" with it.
        if position + 1 == len(events) or events[position + 1][0] != moment:
            x = _num(frame.x(moment))
            if steps and steps[-1][0] == x:  # moments closer than the markup's precision: the later one counts
                steps.pop()
            steps.append((x, dict(counts)))
    return steps


def _profile(band: _Band, frame: _Frame, top: float, area: float) -> str:
    """How many children ran at each moment, stacked by state (Success at the bottom), as stepped areas."""
    steps = _steps(band, frame)
    started = [child.state for child, span in zip(band.children, band.spans, strict=True) if span is not None]
    totals = {state: started.count(state) for state in set(started)}
    states = [state for state, _ in _stack(totals)]
    bottom, scale = top + area, area / band.peak
    parts = ['<g class="profile">']
    # The tallest layer (every state) first, each lower one over it: what shows of a layer is its own state.
    for layer in range(len(states) - 1, -1, -1):
        below = states[: layer + 1]
        path = "".join(f"H{x}V{_num(bottom - sum(c.get(s, 0) for s in below) * scale)}" for x, c in steps)
        title = f"{_text(band.task)} — {_text(states[layer])}: {totals[states[layer]]} runs"
        parts.append(
            f'<path class="profile {state_class(states[layer])}" d="M{steps[0][0]},{_num(bottom)}{path}Z">'
            f"<title>{title}</title></path>"
        )
    # The scale: a dashed line at the busiest moment's height, with its count beside the plot.
    parts.append(_line("peak", frame.left, top, frame.left + frame.width, top))
    peak_x, peak_y = _num(frame.left - 4), _num(top + 4)
    parts.append(f'<text class="tick peak" x="{peak_x}" y="{peak_y}" text-anchor="end">{band.peak}</text>')
    parts.append("</g>")
    return "".join(parts)

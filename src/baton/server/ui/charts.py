"""Server-side SVG charts for the web UI: runs per hour by state here, task runs as a Gantt chart in ``gantt``.

Pure functions: the caller passes the data and the clock value; nothing here reads the database or the time.
Each returns ``markupsafe.Markup`` that a Jinja2 template inserts as-is::

    {{ charts.runs_by_state(buckets, now=now) }}
    <span class="badge {{ charts.state_class(run.state) }}">{{ run.state }}</span>

Colours live in the stylesheet, not here: every shape carries ``st-<state lowercased>`` (``st-unknown`` for a
state this version does not know), so the charts and the badges cannot disagree.

Escaping: every piece of text that reaches the markup (flow and task names, states, labels) goes through
:func:`_text`, which also replaces characters XML forbids, so a hostile name is shown, never parsed. ``gantt``
imports these private helpers (``_text``, ``_num``, ``_svg``, ...): one escaping and one number format for both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from markupsafe import Markup, escape

from baton.schemas.states import StateName

__all__ = ["STATE_CLASS", "HourBucket", "duration", "runs_by_state", "state_class"]

STATE_CLASS: dict[str, str] = {state.value: f"st-{state.value.lower()}" for state in StateName}
UNKNOWN_CLASS = "st-unknown"

# Bottom of the stack first: outcomes at the base, work in flight on top, where a growing queue shows.
STACK_ORDER: tuple[str, ...] = (
    StateName.SUCCESS,
    StateName.FAILED,
    StateName.CANCELLED,
    StateName.CANCELLING,
    StateName.RETRYING,
    StateName.RUNNING,
    StateName.SUBMITTED,
    StateName.PENDING,
    StateName.SCHEDULED,
)

HOURS = 24
_SVG_NS = "http://www.w3.org/2000/svg"
# Characters XML 1.0 forbids (control characters, lone surrogates, U+FFFE/U+FFFF): one of them in a task name
# would make the whole page's SVG unparseable.
_XML_INVALID = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# Integer count steps for the y-axis; the sequence continues 1-2-5 times powers of ten.
_COUNT_STEPS = (1, 2, 5)


@dataclass(frozen=True)
class HourBucket:
    """Runs that started in one hour: ``start`` is aware UTC and hour-aligned, ``counts`` maps state to number."""

    start: datetime
    counts: Mapping[str, int]


def state_class(state: str) -> str:
    """The CSS class for a state's colour: ``st-success`` for "Success", ``st-unknown`` for anything else."""
    return STATE_CLASS.get(state, UNKNOWN_CLASS)


# --- shared helpers ---------------------------------------------------------------------------------------------


def _text(value: object) -> str:
    """Escape any value for use as XML text or a double-quoted attribute value."""
    return str(escape(_XML_INVALID.sub("\ufffd", str(value))))


def _num(value: float) -> str:
    """A coordinate with at most two decimals and no trailing zeros (smaller markup, stable output)."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _utc(moment: datetime) -> datetime:
    """Aware UTC. A naive value is taken as UTC: that is how SQLite hands timestamps back."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _svg(width: float, height: float, css: str, label: str, body: Iterable[str]) -> Markup:
    head = (
        f'<svg xmlns="{_SVG_NS}" class="chart {css}" role="img" aria-label="{_text(label)}" '
        f'width="{_num(width)}" height="{_num(height)}" viewBox="0 0 {_num(width)} {_num(height)}">'
    )
    # Every fragment in body was built here with its text passed through _text.
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704


def _line(css: str, x1: float, y1: float, x2: float, y2: float) -> str:
    return f'<line class="{css}" x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" y2="{_num(y2)}"/>'


def _message(x: float, y: float, text: str) -> str:
    return f'<text class="empty" x="{_num(x)}" y="{_num(y)}" text-anchor="middle">{_text(text)}</text>'


# --- runs per hour by state -------------------------------------------------------------------------------------


def _count_axis(largest: int) -> tuple[int, int]:
    """(step, top) for a y-axis from 0 to at least ``largest`` with 2 to 4 round labels (0 included)."""
    magnitude = 1
    while True:
        for base in _COUNT_STEPS:
            step = base * magnitude
            if math.ceil(largest / step) <= 3:
                return step, step * max(1, math.ceil(largest / step))
        magnitude *= 10


def _hour_totals(buckets: Sequence[HourBucket], first: datetime) -> list[dict[str, int]]:
    """Counts per hour slot of the window starting at ``first``; buckets outside it are ignored."""
    slots: list[dict[str, int]] = [{} for _ in range(HOURS)]
    for bucket in buckets:
        start = _utc(bucket.start).replace(minute=0, second=0, microsecond=0)
        index = int((start - first) // timedelta(hours=1))
        if 0 <= index < HOURS:
            for state, count in bucket.counts.items():
                if count > 0:
                    slots[index][state] = slots[index].get(state, 0) + count
    return slots


def _stack(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    """Segments bottom-up: the known states in STACK_ORDER, then unknown states by name."""
    known = [(state, counts[state]) for state in STACK_ORDER if counts.get(state)]
    unknown = sorted((state, count) for state, count in counts.items() if state not in STATE_CLASS)
    return known + unknown


def _runs_summary(slots: Sequence[Mapping[str, int]]) -> str:
    totals: dict[str, int] = {}
    for slot in slots:
        for state, count in slot.items():
            totals[state] = totals.get(state, 0) + count
    grand = sum(totals.values())
    if not grand:
        return "Runs per hour, last 24 hours: no runs"
    parts = ", ".join(f"{state} {count}" for state, count in _stack(totals))
    return f"Runs per hour, last 24 hours: {grand} runs ({parts})"


def runs_by_state(buckets: Sequence[HourBucket], *, now: datetime, width: int = 720, height: int = 160) -> Markup:
    """A stacked bar chart of runs per hour over the 24 hours up to and including ``now``'s hour.

    Args:
        buckets: Runs per hour and state; hours without a bucket are drawn as empty bars.
        now: The current time; the last bar is the hour that contains it.
        width: SVG width in pixels.
        height: SVG height in pixels.

    Returns:
        SVG markup: one ``<g class="bar">`` per hour holding one ``<rect class="seg st-...">`` per state.

    Raises:
        ValueError: If the size leaves no room to draw.
    """
    if width < 200 or height < 80:
        raise ValueError(f"chart size {width}x{height} is too small (at least 200x80)")
    plot = _Plot(left=36.0, top=10.0, width=width - 44.0, height=height - 32.0)
    first = _utc(now).replace(minute=0, second=0, microsecond=0) - timedelta(hours=HOURS - 1)
    slots = _hour_totals(buckets, first)
    parts = [_line("axis", plot.left, plot.bottom, plot.right, plot.bottom), *_hour_labels(plot, first, height - 6)]
    largest = max(sum(slot.values()) for slot in slots)
    if not largest:
        parts.append(_message(plot.left + plot.width / 2, plot.top + plot.height / 2, "No runs in the last 24 hours"))
        return _svg(width, height, "chart-runs", _runs_summary(slots), parts)
    step, axis_top = _count_axis(largest)
    for value in range(0, axis_top + 1, step):
        y = plot.bottom - plot.height * value / axis_top
        parts.append(_line("grid", plot.left, y, plot.right, y))
        parts.append(f'<text class="tick y-tick" x="{_num(plot.left - 4)}" y="{_num(y + 4)}" text-anchor="end">')
        parts.append(f"{value}</text>")
    for index, slot in enumerate(slots):
        parts.extend(_hour_bar(plot, index, first + timedelta(hours=index), slot, axis_top))
    return _svg(width, height, "chart-runs", _runs_summary(slots), parts)


@dataclass(frozen=True)
class _Plot:
    """The drawing area inside the axes' margins."""

    left: float
    top: float
    width: float
    height: float

    @property
    def right(self) -> float:
        return self.left + self.width

    @property
    def bottom(self) -> float:
        return self.top + self.height

    @property
    def slot(self) -> float:
        return self.width / HOURS


def _hour_labels(plot: _Plot, first: datetime, y: float) -> list[str]:
    """``HH:00`` under the bars of 00, 06, 12 and 18 UTC; ``data-utc`` lets the page show local time."""
    labels = []
    for index in range(HOURS):
        hour = first + timedelta(hours=index)
        if hour.hour % 6 == 0:
            labels.append(
                f'<text class="tick x-tick" x="{_num(plot.left + plot.slot * (index + 0.5))}" y="{_num(y)}" '
                f'text-anchor="middle" data-utc="{hour.isoformat()}">{hour:%H}:00</text>'
            )
    return labels


def _hour_bar(plot: _Plot, index: int, hour: datetime, slot: Mapping[str, int], axis_top: int) -> list[str]:
    bar_w = plot.slot * 0.8
    x = plot.left + plot.slot * index + (plot.slot - bar_w) / 2
    parts = [f'<g class="bar" data-utc="{hour.isoformat()}" data-total="{sum(slot.values())}">']
    y = plot.bottom
    for state, count in _stack(slot):
        seg_h = plot.height * count / axis_top
        y -= seg_h
        parts.append(
            f'<rect class="seg {state_class(state)}" x="{_num(x)}" y="{_num(y)}" width="{_num(bar_w)}" '
            f'height="{_num(seg_h)}"><title>{hour:%H}:00 UTC — {_text(state)}: {count}</title></rect>'
        )
    parts.append("</g>")
    return parts


# --- shared with the Gantt chart (gantt.py) and the pages' tables ---------------------------------------------


def duration(seconds: float) -> str:
    """A run's length (tooltips and the pages' tables): ``1.2 s`` under a minute, then ``3m 20s`` or ``2h 5m``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes}m"

"""The SVG charts parse as XML, draw what the numbers say, and show hostile names as text, never as markup.

The helpers here (``parse``, ``find``, ``title``) serve the Gantt chart's tests in ``test_gantt`` too."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from markupsafe import Markup

from baton.schemas.states import StateName
from baton.server.ui.charts import STATE_CLASS, HourBucket, runs_by_state, state_class

NS = "{http://www.w3.org/2000/svg}"
NOW = datetime(2026, 12, 2, 15, 42, 10, tzinfo=UTC)
THIS_HOUR = NOW.replace(minute=0, second=0, microsecond=0)
HOSTILE = "</text><script>alert(1)</script>"


def parse(markup: Markup) -> ET.Element:
    assert isinstance(markup, Markup)
    return ET.fromstring(str(markup))


def find(root: ET.Element, tag: str, css: str = "") -> list[ET.Element]:
    """Elements of ``tag`` whose class attribute contains every class in ``css``."""
    wanted = set(css.split())
    return [el for el in root.iter(NS + tag) if wanted <= set(el.get("class", "").split())]


def title(el: ET.Element) -> str:
    node = el.find(NS + "title")
    assert node is not None
    return node.text or ""


def ago(hours: int) -> datetime:
    return THIS_HOUR - timedelta(hours=hours)


def no_script(root: ET.Element) -> None:
    assert not [el for el in root.iter() if el.tag.lower().endswith("script")]


# --- state classes ---------------------------------------------------------------------------------------------


def test_every_state_has_a_lowercase_class_and_unknown_states_share_one() -> None:
    assert {STATE_CLASS[s.value] for s in StateName} == {f"st-{s.value.lower()}" for s in StateName}
    assert state_class("Success") == "st-success"
    assert state_class("Cancelling") == "st-cancelling"
    assert state_class("Exploded") == "st-unknown"
    assert state_class(HOSTILE) == "st-unknown"


# --- runs by state ---------------------------------------------------------------------------------------------


def test_runs_chart_has_24_bars_with_one_segment_per_nonzero_state() -> None:
    buckets = [HourBucket(ago(0), {"Success": 3, "Failed": 1, "Running": 0}), HourBucket(ago(5), {"Pending": 2})]

    root = parse(runs_by_state(buckets, now=NOW))

    bars = find(root, "g", "bar")
    assert len(bars) == 24
    assert bars[-1].get("data-utc") == THIS_HOUR.isoformat()
    assert bars[0].get("data-utc") == ago(23).isoformat()
    assert len(find(root, "rect", "seg")) == 3
    assert [el.get("class") for el in find(bars[-1], "rect")] == ["seg st-success", "seg st-failed"]
    assert [el.get("class") for el in find(bars[-6], "rect")] == ["seg st-pending"]
    assert sum(1 for bar in bars if not find(bar, "rect")) == 22


def test_segment_heights_are_proportional_to_counts_and_stack_upwards() -> None:
    buckets = [HourBucket(ago(1), {"Success": 10}), HourBucket(ago(2), {"Success": 5, "Failed": 5})]

    root = parse(runs_by_state(buckets, now=NOW))

    bars = find(root, "g", "bar")
    (ten,) = find(bars[-2], "rect")
    five_ok, five_failed = find(bars[-3], "rect")
    assert float(ten.get("height", "0")) == pytest.approx(2 * float(five_ok.get("height", "0")), abs=0.02)
    assert float(five_ok.get("height", "0")) == pytest.approx(float(five_failed.get("height", "0")))
    # Failed sits on top of Success: its bottom edge is Success's top edge, and both stacks reach the same height.
    top_ok, h_failed = float(five_ok.get("y", "0")), float(five_failed.get("height", "0"))
    assert float(five_failed.get("y", "0")) + h_failed == pytest.approx(top_ok, abs=0.02)
    assert float(five_failed.get("y", "0")) == pytest.approx(float(ten.get("y", "0")), abs=0.02)


def test_segment_titles_say_hour_state_and_count() -> None:
    root = parse(runs_by_state([HourBucket(THIS_HOUR.replace(hour=14), {"Success": 12})], now=NOW))

    (seg,) = find(root, "rect", "seg")
    assert title(seg) == "14:00 UTC — Success: 12"


@pytest.mark.parametrize(
    ("largest", "ticks"),
    [(1, ["0", "1"]), (3, ["0", "1", "2", "3"]), (7, ["0", "5", "10"]), (12, ["0", "5", "10", "15"]),
     (40, ["0", "20", "40"]), (950, ["0", "500", "1000"])],
)  # fmt: skip
def test_y_axis_has_two_to_four_round_ticks_covering_the_largest_total(largest: int, ticks: list[str]) -> None:
    root = parse(runs_by_state([HourBucket(ago(0), {"Success": largest})], now=NOW))

    assert [el.text for el in find(root, "text", "y-tick")] == ticks


def test_hour_labels_every_six_hours_in_utc_with_the_iso_value() -> None:
    root = parse(runs_by_state([HourBucket(ago(0), {"Success": 1})], now=NOW))

    labels = find(root, "text", "x-tick")
    assert [el.text for el in labels] == ["18:00", "00:00", "06:00", "12:00"]
    assert labels[1].get("data-utc") == "2026-12-02T00:00:00+00:00"


def test_aria_label_sums_the_window_and_buckets_outside_it_are_ignored() -> None:
    buckets = [
        HourBucket(ago(0), {"Success": 4, "Failed": 1}),
        HourBucket(ago(3), {"Success": 2}),
        HourBucket(ago(24), {"Success": 100}),  # a day ago: outside the window
        HourBucket(THIS_HOUR + timedelta(hours=1), {"Success": 100}),  # the future
    ]

    root = parse(runs_by_state(buckets, now=NOW))

    assert root.get("role") == "img"
    assert root.get("aria-label") == "Runs per hour, last 24 hours: 7 runs (Success 6, Failed 1)"
    assert len(find(root, "rect", "seg")) == 3


def test_naive_and_non_utc_times_are_read_as_the_same_instant() -> None:
    cet = datetime(2026, 12, 2, 15, 0, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    naive = ago(1).replace(tzinfo=None)

    root = parse(runs_by_state([HourBucket(cet, {"Success": 1}), HourBucket(naive, {"Failed": 1})], now=NOW))

    bars = find(root, "g", "bar")
    assert [el.get("class") for el in find(bars[-1], "rect")] == ["seg st-success"]
    assert [el.get("class") for el in find(bars[-2], "rect")] == ["seg st-failed"]


def test_no_runs_shows_a_message_instead_of_bars() -> None:
    for buckets in ([], [HourBucket(ago(2), {"Success": 0})]):
        root = parse(runs_by_state(buckets, now=NOW))

        assert not find(root, "rect")
        assert [el.text for el in find(root, "text", "empty")] == ["No runs in the last 24 hours"]
        assert root.get("aria-label") == "Runs per hour, last 24 hours: no runs"


def test_unknown_and_hostile_state_names_are_escaped_and_classed_unknown() -> None:
    root = parse(runs_by_state([HourBucket(ago(0), {HOSTILE: 2, "Success": 1})], now=NOW))

    no_script(root)
    hostile = find(root, "rect", "st-unknown")
    assert len(hostile) == 1
    assert title(hostile[0]) == f"{THIS_HOUR:%H}:00 UTC — {HOSTILE}: 2"
    assert HOSTILE in (root.get("aria-label") or "")


def test_runs_chart_refuses_a_size_it_cannot_draw_in() -> None:
    with pytest.raises(ValueError, match="too small"):
        runs_by_state([], now=NOW, width=50)

"""The SVG charts parse as XML, draw what the numbers say, and show hostile names as text, never as markup."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from markupsafe import Markup

from baton.schemas.states import StateName
from baton.server.ui.charts import STATE_CLASS, HourBucket, TaskBar, gantt, runs_by_state, state_class

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


# --- gantt -----------------------------------------------------------------------------------------------------

T0 = NOW - timedelta(seconds=100)


def bar_of(row: ET.Element) -> ET.Element:
    (rect,) = find(row, "rect", "bar")
    return rect


def right_edge(rect: ET.Element) -> float:
    return float(rect.get("x", "0")) + float(rect.get("width", "0"))


def test_gantt_draws_one_row_per_task_with_state_classes_and_titles() -> None:
    bars = [
        TaskBar("extract", "Success", T0, T0 + timedelta(seconds=1.2), 2),
        TaskBar("load", "Failed", T0 + timedelta(seconds=10), T0 + timedelta(seconds=70), 1),
    ]

    root = parse(gantt(bars, now=NOW))

    rows = find(root, "g", "row")
    assert len(rows) == 2
    assert [bar_of(row).get("class") for row in rows] == ["bar st-success", "bar st-failed"]
    assert title(bar_of(rows[0])) == "extract — Success, 1.2 s, attempt 2"
    assert title(bar_of(rows[1])) == "load — Failed, 1m 0s, attempt 1"
    assert [el.text for el in find(root, "text", "task-name")] == ["extract", "load"]


def test_gantt_bar_positions_follow_the_shared_time_axis() -> None:
    bars = [
        TaskBar("a", "Success", T0, T0 + timedelta(seconds=30), 1),
        TaskBar("b", "Success", T0 + timedelta(seconds=30), T0 + timedelta(seconds=90), 1),
    ]

    root = parse(gantt(bars, now=NOW))

    first, second = (bar_of(row) for row in find(root, "g", "row"))
    assert float(second.get("x", "0")) == pytest.approx(right_edge(first), abs=0.02)
    assert float(second.get("width", "0")) == pytest.approx(2 * float(first.get("width", "0")), abs=0.02)
    ticks = {el.text: float(el.get("x", "0")) for el in find(root, "text", "t-tick")}
    assert ticks["0s"] == pytest.approx(float(first.get("x", "0")))
    assert ticks["30s"] == pytest.approx(right_edge(first), abs=0.02)
    assert ticks["1m30s"] == pytest.approx(right_edge(second), abs=0.02)


@pytest.mark.parametrize(
    ("seconds", "labels"),
    [(100, ["0s", "30s", "1m", "1m30s", "2m"]), (0.8, ["0s", "0.2s", "0.4s", "0.6s", "0.8s"]),
     (5, ["0s", "1s", "2s", "3s", "4s", "5s"]), (3000, ["0s", "10m", "20m", "30m", "40m", "50m"]),
     (5 * 3600 + 60, ["0s", "1h", "2h", "3h", "4h", "5h", "6h"]), (0, ["0s", "1s"]),
     (2.5, ["0s", "0.5s", "1s", "1.5s", "2s", "2.5s"]), (2 * 86400, ["0s", "12h", "1d", "1d12h", "2d"])],
)  # fmt: skip
def test_time_axis_ticks_are_nice_steps_from_the_first_start(seconds: float, labels: list[str]) -> None:
    bars = [TaskBar("t", "Success", T0, T0 + timedelta(seconds=seconds), 1)]

    root = parse(gantt(bars, now=NOW))

    assert [el.text for el in find(root, "text", "t-tick")] == labels


def test_running_bar_reaches_now() -> None:
    bars = [
        TaskBar("done", "Success", T0, T0 + timedelta(seconds=20), 1),
        TaskBar("going", "Running", T0 + timedelta(seconds=10), None, 3),
    ]

    root = parse(gantt(bars, now=NOW))

    done, going = (bar_of(row) for row in find(root, "g", "row"))
    (now_line,) = find(root, "line", "now")
    assert right_edge(going) == pytest.approx(float(now_line.get("x1", "0")), abs=0.02)
    # 100 s from the first start: five times the 20 s bar.
    assert right_edge(going) - float(done.get("x", "0")) == pytest.approx(5 * float(done.get("width", "0")), abs=0.05)
    assert "running" in (going.get("class") or "").split()
    assert title(going) == "going — Running, 1m 30s so far, attempt 3"


def test_zero_length_bars_stay_visible() -> None:
    bars = [TaskBar("instant", "Success", T0, T0, 1), TaskBar("long", "Success", T0, T0 + timedelta(minutes=5), 1)]

    root = parse(gantt(bars, now=NOW))

    instant = bar_of(find(root, "g", "row")[0])
    assert float(instant.get("width", "0")) >= 2
    assert title(instant) == "instant — Success, 0.0 s, attempt 1"


def test_unstarted_task_is_listed_with_a_note_and_no_bar() -> None:
    bars = [TaskBar("queued", "Pending", None, None, 1), TaskBar("ran", "Success", T0, NOW, 1)]

    root = parse(gantt(bars, now=NOW))

    queued, ran = find(root, "g", "row")
    assert not find(queued, "rect")
    assert [el.text for el in find(queued, "text", "not-started")] == ["not started"]
    assert len(find(ran, "rect", "bar")) == 1
    assert root.get("aria-label") == "Task runs: 2 tasks, 0 running, 1 not started"


def test_only_unstarted_tasks_draw_no_axis() -> None:
    root = parse(gantt([TaskBar("a", "Pending", None, None, 1)], now=NOW))

    assert not find(root, "text", "t-tick")
    assert len(find(root, "text", "not-started")) == 1


def test_long_names_are_truncated_with_the_full_name_in_a_title() -> None:
    name = "transform_customer_records_for_the_quarterly_report"

    root = parse(gantt([TaskBar(name, "Success", T0, NOW, 1)], now=NOW))

    (label,) = find(root, "text", "task-name")
    assert label.text is not None
    assert len(label.text) == 28
    assert label.text.endswith("…")
    assert name.startswith(label.text[:-1])
    assert title(label) == name


def test_hostile_task_names_are_text_not_markup() -> None:
    bars = [TaskBar(HOSTILE, "Running", T0, None, 1), TaskBar(HOSTILE + "\x00\x1b", HOSTILE, T0, NOW, 1)]

    root = parse(gantt(bars, now=NOW))

    no_script(root)
    first, second = find(root, "g", "row")
    assert title(find(first, "text", "task-name")[0]) == HOSTILE
    assert title(bar_of(first)).startswith(HOSTILE + " — Running")
    # Characters XML cannot carry become U+FFFD; an unknown state gets the unknown class and its text escaped.
    assert title(find(second, "text", "task-name")[0]) == HOSTILE + "\ufffd\ufffd"
    assert bar_of(second).get("class") == "bar st-unknown"
    assert title(bar_of(second)).startswith(f"{HOSTILE}\ufffd\ufffd — {HOSTILE}, ")


def test_gantt_caps_rows_at_500_and_counts_the_rest() -> None:
    bars = [TaskBar(f"task-{i}", "Success", T0, T0 + timedelta(seconds=i % 7), 1) for i in range(612)]

    root = parse(gantt(bars, now=NOW))

    assert len(find(root, "g", "row")) == 500
    assert [el.text for el in find(root, "text", "more")] == ["and 112 more"]
    assert root.get("aria-label") == "Task runs: 612 tasks, 0 running, 0 not started, 112 not shown"


def test_exactly_500_rows_have_no_more_row() -> None:
    bars = [TaskBar(f"t{i}", "Success", T0, NOW, 1) for i in range(500)]

    root = parse(gantt(bars, now=NOW))

    assert len(find(root, "g", "row")) == 500
    assert not find(root, "text", "more")


def test_no_task_runs_shows_a_short_message() -> None:
    root = parse(gantt([], now=NOW))

    assert [el.text for el in find(root, "text", "empty")] == ["No task runs yet"]
    assert not find(root, "g", "row")
    assert float(root.get("height", "0")) < 60


def test_end_before_start_is_drawn_as_zero_length() -> None:
    root = parse(gantt([TaskBar("skewed", "Success", T0, T0 - timedelta(seconds=5), 1)], now=NOW))

    assert title(bar_of(find(root, "g", "row")[0])) == "skewed — Success, 0.0 s, attempt 1"

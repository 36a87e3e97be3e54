"""The task-run Gantt chart: a row per task run as before, and one bounded band per mapped task whose lanes show
how many children ran at once (issue 14: the run page shows the parallelism)."""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest

from baton.server.ui.gantt import GANTT_MAX_ROWS, MAX_LANES, TaskBar, gantt

from .test_charts import HOSTILE, NOW, find, no_script, parse, title

# --- plain task runs: a row each -------------------------------------------------------------------------------

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


def test_five_plain_tasks_draw_five_rows_where_they_always_were() -> None:
    bars = [TaskBar(name, "Success", T0 + timedelta(seconds=10 * i), T0 + timedelta(seconds=10 * i + 8), 1)
            for i, name in enumerate(["extract", "clean", "join", "load", "report"])]  # fmt: skip

    root = parse(gantt(bars, now=NOW))

    rows = find(root, "g", "row")
    assert [row.get("transform") for row in rows] == [f"translate(0,{20 + 22 * i})" for i in range(5)]
    assert [(bar_of(row).get("y"), bar_of(row).get("height")) for row in rows] == [("3.3", "15.4")] * 5
    assert root.get("height") == str(20 + 5 * 22 + 4)
    assert not find(root, "g", "band")
    assert root.get("aria-label") == "Task runs: 5 tasks, 0 running, 0 not started"
    # The last tick's label ends at the right edge rather than centred on it (it was cut off: "1m30" for "1m30s").
    assert [el.get("text-anchor") for el in find(root, "text", "t-tick")] == ["start", *["middle"] * 4, "end"]


# --- mapped tasks: one band each --------------------------------------------------------------------------------

TO = "\N{EN DASH}"  # between a band's first and last map index: "[0-999]" typeset


def batches(task: str, count: int, at_once: int, *, start_index: int = 0, failed: frozenset[int] = frozenset(),
            seconds: float = 1.0) -> list[TaskBar]:  # fmt: skip
    """``count`` children of ``task`` in batches of ``at_once``: batch k runs from k to k+1 ``seconds`` after T0, so
    one batch ends as the next starts (touching, not at once)."""
    bars = []
    for index in range(start_index, start_index + count):
        start = T0 + timedelta(seconds=seconds * (index // at_once))
        state, attempt = ("Failed", 2) if index in failed else ("Success", 1)
        bars.append(TaskBar(f"{task}[{index}]", state, start, start + timedelta(seconds=seconds), attempt))
    return bars


def band_of(root: ET.Element) -> ET.Element:
    (band,) = find(root, "g", "band")
    return band


def lane_rects(band: ET.Element) -> list[ET.Element]:
    (lanes,) = find(band, "g", "lanes")
    return find(lanes, "rect", "bar")


def notes(band: ET.Element) -> list[str]:
    return [el.text or "" for el in find(band, "text", "band-note")]


def test_a_thousand_children_eight_at_a_time_draw_one_band_of_eight_lanes() -> None:
    failed = frozenset({17, 512, 940})
    bars = batches("together", 1000, 8, failed=failed)

    root = parse(gantt(bars, now=NOW))

    # One band, not 1,000 rows: a bounded height whatever the number of children.
    assert not find(root, "g", "row")
    band = band_of(root)
    assert (band.get("data-runs"), band.get("data-peak")) == ("1000", "8")
    assert float(root.get("height", "0")) < 150
    summary = f"together[0{TO}999]: 1000 runs, 997 Success, 3 Failed, at most 8 at once"
    assert title(band) == summary
    assert root.get("aria-label") == f"Task runs: 1000 tasks, 0 running, 0 not started. {summary}"
    assert [el.text for el in find(band, "text", "task-name")] == [f"together[0{TO}999]"]
    assert notes(band) == ["1000 runs, at most 8 at once", "997 Success, 3 Failed"]
    # Every child has its bar, in one of eight lanes, and the bars of a lane never overlap.
    rects = lane_rects(band)
    assert len(rects) == 1000
    lanes: dict[str, list[ET.Element]] = {}
    for rect in rects:
        lanes.setdefault(rect.get("y", ""), []).append(rect)
    assert len(lanes) == 8
    assert sorted(len(lane) for lane in lanes.values()) == [125] * 8
    for lane in lanes.values():
        edges = sorted((float(rect.get("x", "0")), right_edge(rect)) for rect in lane)
        assert all(nxt[0] >= prev[1] - 0.02 for prev, nxt in itertools.pairwise(edges))
    # Failures are drawn last (over their neighbours), each with its own title.
    assert [rect.get("class") for rect in rects[-3:]] == ["bar st-failed"] * 3
    assert title(rects[-3]) == "together[17] — Failed, 1.0 s, attempt 2"


def test_children_that_overlap_in_a_sliding_window_count_only_true_overlaps() -> None:
    # Child i runs from i/2 s for 2 s: four run at every moment; the fifth starts exactly as the first ends.
    bars = [TaskBar(f"slide[{i}]", "Success", T0 + timedelta(seconds=i / 2), T0 + timedelta(seconds=i / 2 + 2), 1)
            for i in range(1000)]  # fmt: skip

    band = band_of(parse(gantt(bars, now=NOW)))

    assert band.get("data-peak") == "4"
    assert len({rect.get("y") for rect in lane_rects(band)}) == 4
    assert notes(band)[0] == "1000 runs, at most 4 at once"


def test_more_children_at_once_than_lanes_draw_a_stacked_profile_with_its_peak() -> None:
    bars = batches("fan", 1000, 100, failed=frozenset(range(50)))

    root = parse(gantt(bars, now=NOW))

    band = band_of(root)
    assert band.get("data-peak") == "100"
    assert MAX_LANES < 100
    assert not find(band, "g", "lanes")
    assert not find(band, "rect", "bar")
    # The tallest layer first (Success and Failed together), then Success over it.
    paths = find(band, "path", "profile")
    assert [path.get("class") for path in paths] == ["profile st-failed", "profile st-success"]
    assert title(paths[0]) == "fan — Failed: 50 runs"
    # 100 at once fill the band's 96 px (from 3.3 down to 99.3); the first batch is half Failed, so there Success
    # alone reaches half-way, and the next batches (all Success) reach the top.
    failed_path, success_path = (re.findall(r"V(-?[0-9.]+)", path.get("d", "")) for path in paths)
    assert [float(v) for v in failed_path[:3]] == [3.3, 3.3, 3.3]
    assert [float(v) for v in success_path[:3]] == [3.3 + 96 / 2, 3.3, 3.3]
    assert float(failed_path[-1]) == float(success_path[-1]) == 99.3
    assert [el.text for el in find(band, "text", "peak")] == ["100"]
    assert float(root.get("height", "0")) < 150


def test_three_plain_tasks_and_two_maps_of_300_keep_their_order_and_a_shared_axis() -> None:
    fetch = TaskBar("fetch", "Success", T0, T0 + timedelta(seconds=2), 1)
    merge = TaskBar("merge", "Success", T0 + timedelta(seconds=30), T0 + timedelta(seconds=32), 1)
    publish = TaskBar("publish", "Pending", None, None, 1)
    bars = [fetch, *batches("download", 300, 12), merge, *batches("thumb", 300, 60), publish]

    root = parse(gantt(bars, now=NOW))

    drawn = [el for el in root if el.get("class") in {"row", "band"}]
    assert [el.get("class") for el in drawn] == ["row", "band", "row", "band", "row"]
    offsets = [float((el.get("transform") or "")[len("translate(0,") : -1]) for el in drawn]
    assert offsets == sorted(offsets)
    assert [band.get("data-peak") for band in find(root, "g", "band")] == ["12", "60"]
    assert len(find(root, "g", "lanes")) == 1
    assert len(find(root, "g", "profile")) == 1
    assert root.get("aria-label") == (
        f"Task runs: 603 tasks, 0 running, 1 not started. download[0{TO}299]: 300 runs, 300 Success, at most 12 at"
        f" once. thumb[0{TO}299]: 300 runs, 300 Success, at most 60 at once"
    )
    assert float(root.get("height", "0")) < 20 + 3 * 22 + 2 * 110 + 4


def test_running_and_unstarted_children_are_counted_and_running_ones_reach_now() -> None:
    done = batches("work", 4, 2, seconds=10)
    running = [TaskBar(f"work[{i}]", "Running", T0 + timedelta(seconds=20), None, 1) for i in range(4, 7)]
    waiting = [TaskBar(f"work[{i}]", "Pending", None, None, 1) for i in range(7, 10)]

    root = parse(gantt(done + running + waiting, now=NOW))

    band = band_of(root)
    assert title(band) == f"work[0{TO}9]: 10 runs, 4 Success, 3 Running, 3 Pending, at most 3 at once, 3 not started"
    assert root.get("aria-label", "").startswith("Task runs: 10 tasks, 3 running, 3 not started. ")
    going = [rect for rect in lane_rects(band) if "running" in (rect.get("class") or "").split()]
    assert len(going) == 3
    (now_line,) = find(root, "line", "now")
    assert all(right_edge(rect) == pytest.approx(float(now_line.get("x1", "0")), abs=0.02) for rect in going)


def test_a_map_whose_children_have_not_started_says_so() -> None:
    band = band_of(parse(gantt([TaskBar(f"q[{i}]", "Pending", None, None, 1) for i in range(5)], now=NOW)))

    assert title(band) == f"q[0{TO}4]: 5 runs, 5 Pending, none started"
    assert [el.text for el in find(band, "text", "not-started")] == ["not started"]
    assert not find(band, "rect", "bar")


def test_a_single_indexed_task_and_same_named_plain_task_stay_plain_rows() -> None:
    bars = [TaskBar("x[0]", "Success", T0, NOW, 1), TaskBar("y", "Success", T0, NOW, 1), *batches("y", 2, 2)]

    root = parse(gantt(bars, now=NOW))

    assert [el.text for el in find(root, "text", "task-name")] == ["x[0]", "y", f"y[0{TO}1]"]
    assert len(find(root, "g", "row")) == 2
    assert band_of(root).get("data-runs") == "2"


def test_two_maps_of_one_task_share_its_band() -> None:
    bars = batches("t", 3, 3) + batches("t", 3, 3)

    band = band_of(parse(gantt(bars, now=NOW)))

    assert title(band) == f"t[0{TO}2]: 6 runs, 6 Success, at most 6 at once"


def test_rows_after_a_band_stop_at_the_same_height_budget_and_are_counted() -> None:
    bars = [*batches("wide", 20, 10), *(TaskBar(f"task-{i}", "Success", T0, NOW, 1) for i in range(600))]

    root = parse(gantt(bars, now=NOW))

    (background,) = find(band_of(root), "rect", "band-bg")
    band_height = float(background.get("height", "0")) + 2
    shown = len(find(root, "g", "row"))
    assert band_height + 22 * shown <= GANTT_MAX_ROWS * 22 < band_height + 22 * (shown + 1)
    assert [el.text for el in find(root, "text", "more")] == [f"and {600 - shown} more"]
    assert root.get("aria-label", "").startswith(f"Task runs: 620 tasks, 0 running, 0 not started, {600 - shown} not")


def test_long_and_hostile_mapped_names_keep_their_index_range_and_stay_text() -> None:
    long_task = "transform_customer_records_for_the_quarterly_report"
    bars = batches(long_task, 3, 3) + batches(HOSTILE + "\x00", 3, 3)

    root = parse(gantt(bars, now=NOW))

    no_script(root)
    first, second = find(root, "g", "band")
    (label,) = find(first, "text", "task-name")
    assert label.text is not None
    assert len(label.text) == 28
    assert label.text.endswith(f"…[0{TO}2]")
    assert title(first).startswith(f"{long_task}[0{TO}2]: 3 runs")
    assert title(second).startswith(f"{HOSTILE}\ufffd[0{TO}2]: 3 runs")
    assert title(lane_rects(second)[0]).startswith(f"{HOSTILE}\ufffd[0] — Success")


def test_a_chart_of_the_first_page_of_task_runs_says_others_were_not_loaded() -> None:
    bars = [TaskBar("load", "Success", T0, NOW, 1), *batches("together", 999, 8)]

    root = parse(gantt(bars, now=NOW, incomplete=True))

    assert [el.text for el in find(root, "text", "more")] == ["and others not loaded"]
    assert (root.get("aria-label") or "").startswith("Task runs: the first 1000 tasks, 0 running, 0 not started. ")
    many = [TaskBar(f"task-{i}", "Success", T0, NOW, 1) for i in range(501)]
    assert [el.text for el in find(parse(gantt(many, now=NOW, incomplete=True)), "text", "more")] == [
        "and 1 more, and others not loaded"
    ]

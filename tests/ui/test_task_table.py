"""The run page's task-run table as data (``ui/task_table.py``): a row per task run as before, one summing-up row per
mapped task with the children that need a look first, and bounds that say what they leave out."""

from __future__ import annotations

import itertools
import re
from datetime import timedelta

import pytest

from baton.schemas.responses import TaskRunRead
from baton.server.ui import task_table
from baton.server.ui.gantt import TaskBar, gantt
from baton.server.ui.task_table import MAX_CHILDREN, MAX_LISTED, MAX_ROWS, Group, build

from .test_charts import NOW

T0 = NOW - timedelta(minutes=10)
_ids = itertools.count()


def run(name: str, state: str = "Success", start: float | None = 0.0, seconds: float | None = 1.0) -> TaskRunRead:
    """A task run started ``start`` seconds after T0 that took ``seconds`` (None: still running)."""
    begun = None if start is None else T0 + timedelta(seconds=start)
    ended = None if begun is None or seconds is None else begun + timedelta(seconds=seconds)
    return TaskRunRead(
        id=f"00000000-0000-0000-0000-{next(_ids):012d}",
        flow_run_id="00000000-0000-0000-0000-000000000000",
        task_name=name,
        state=state,
        message=None,
        attempt=1,
        start_time=begun,
        end_time=ended,
        created=T0,
    )


def mapped(task: str, count: int, failed: tuple[int, ...] = (), running: tuple[int, ...] = ()) -> list[TaskRunRead]:
    def state(index: int) -> str:
        return "Failed" if index in failed else "Running" if index in running else "Success"

    return [run(f"{task}[{i}]", state(i), i * 0.1, None if i in running else 1 + (i % 5) * 0.1) for i in range(count)]


def groups(table: task_table.TaskTable) -> list[Group]:
    return [row for row in table.rows if isinstance(row, Group)]


def test_plain_task_runs_stay_a_row_each_in_order_and_the_table_is_complete() -> None:
    tasks = [run(name) for name in ("extract", "validate", "load", "report", "notify")]

    table = build(tasks)

    assert table.rows == tasks
    assert not table.grouped
    assert (table.covered, table.loaded, table.total, table.complete) == (5, 5, 5, True)


def test_a_thousand_children_are_one_row_summed_up_with_the_failed_ones_named_and_listed_first() -> None:
    tasks = [run("extract"), *mapped("together", 1000, failed=(17, 503, 871)), run("load")]

    table = build(tasks)

    assert [row.task_name if isinstance(row, TaskRunRead) else row.label for row in table.rows] == [
        "extract",
        "together[0\N{EN DASH}999]",
        "load",
    ]
    (group,) = groups(table)
    assert (group.count, group.states) == (1000, [("Success", 997), ("Failed", 3)])
    assert group.durations == "1.0 s \N{EN DASH} 1.4 s"
    assert group.attention == [("Failed", [17, 503, 871], 0)]
    assert [child.task_name for child in group.shown[:4]] == [
        "together[17]",
        "together[503]",
        "together[871]",
        "together[0]",
    ]
    assert len(group.shown) == MAX_CHILDREN
    assert group.hidden == [("Success", 1000 - MAX_CHILDREN)]
    assert table.covered == table.total == 1002


def test_children_that_need_a_look_come_first_failed_then_cancelled_then_running() -> None:
    tasks = [
        run("m[0]", "Success"),
        run("m[1]", "Running", seconds=None),
        run("m[2]", "Pending", start=None),
        run("m[3]", "Cancelled"),
        run("m[4]", "Failed"),
        run("m[5]", "Failed"),
    ]

    (group,) = groups(build(tasks))

    assert [child.task_name for child in group.shown] == ["m[4]", "m[5]", "m[3]", "m[1]", "m[2]", "m[0]"]
    assert [name for name, _, _ in group.attention] == ["Failed", "Cancelled", "Running"]


def test_the_closed_row_names_a_few_failed_children_and_counts_the_rest() -> None:
    (group,) = groups(build(mapped("m", 200, failed=tuple(range(0, 200, 10)))))

    assert group.attention == [("Failed", [0, 10, 20, 30, 40, 50, 60, 70], 12)]


def test_the_table_stops_at_its_row_limit_and_counts_what_its_rows_stand_for() -> None:
    tasks = [run(f"step {i}") for i in range(MAX_ROWS + 20)]

    table = build(tasks, total=5000)

    assert len(table.rows) == MAX_ROWS
    assert (table.covered, table.loaded, table.total) == (MAX_ROWS, MAX_ROWS + 20, 5000)
    assert not table.complete
    assert table.first


def test_a_group_that_stands_for_children_loaded_late_is_not_the_first_n() -> None:
    tasks = [run("m[0]"), *(run(f"step {i}") for i in range(MAX_ROWS + 5)), run("m[1]")]

    table = build(tasks)

    assert (table.covered, table.total, table.first) == (MAX_ROWS + 1, MAX_ROWS + 7, False)


def test_many_maps_share_one_bound_on_the_children_listed_the_first_ones_first() -> None:
    tasks = [child for task in "abcdefghij" for child in mapped(task, 100)]

    table = build(tasks)

    listed = [len(group.shown) for group in groups(table)]
    assert sum(listed) == MAX_LISTED
    assert listed[:3] == [MAX_CHILDREN] * 3 and listed[-1] == 0
    assert [group.hidden_count for group in groups(table)][-1] == 100
    assert table.covered == table.total == 1000


def test_a_page_cut_by_the_load_is_the_first_n_of_the_total() -> None:
    table = build(mapped("m", 1000), total=1002)

    assert (table.covered, table.total, table.complete, table.first) == (1000, 1002, False, True)


def test_a_row_keeps_its_id_until_what_it_shows_changes_and_has_none_while_a_child_runs() -> None:
    done = mapped("m", 5, failed=(2,))
    (before,) = groups(build(done))
    (same,) = groups(build(list(done)))
    retried = [*done[:2], done[2].model_copy(update={"state": "Success"}), *done[3:]]
    (after,) = groups(build(retried))
    (running,) = groups(build(mapped("m", 5, running=(4,))))

    assert before.key is not None
    assert re.fullmatch(r"map-[0-9a-f]{20}", before.key)
    assert same.key == before.key
    assert after.key not in (None, before.key)
    assert running.key is None  # its duration grows with the clock: the live refresh must send it again


@pytest.mark.parametrize(
    "names",
    [
        ["x[", "x["],
        ["x[99999999999999999999]", "x[99999999999999999998]"],  # not a map index: 20 digits
        ["x[-1]", "x[-2]"],
        ["x[1] ", "x[2] "],
        ["only[0]"],  # a map over one item reads as the plain row it looks like
    ],
)
def test_names_that_only_look_mapped_stay_plain_rows(names: list[str]) -> None:
    tasks = [run(name) for name in names]

    assert build(tasks).rows == tasks


def test_markup_and_very_long_names_group_by_their_task_name() -> None:
    long = "t" * 480
    tasks = [run("<b>x</b>[0]"), run("<b>x</b>[1]"), run(f"{long}[0]"), run(f"{long}[7]")]

    first, second = groups(build(tasks))

    assert (first.task, first.label, first.count) == ("<b>x</b>", "<b>x</b>[0\N{EN DASH}1]", 2)
    assert (second.task, second.label) == (long, f"{long}[0\N{EN DASH}7]")


def test_the_table_groups_exactly_what_the_chart_draws_as_bands() -> None:
    names = ["a[0]", "b", "a[1]", "c[0]", "d[3]", "d[3]", "e[", "a[2]", "x[-1]", "x[-1]"]
    tasks = [run(name) for name in names]
    bars = [TaskBar(t.task_name, t.state, t.start_time, t.end_time, t.attempt) for t in tasks]

    chart = str(gantt(bars, now=NOW))
    bands = [int(count) for count in re.findall(r'<g class="band"[^>]*data-runs="(\d+)"', chart)]

    assert [group.count for group in groups(build(tasks))] == bands == [3, 2]


def test_children_not_started_have_no_duration_range() -> None:
    (group,) = groups(build([run("m[0]", "Pending", start=None), run("m[1]", "Pending", start=None)]))

    assert group.durations is None
    assert group.key is not None  # nothing in the row moves with the clock

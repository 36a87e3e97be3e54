"""The run page's table of task runs: a row per task run, and one row per mapped task that opens on its children.

``my_task.map(range(1000))`` makes 1,000 task runs (issue 14). A row each made the run page 38,000 px tall and its
live part, sent again every 2 s while the run goes on, 260 KB. The children of a mapped task (the chart's rule,
``gantt.group_mapped``: two or more runs named ``task[i]``) share one row that sums them up (the dashes are en
dashes, as printed)::

    together[0-999] · 1000 runs · 997 Success, 3 Failed · 1.0 s - 1.4 s
    Failed: [17], [503], [871]

and opens (a native ``<details>``, no script) on a list of them, the ones that need a look first (Failed, Cancelled,
Running, in that order), then the rest by map index. The table is bounded: at most :data:`MAX_ROWS` rows, and
:data:`MAX_CHILDREN` children listed per mapped task (:data:`MAX_LISTED` in all); what it leaves out is counted,
and the run's full list of task runs (``/runs/ID/tasks``, a page at a time) has every one::

    table = task_table.build(tasks, total=count_of_the_run)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from baton.schemas.responses import TaskRunRead
from baton.schemas.states import TaskRunState
from baton.server.ui.charts import _stack, duration
from baton.server.ui.gantt import Mapped, group_mapped

__all__ = ["MAX_CHILDREN", "MAX_LISTED", "MAX_ROWS", "Group", "TaskTable", "build"]

# Rows of the table (a mapped task is one row), children listed in one mapped task's row, and children listed in
# all of them (the first maps take them): enough for every run that a person reads row by row, and a bound on what
# the live refresh sends every 2 s (~300 rows, ~50 KB, however many maps of however many children).
MAX_ROWS = 100
MAX_CHILDREN = 100
MAX_LISTED = 300
# Children named in a mapped task's row (closed), per state that needs a look.
MAX_NAMED = 8
# The states a person looks for among 1,000 Success: listed first, and named in the closed row.
ATTENTION = (TaskRunState.FAILED, TaskRunState.CANCELLED, TaskRunState.RUNNING)
_EN_DASH = "\N{EN DASH}"


@dataclass(frozen=True)
class Group:
    """One mapped task's children, summed up; ``shown`` are those listed when the row is opened."""

    task: str
    label: str  # ``together[0-999]`` (an en dash): the task and its range of map indexes
    count: int
    states: list[tuple[str, int]]  # how many children in each state, in the charts' order (Success first)
    durations: str | None  # the shortest and the longest finished child, ``1.0 s - 1.4 s`` (an en dash)
    attention: list[tuple[str, list[int], int]]  # per state of ATTENTION: map indexes named, and how many more
    shown: list[TaskRunRead]
    hidden: list[tuple[str, int]]  # the children not listed, by state
    key: str | None  # an id while nothing in the row can change by itself (see ``_key``)

    @property
    def hidden_count(self) -> int:
        return sum(count for _, count in self.hidden)


@dataclass(frozen=True)
class TaskTable:
    """The rows (task runs and groups, in order) and how many of the run's task runs they stand for."""

    rows: list[TaskRunRead | Group]
    covered: int  # task runs the rows stand for (a group stands for all its children, listed or not)
    loaded: int  # task runs the page loaded (one page: 1,000 at most, fewer past the byte budget)
    total: int  # task runs the run has
    first: bool  # the rows stand for the run's first ``covered`` task runs: the notice may say "the first N"

    @property
    def grouped(self) -> bool:
        return any(isinstance(row, Group) for row in self.rows)

    @property
    def complete(self) -> bool:
        return self.covered >= self.total


def build(tasks: Sequence[TaskRunRead], total: int | None = None) -> TaskTable:
    """The table of ``tasks`` (the run's first task runs, oldest first).

    Args:
        tasks: The task runs the page loaded, in display order.
        total: How many task runs the run has (``tasks`` may be its first page only); ``len(tasks)`` when None.

    Returns:
        At most :data:`MAX_ROWS` rows: a task run each, and a :class:`Group` where a mapped task's first child is.
    """
    rows: list[TaskRunRead | Group] = []
    covered: set[int] = set()  # positions in ``tasks`` of the task runs the rows stand for
    position = {id(task): index for index, task in enumerate(tasks)}
    listed = 0
    for item in group_mapped(tasks, lambda task: task.task_name):
        if len(rows) == MAX_ROWS:
            break
        if isinstance(item, Mapped):
            group = _group(item, min(MAX_CHILDREN, MAX_LISTED - listed))
            listed += len(group.shown)
            rows.append(group)
            covered.update(position[id(child)] for _, child in item.children)
        else:
            rows.append(item)
            covered.add(position[id(item)])
    # A group placed early may stand for children loaded late: then the rows are not "the first N".
    first = not covered or max(covered) == len(covered) - 1
    return TaskTable(rows, len(covered), len(tasks), max(total or 0, len(tasks)), first)


def _rank(child: TaskRunRead) -> int:
    """Where a child comes in the opened row: the ATTENTION states in order, then the others, Success last."""
    if child.state in ATTENTION:
        return ATTENTION.index(TaskRunState(child.state))
    return len(ATTENTION) + (child.state == TaskRunState.SUCCESS)


def _group(mapped: Mapped[TaskRunRead], room: int) -> Group:
    """The group's row, listing at most ``room`` children."""
    children = [child for _, child in mapped.children]
    # By rank, then map index; a stable sort keeps two runs of one index (names can repeat) in their order.
    ordered = [child for _, child in sorted(mapped.children, key=lambda pair: (_rank(pair[1]), pair[0]))]
    indexes = [index for index, _ in mapped.children]
    low, high = min(indexes), max(indexes)
    label = f"{mapped.task}[{low}]" if low == high else f"{mapped.task}[{low}{_EN_DASH}{high}]"
    counts: dict[str, int] = {}
    for child in children:
        counts[child.state] = counts.get(child.state, 0) + 1
    attention = []
    for state in ATTENTION:
        found = sorted(index for index, child in mapped.children if child.state == state)
        if found:
            attention.append((state.value, found[:MAX_NAMED], len(found) - MAX_NAMED if len(found) > MAX_NAMED else 0))
    hidden: dict[str, int] = {}
    for child in ordered[room:]:
        hidden[child.state] = hidden.get(child.state, 0) + 1
    return Group(
        task=mapped.task,
        label=label,
        count=len(children),
        states=_stack(counts),
        durations=_durations(children),
        attention=attention,
        shown=ordered[:room],
        hidden=_stack(hidden),
        key=_key(mapped.task, children),
    )


def _durations(children: Sequence[TaskRunRead]) -> str | None:
    seconds = [
        max(0.0, (child.end_time - child.start_time).total_seconds())
        for child in children
        if child.start_time is not None and child.end_time is not None
    ]
    if not seconds:
        return None
    low, high = duration(min(seconds)), duration(max(seconds))
    return low if low == high else f"{low} {_EN_DASH} {high}"


def _key(task: str, children: Sequence[TaskRunRead]) -> str | None:
    """An id that changes whenever anything the row shows changes, or None while a child runs (its duration grows
    with the clock).

    The live part of the page is swapped every 2 s, which would close an opened row each time; a row with this id
    is marked ``hx-preserve``, so htmx keeps the one on the page (open or not) as long as the id is the same: an
    opened map that has finished stays open while the rest of the run goes on, and any change makes a new id.
    """
    if any(child.start_time is not None and child.end_time is None for child in children):
        return None
    digest = hashlib.sha256(task.encode())
    for child in children:
        fields = (child.id, child.task_name, child.state, child.attempt, child.start_time, child.end_time)
        digest.update(repr(fields).encode())
    return f"map-{digest.hexdigest()[:20]}"

"""Fixtures for the SDK tests: a reporter that records task runs in memory, and flow files on disk."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from baton.schemas.states import TaskRunState
from baton.sdk.context import reporting_to


@dataclass
class RecordingReporter:
    """Keeps every task run and state it is told, like the API would."""

    names: dict[str, str] = field(default_factory=dict)
    states: list[tuple[str, str, str | None, int]] = field(default_factory=list)

    def task_run_created(self, task_name: str, state: TaskRunState = TaskRunState.RUNNING) -> str | None:
        task_run_id = f"tr-{len(self.names) + 1}"
        self.names[task_run_id] = task_name
        self.states.append((task_run_id, str(state), None, 1))
        return task_run_id

    def task_runs_created(
        self, task_names: Sequence[str], state: TaskRunState = TaskRunState.PENDING
    ) -> list[str | None]:
        return [self.task_run_created(name, state) for name in task_names]

    def task_run_state(
        self, task_run_id: str | None, state: TaskRunState, message: str | None = None, attempt: int = 1
    ) -> None:
        assert task_run_id is not None
        self.states.append((task_run_id, str(state), message, attempt))

    def history(self, task_run_id: str) -> list[str]:
        return [state for run_id, state, _, _ in self.states if run_id == task_run_id]


@pytest.fixture
def reporter() -> Iterator[RecordingReporter]:
    recording = RecordingReporter()
    with reporting_to(recording):
        yield recording


@pytest.fixture
def write_flow_file(tmp_path: Path) -> Callable[[str, str], Path]:
    """Write ``source`` (dedented) as ``<name>.py`` in a temp folder; return its path."""

    def write(name: str, source: str) -> Path:
        path = tmp_path / f"{name}.py"
        path.write_text(textwrap.dedent(source))
        return path

    return write


def fresh_needs_arg() -> type[Exception]:
    """An exception class that pickles but cannot be rebuilt from its pickle (``__init__`` wants two arguments,
    ``args`` holds one). Made anew at each call, then found by pickle as this module's ``NeedsArg``: importing
    ``distributed`` registers a pickling (tblib's) for every exception class defined before, which rebuilds it."""

    class NeedsArg(Exception):
        def __init__(self, code: int, text: str) -> None:
            super().__init__(text)
            self.code = code

    NeedsArg.__qualname__ = "NeedsArg"
    NeedsArg.__init__.__qualname__ = "NeedsArg.__init__"
    globals()["NeedsArg"] = NeedsArg
    return NeedsArg

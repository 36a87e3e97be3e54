"""Test helpers of the CLI tests: a scripted fake client, and the CLI run as a subprocess."""

from __future__ import annotations

import subprocess
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from baton.schemas.core import RunConfig
from baton.schemas.responses import FlowRunRead, LogRead, LogsPage, StateRead
from cli_runner import run_cli
from support import clean_env

T0 = datetime(2026, 1, 1, 9, 0, 0, tzinfo=UTC)


# --- a scripted client, for watching without a server -------------------------------------------


def make_run(state: str, history: list[tuple[str, str | None]] | None = None, **fields: Any) -> FlowRunRead:
    """A FlowRunRead in ``state``; ``history`` is (name, message) oldest first, one second apart."""
    history = history or [(state, None)]
    states = [
        StateRead(name=name, message=message, timestamp=T0 + timedelta(seconds=i))
        for i, (name, message) in enumerate(history)
    ]
    values: dict[str, Any] = {
        "id": "run-1",
        "name": "brave-otter",
        "flow_id": "flow-1",
        "flow_name": "hello",
        "flow_version": 2,
        "state": state,
        "state_message": history[-1][1],
        "labels": [],
        "parameters": {},
        "agent_id": None,
        "scheduled_start_time": T0,
        "created": T0,
        "start_time": None,
        "end_time": None,
        "deployment": None,
        "run_config": RunConfig(),
        "states": states,
    }
    values.update(fields)
    return FlowRunRead(**values)


def make_log(offset: int, message: str, seconds: float, level: int = 20) -> LogRead:
    return LogRead(
        id=offset,
        flow_run_id="run-1",
        task_run_id=None,
        timestamp=T0 + timedelta(seconds=seconds),
        level=level,
        name="baton.flow",
        message=message,
    )


@dataclass
class FakeClient:
    """Stands in for baton.client.Client: each get_flow_run returns the next scripted run (the last repeats)."""

    runs: list[FlowRunRead]
    logs: list[LogRead] = field(default_factory=list)
    # after how many get_flow_run calls each log line becomes visible (default: at once)
    log_visible_after: list[int] = field(default_factory=list)
    created: dict[str, Any] = field(default_factory=dict)
    reads: int = 0

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def create_flow_run(self, **kwargs: Any) -> FlowRunRead:
        self.created = kwargs
        return self.runs[0]

    def get_flow_run(self, flow_run_id: str) -> FlowRunRead:
        run = self.runs[min(self.reads, len(self.runs) - 1)]
        self.reads += 1
        return run

    def get_logs(self, flow_run_id: str, offset: int = 0, limit: int = 1000) -> LogsPage:
        visible = [
            log
            for i, log in enumerate(self.logs)
            if i >= len(self.log_visible_after) or self.log_visible_after[i] <= self.reads
        ]
        page = visible[offset : offset + limit]
        return LogsPage(logs=page, next_offset=offset + len(page))


# --- a real server started with `baton server start`, and the CLI as subprocesses -------------------


@dataclass
class CliServer:
    home: Path
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def admin_key(self) -> str:
        return str(tomllib.loads((self.home / "config.toml").read_text())["api"]["key"])

    def baton(self, *args: str, subprocess_: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``baton ARGS`` (``baton_cli``) that finds the server and key in $BATON_HOME/config.toml."""
        return baton_cli(self.home, *args, subprocess_=subprocess_, **env)


def baton_cli(home: Path, *args: str, subprocess_: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    """``baton ARGS`` with $BATON_HOME ``home`` and no BATON settings from the outer shell (in-process where that is
    the same, unless ``subprocess_``: ``cli_runner``)."""
    environment = clean_env(home, **env)
    environment.pop("COLUMNS", None)  # tables in pipes are wide by default: keep rows on one line
    return run_cli(args, environment, subprocess_=subprocess_)

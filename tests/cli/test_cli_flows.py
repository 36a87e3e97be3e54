"""`baton flows` and scheduled registration against a real server (every command a subprocess)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cli_support import CliServer

pytestmark = pytest.mark.integration

SCHEDULED = """
from baton import CronSchedule, IntervalSchedule, flow


@flow(schedule=[CronSchedule("*/10 * * * *", parameter_defaults={"n": 2}), IntervalSchedule(3600, labels=["x"])])
def {name}(n: int = 1) -> int:
    return n
"""

BAD = """
from baton import flow


@flow(schedule="every tuesday-ish")
def sloppy() -> None:
    pass
"""


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


def write_flow(tmp_path: Path, name: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text(SCHEDULED.replace("{name}", name))
    return str(path)


def test_registering_a_flow_with_an_invalid_schedule_exits_2_with_the_message(
    cli_server: CliServer, tmp_path: Path
) -> None:
    path = tmp_path / "sloppy.py"
    path.write_text(BAD)
    result = cli_server.baton("register", str(path))
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: cannot register: ")
    assert "invalid cron 'every tuesday-ish': give five fields" in line
    assert "sloppy.py, line 5" in line


def test_flows_list_and_get_show_schedules_and_next_times(cli_server: CliServer, tmp_path: Path) -> None:
    ok(cli_server.baton("register", write_flow(tmp_path, "listed")))
    table = ok(cli_server.baton("flows", "list")).stdout
    row = next(line for line in table.splitlines() if line.startswith("listed"))
    assert "cron '*/10 * * * *' (UTC); every 3600 s" in row and "active" in row
    listed = as_json(cli_server.baton("flows", "list", "--json"))
    entry = next(item for item in listed if item["name"] == "listed")
    assert entry["schedule"]["active"] is True and entry["schedule"]["next_run_time"]

    shown = as_json(cli_server.baton("flows", "get", "listed", "--json"))
    assert [clock["type"] for clock in shown["clocks"]] == ["cron", "interval"]
    assert all(len(clock["next_times"]) == 5 for clock in shown["clocks"])
    assert shown["clocks"][0]["clock"]["parameter_defaults"] == {"n": 2}
    human = ok(cli_server.baton("flows", "get", "listed")).stdout
    assert "Clocks" in human and "n=2" in human


def test_pause_resume_and_backfill(cli_server: CliServer, tmp_path: Path) -> None:
    ok(cli_server.baton("register", write_flow(tmp_path, "operated")))
    paused = ok(cli_server.baton("flows", "schedule", "pause", "operated")).stdout
    assert paused.startswith("Schedule of operated paused;")
    assert as_json(cli_server.baton("flows", "get", "operated", "--json"))["active"] is False
    resumed = ok(cli_server.baton("flows", "schedule", "resume", "operated")).stdout
    assert resumed.startswith("Schedule of operated active;")

    first = ok(cli_server.baton("flows", "backfill", "operated", "--start", "2026-01-01", "--end", "2026-01-01T02:00"))
    # 13 times of the cron (every 10 min over 2 h, both ends) and 3 of the interval (every hour)
    assert first.stdout.strip() == "Backfill of operated: 16 runs created, 0 already existed."
    again = as_json(
        cli_server.baton(
            "flows", "backfill", "operated", "--start", "2026-01-01", "--end", "2026-01-01T02:00", "--json"
        )
    )
    assert (again["created"], again["existing"]) == (0, 16)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("flows", "backfill", "operated2", "--start", "yesterday", "--end", "2026-01-02"), 2, "not an ISO 8601"),
        (("flows", "backfill", "operated2", "--start", "2026-01-02", "--end", "2026-01-01"), 2, "is before --start"),
        (("flows", "backfill", "operated2", "--start", "2020-01-01", "--end", "2026-01-01"), 2, "more than 10000"),
        (("flows", "backfill", "nothing", "--start", "2026-01-01", "--end", "2026-01-02"), 1, "not found"),
        (("flows", "get", "nothing"), 1, "flow 'nothing' not found"),
        (("flows", "schedule", "pause", "nothing"), 1, "not found"),
    ],
)
def test_bad_input_and_unknown_flows_end_in_one_error_line_with_the_documented_exit_code(
    cli_server: CliServer, tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    ok(cli_server.baton("register", write_flow(tmp_path, "operated2")))
    result = cli_server.baton(*args)
    assert result.returncode == code, result.stderr
    # (click's usage errors print the usage first; the error itself is one line)
    last = result.stderr.splitlines()[-1]
    assert last.startswith("Error: ") and message in last


def test_a_read_key_cannot_pause(cli_server: CliServer, tmp_path: Path) -> None:
    ok(cli_server.baton("register", write_flow(tmp_path, "guarded")))
    key = as_json(cli_server.baton("key", "create", "--role", "read", "--json"))["key"]
    result = cli_server.baton("flows", "schedule", "pause", "guarded", "--key", key)
    assert result.returncode == 4 and "permission denied" in result.stderr
    assert as_json(cli_server.baton("flows", "get", "guarded", "--json", "--key", key))["active"] is True

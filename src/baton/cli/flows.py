"""``baton flows``: the registered flows and their schedules.

Usage::

    baton flows list
    baton flows get etl --json
    baton flows schedule pause etl
    baton flows schedule resume etl
    baton flows backfill etl --start 2026-11-01 --end 2026-11-30T23:59:59Z
"""

from __future__ import annotations

from datetime import UTC, datetime

import click

from baton.cli.context import CliState, api_options, pass_state
from baton.cli.output import InputError, echo_json, print_fields, print_table
from baton.schemas.responses import ScheduleRead

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
_flow_name = click.argument("flow_name", metavar="FLOW")


@click.group("flows")
def flows() -> None:
    """Registered flows and their schedules."""


def _state(schedule: ScheduleRead | None) -> str:
    if schedule is None:
        return "-"
    return "active" if schedule.active else "paused"


def _summary(schedule: ScheduleRead | None) -> str:
    if schedule is None:
        return "-"
    if schedule.problem:
        return f"unusable: {schedule.problem}"
    return "; ".join(clock.summary for clock in schedule.clocks) or "-"


@flows.command("list")
@_json_option
@api_options
@pass_state
def list_flows(state: CliState, as_json: bool) -> None:
    """List the flows (newest versions) with their schedules, whether paused, and the next run time."""
    with state.client() as client:
        found = client.list_flows()
        by_name = {schedule.flow_name: schedule for schedule in client.list_schedules()}
    if as_json:
        echo_json(
            [
                {
                    "name": flow.name,
                    "version": flow.version,
                    "kind": flow.kind,
                    "schedule": by_name[flow.name].model_dump(mode="json") if flow.name in by_name else None,
                }
                for flow in found
            ]
        )
        return
    rows = []
    for flow in found:
        schedule = by_name.get(flow.name)
        next_time = schedule.next_run_time if schedule is not None else None
        name = flow.name if flow.kind == "baton" else f"{flow.name} (Prefect 1)"
        rows.append((name, flow.version, _summary(schedule), _state(schedule), next_time))
    print_table(["flow", "version", "schedule", "state", "next run"], rows, empty="No flows.")


@flows.command("get")
@_flow_name
@_json_option
@api_options
@pass_state
def get_flow(state: CliState, flow_name: str, as_json: bool) -> None:
    """Show a flow's schedule: each clock, whether it is paused, and its next 5 run times."""
    with state.client() as client:
        schedule = client.get_schedule(flow_name)
    if as_json:
        echo_json(schedule)
        return
    print_fields(
        [
            ("flow", f"{schedule.flow_name} v{schedule.flow_version}"),
            ("schedule", _state(schedule) if schedule.clocks else "none"),
            ("next run", schedule.next_run_time),
            ("problem", schedule.problem),
        ]
    )
    rows = [
        (
            clock.id,
            clock.summary,
            ", ".join(f"{k}={v!r}" for k, v in clock.clock.get("parameter_defaults", {}).items()) or None,
            clock.clock.get("labels") or None,
            "\n".join(str(when) for when in clock.next_times) or "-",
        )
        for clock in schedule.clocks
    ]
    if rows:
        print_table(["clock", "when", "parameters", "labels", "next times"], rows, title="Clocks")


@flows.group("schedule")
def schedule() -> None:
    """Pause or resume a flow's schedule."""


@schedule.command("pause")
@_flow_name
@_json_option
@api_options
@pass_state
def pause(state: CliState, flow_name: str, as_json: bool) -> None:
    """Pause FLOW's schedule: no more runs are created; its scheduled runs not yet started are deleted."""
    with state.client() as client:
        result = client.pause_schedule(flow_name)
    if as_json:
        echo_json(result)
        return
    click.echo(f"Schedule of {result.flow_name} paused; {result.deleted_runs or 0} scheduled runs deleted.")


@schedule.command("resume")
@_flow_name
@_json_option
@api_options
@pass_state
def resume(state: CliState, flow_name: str, as_json: bool) -> None:
    """Resume FLOW's schedule from now (times passed while paused are not run: see `baton flows backfill`)."""
    with state.client() as client:
        result = client.resume_schedule(flow_name)
    if as_json:
        echo_json(result)
        return
    next_time = result.next_run_time.isoformat() if result.next_run_time else "none"
    click.echo(f"Schedule of {result.flow_name} active; {result.created_runs or 0} runs created; next run {next_time}.")


def _timestamp(_ctx: click.Context, param: click.Parameter, value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is not an ISO 8601 date or time (e.g. 2026-11-01 or 2026-11-01T09:00:00+01:00)",
            param=param,
        ) from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@flows.command("backfill")
@_flow_name
@click.option("--start", required=True, callback=_timestamp, help="First time included (ISO 8601; no offset: UTC).")
@click.option("--end", required=True, callback=_timestamp, help="Last time included (ISO 8601; no offset: UTC).")
@click.option(
    "--max-runs",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Refuse if more runs than this would be created (the server's bound applies too, 10,000 by default).",
)
@_json_option
@api_options
@pass_state
def backfill(
    state: CliState, flow_name: str, start: datetime, end: datetime, max_runs: int | None, as_json: bool
) -> None:
    """Create the runs FLOW's schedule would have created between --start and --end (past times only).

    Idempotent: a time that already has its run (from the scheduler or an earlier backfill) gets no second one.
    """
    if end < start:
        raise InputError(f"--end {end.isoformat()} is before --start {start.isoformat()}")
    with state.client() as client:
        result = client.backfill(flow_name, start, end, max_runs)
    if as_json:
        echo_json(result)
        return
    click.echo(f"Backfill of {result.flow_name}: {result.created} runs created, {result.existing} already existed.")

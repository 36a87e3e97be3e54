"""``baton run FLOW``: create a flow run, and optionally watch it to the end.

The run id is the first line on stdout, so ``RUN=$(baton run hello)`` works; the description goes to stderr.
With ``--watch`` the state changes and log lines follow on stdout, and the exit code is 0 on Success and 1 on
Failed or Cancelled. With ``--json`` stdout holds only JSON: the new run, or with ``--watch`` the final run.

Usage::

    baton run hello --param name=Ada --param times=3 --watch
    baton run etl --label prod --start-in 600 --json
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import click

from baton.cli.context import CliState, api_options, pass_state
from baton.cli.output import (
    EXIT_FAILURE,
    InputError,
    WatchInterrupted,
    echo_json,
    format_time,
    parse_labels,
    parse_params,
    stderr_console,
    stdout_console,
)
from baton.cli.waiting import WaitExplainer
from baton.cli.watch import RunFollower, spinner

if TYPE_CHECKING:
    from baton.client.http import Client
    from baton.schemas.responses import FlowRunRead


# Retries of the create when its answer was lost or the server failed (5xx): about 6 s at most.
CREATE_RETRIES = 3


def scheduled_start(start_in: float | None, start_at: str | None) -> datetime | None:
    """The run's start time from ``--start-in`` or ``--at`` (a time without timezone is local time)."""
    if start_in is not None and start_at is not None:
        raise InputError("give --start-in or --at, not both")
    if start_in is not None:
        return datetime.now(UTC) + timedelta(seconds=start_in)
    if start_at is None:
        return None
    try:
        when = datetime.fromisoformat(start_at)
    except ValueError as exc:
        raise InputError(f"--at {start_at!r} is not an ISO 8601 time, e.g. 2026-01-31T09:00:00+01:00") from exc
    return when if when.tzinfo is not None else when.astimezone()


def follow_run(client: Client, created: FlowRunRead, *, as_json: bool, poll_interval: float) -> FlowRunRead:
    """Follow the run to its final state (to stderr when stdout is for JSON); Ctrl-C stops watching only."""
    output = stderr_console() if as_json else stdout_console()
    label = f"flow run {created.name} ({created.flow_name} v{created.flow_version})"
    try:
        with spinner(f"{label}: {created.state}", output) as (update, console):
            follower = RunFollower(client, created.id, poll_interval=poll_interval, console=console)
            explain_wait = WaitExplainer(client, console)  # says why a due run is not taken (issue 9)

            def on_poll(run: FlowRunRead) -> None:
                update(f"{label}: {run.state}")
                explain_wait(run)

            return follower.follow(on_poll=on_poll)
    except KeyboardInterrupt:
        raise WatchInterrupted(
            f"stopped watching; flow run {created.id} goes on (cancel it with `baton runs cancel {created.id}`)"
        ) from None


@click.command()
@click.argument("flow")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A flow parameter (repeatable); the value is read as JSON when it is valid JSON (5, true, "
    '[1,2], "5"), else as a string.',
)
@click.option(
    "-l",
    "--label",
    "labels",
    multiple=True,
    metavar="LABEL",
    help="A run label (repeatable). Default: the run config's labels, else the flow's labels.",
)
@click.option("--version", "flow_version", type=click.IntRange(min=1), help="Flow version. Default: the latest.")
@click.option("--name", "run_name", help="A name for the run. Default: generated.")
@click.option("--start-in", type=click.FloatRange(min=0), metavar="SECONDS", help="Start this many seconds from now.")
@click.option("--at", "start_at", metavar="TIME", help="Start at this ISO 8601 time (local time without a zone).")
@click.option(
    "--executor",
    metavar="SPEC",
    help="Where the run's submitted tasks run, over the flow's executor: sequential, thread[:N], process[:N], "
    "dask[:N] (a temporary cluster of N workers) or dask:tcp://HOST:PORT.",
)
@click.option("--watch", is_flag=True, help="Stream states and logs until the run ends; exit 1 unless Success.")
@click.option("--json", "as_json", is_flag=True, help="Print the run as JSON.")
@click.option("--poll-interval", type=click.FloatRange(min=0.05), default=1.0, hidden=True)
@api_options
@pass_state
@click.pass_context
def run(
    ctx: click.Context,
    state: CliState,
    *,
    flow: str,
    params: tuple[str, ...],
    labels: tuple[str, ...],
    flow_version: int | None,
    run_name: str | None,
    start_in: float | None,
    start_at: str | None,
    executor: str | None,
    watch: bool,
    as_json: bool,
    poll_interval: float,
) -> None:
    """Create a run of the flow named FLOW (its latest version unless --version).

    The run id is the first line on stdout. With --watch its state changes and log lines follow until it ends,
    and the exit code is 0 for Success, 1 for Failed or Cancelled.
    """
    parameters = parse_params(params)
    run_labels = parse_labels(labels)
    start = scheduled_start(start_in, start_at)
    with state.client() as client:
        created = client.create_flow_run(
            flow_name=flow,
            flow_version=flow_version,
            parameters=parameters,
            labels=run_labels,
            scheduled_start_time=start,
            name=run_name,
            executor=executor,
            # One key for this command's create: a retry after a lost answer returns the same run.
            retries=CREATE_RETRIES,
        )
        if as_json and not watch:
            echo_json(created)
            return
        click.echo(created.id, err=as_json)
        labels_text = ", ".join(created.labels) or "none"
        click.echo(
            f"Created flow run {created.name} of {created.flow_name} v{created.flow_version}: "
            f"{created.state}, starts {format_time(created.scheduled_start_time)}, labels: {labels_text}",
            err=True,
        )
        if not watch:
            return
        final = follow_run(client, created, as_json=as_json, poll_interval=poll_interval)
    if as_json:
        echo_json(final)
    if final.state != "Success":
        ctx.exit(EXIT_FAILURE)

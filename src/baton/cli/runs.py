"""``baton runs``: list, inspect, follow, cancel and explain flow runs.

Usage::

    baton runs list --state Failed --flow etl
    baton runs get 3f2c... --json
    baton runs logs 3f2c... --follow
    baton runs explain 3f2c...     # which agents could take it, and why not
    baton runs list --late         # runs still waiting for an agent past their start time
    baton runs retry 3f2c...       # run a Failed or Cancelled run again, as a new run
"""

from __future__ import annotations

import click
from rich.text import Text

from baton.cli.context import CliState, api_options, pass_state
from baton.cli.output import AnyCaseChoice, WatchInterrupted, echo_json, print_fields, print_table, stdout_console
from baton.cli.watch import RunFollower
from baton.schemas.responses import FlowRunRead
from baton.schemas.states import StateName

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
_run_id = click.argument("flow_run_id", metavar="ID")


@click.group()
def runs() -> None:
    """Inspect and manage flow runs."""


@runs.command("list")
@click.option(
    "--state",
    "state_name",
    type=AnyCaseChoice([name.value for name in StateName]),
    help="Only runs in this state.",
)
@click.option("--flow", "flow_name", metavar="NAME", help="Only runs of this flow.")
@click.option(
    "--late",
    is_flag=True,
    help="Only late runs: Scheduled or Retrying and still unclaimed past their start time (plus the server's "
    "late_after_seconds).",
)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="At most this many.")
@_json_option
@api_options
@pass_state
def list_runs(
    state: CliState, state_name: str | None, flow_name: str | None, late: bool, limit: int, as_json: bool
) -> None:
    """List flow runs, newest first."""
    with state.client() as client:
        found = client.list_flow_runs(state=state_name, flow_name=flow_name, limit=limit, late=late)
    if as_json:
        echo_json(found)
        return
    rows = [
        (r.id, r.name, r.flow_name, r.flow_version, r.state, r.labels, r.scheduled_start_time, _agent(r)) for r in found
    ]
    print_table(
        ["id", "name", "flow", "version", "state", "labels", "scheduled", "agent"],
        rows,
        empty="No late flow runs." if late else "No flow runs.",
    )


def _agent(run: FlowRunRead, with_id: bool = False) -> str | None:
    """The run's agent by name (its id when the server gave no name: an older server)."""
    if run.agent_name is None:
        return run.agent_id
    return f"{run.agent_name} ({run.agent_id})" if with_id else run.agent_name


# `runs get` lists a run's first task runs; the REST API and the UI have them all.
TASK_RUNS_SHOWN = 100


@runs.command("get")
@_run_id
@_json_option
@api_options
@pass_state
def get_run(state: CliState, flow_run_id: str, as_json: bool) -> None:
    """Show one flow run with its state history (oldest first) and its task runs."""
    with state.client() as client:
        run = client.get_flow_run(flow_run_id)
        task_runs = [] if as_json else client.list_task_runs(flow_run_id)
    if as_json:
        echo_json(run)
        return
    print_fields(
        [
            ("id", run.id),
            ("name", run.name),
            ("flow", f"{run.flow_name} v{run.flow_version}"),
            ("state", run.state),
            ("attempt", run.attempt),
            ("retried from", run.retried_from),
            ("message", run.state_message),
            ("labels", run.labels),
            ("parameters", ", ".join(f"{k}={v!r}" for k, v in run.parameters.items()) or None),
            ("agent", _agent(run, with_id=True)),
            ("scheduled", run.scheduled_start_time),
            ("started", run.start_time),
            ("ended", run.end_time),
            ("deployment", ", ".join(f"{k}: {v}" for k, v in (run.deployment or {}).items()) or None),
        ]
    )
    rows = [(s.timestamp, s.name, s.message) for s in run.states]
    print_table(["time", "state", "message"], rows, title="States")
    if task_runs:
        shown = task_runs[:TASK_RUNS_SHOWN]
        tasks = [(t.task_name, t.state, t.attempt, t.start_time, t.end_time, t.message) for t in shown]
        more = len(task_runs) - len(shown)
        title = f"Task runs ({len(task_runs)}{f', first {len(shown)} shown' if more else ''})"
        print_table(["task", "state", "attempt", "started", "ended", "message"], tasks, title=title)


@runs.command("logs")
@_run_id
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines until the run is final.")
@click.option("--poll-interval", type=click.FloatRange(min=0.05), default=1.0, hidden=True)
@api_options
@pass_state
def logs(state: CliState, flow_run_id: str, follow: bool, poll_interval: float) -> None:
    """Print the log lines of a flow run."""
    with state.client() as client:
        follower = RunFollower(client, flow_run_id, show_states=False, poll_interval=poll_interval)
        if follow:
            try:
                follower.follow()
            except KeyboardInterrupt:
                raise WatchInterrupted(f"stopped following; flow run {flow_run_id} goes on") from None
        else:
            follower.poll()  # reads the run first: an unknown id is an error, not an empty log


@runs.command("cancel")
@_run_id
@_json_option
@api_options
@pass_state
def cancel(state: CliState, flow_run_id: str, as_json: bool) -> None:
    """Cancel a flow run: at once if not deployed yet, else its agent stops it (Cancelling, Cancelled)."""
    with state.client() as client:
        run = client.cancel_flow_run(flow_run_id)
    if as_json:
        echo_json(run)
        return
    click.echo(f"Flow run {run.id} is {run.state}.")


@runs.command("retry")
@_run_id
@_json_option
@api_options
@pass_state
def retry(state: CliState, flow_run_id: str, as_json: bool) -> None:
    """Run a Failed or Cancelled flow run again: a new run with the same flow version, parameters and labels,
    due now, that names ID as the run it retries."""
    with state.client() as client:
        run = client.retry_flow_run(flow_run_id)
    if as_json:
        echo_json(run)
        return
    click.echo(f"Flow run {run.id} ({run.name}) retries {flow_run_id}; it is {run.state}.")


@runs.command("explain")
@_run_id
@_json_option
@api_options
@pass_state
def explain(state: CliState, flow_run_id: str, as_json: bool) -> None:
    """Explain which registered agents could take a flow run, and why the others cannot."""
    with state.client() as client:
        explanation = client.explain_flow_run(flow_run_id)
    if as_json:
        echo_json(explanation)
        return
    if explanation.agents:
        rows = [
            (a.name, a.type, a.labels, a.last_seen, a.can_take, a.missing_labels, a.reason) for a in explanation.agents
        ]
        late = " (late)" if explanation.late else ""
        print_table(
            ["agent", "type", "labels", "last seen", "can take", "missing labels", "reason"],
            rows,
            title=f"Flow run {explanation.flow_run_id}: {explanation.state}{late}, labels: "
            f"{', '.join(explanation.labels) or 'none'}",
        )
    stdout_console().print(Text(explanation.summary))

"""``baton limits``: concurrency limits of labels in the key's tenant (a flow's own: ``@flow(max_concurrent_runs=N)``).

Usage::

    baton limits set gpu 2        # at most 2 runs labelled gpu are claimed or running at once
    baton limits list --json
    baton limits delete gpu
"""

from __future__ import annotations

import click

from baton.cli.context import CliState, api_options, pass_state
from baton.cli.output import echo_json, print_table
from baton.labels import validate_label
from baton.schemas.core import MAX_CONCURRENT_RUNS

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")


@click.group()
def limits() -> None:
    """Limit how many runs carrying a label hold a slot at once (Pending, Submitted, Running or Cancelling).

    A run with several limited labels needs a free slot in each, and in its flow's limit too. Runs over a limit
    wait in Scheduled; `baton runs explain ID` names the full limit.
    """


@limits.command("set")
@click.argument("label")
@click.argument("max_concurrent_runs", metavar="N", type=click.IntRange(1, MAX_CONCURRENT_RUNS))
@_json_option
@api_options
@pass_state
def set_limit(state: CliState, label: str, max_concurrent_runs: int, as_json: bool) -> None:
    """Allow at most N runs labelled LABEL at once (creates or changes the limit; admin or user key)."""
    label = validate_label(label)
    with state.client() as client:
        limit = client.set_label_limit(label, max_concurrent_runs)
    if as_json:
        echo_json(limit)
        return
    click.echo(f"Label {limit.label!r}: at most {limit.max_concurrent_runs} concurrent run(s) ({limit.active} now).")


@limits.command("list")
@_json_option
@api_options
@pass_state
def list_limits(state: CliState, as_json: bool) -> None:
    """List the tenant's label limits with the runs holding their slots now."""
    with state.client() as client:
        found = client.list_label_limits()
    if as_json:
        echo_json(found)
        return
    rows = [(limit.label, limit.max_concurrent_runs, limit.active, limit.updated) for limit in found]
    print_table(["label", "limit", "active", "updated"], rows, empty="No label limits.")


@limits.command("delete")
@click.argument("label")
@_json_option
@api_options
@pass_state
def delete_limit(state: CliState, label: str, as_json: bool) -> None:
    """Remove the limit of LABEL (admin or user key)."""
    label = validate_label(label)
    with state.client() as client:
        removed = client.delete_label_limit(label)
    if as_json:
        echo_json(removed)
        return
    click.echo(f"Removed the limit of label {removed.label!r} (was {removed.max_concurrent_runs}).")

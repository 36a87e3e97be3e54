"""``baton agents``: the fleet view of a tenant's agents (``baton agent`` starts one).

Usage::

    baton agents list                     # name, type, labels, last seen, live/stale, current runs
    baton agents list --json
    baton agents prune --yes              # delete stale agents that hold no run
    baton agents prune --older-than 86400 # only those unseen for a day; asks before deleting
"""

from __future__ import annotations

from collections.abc import Sequence

import click

from baton.cli.context import CliState, api_options, pass_state
from baton.cli.output import echo_json, print_table
from baton.schemas.responses import AgentRead

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


@click.group()
def agents() -> None:
    """See and tidy the tenant's agents (to start one: `baton agent local start`)."""


def _status(agent: AgentRead) -> str:
    if agent.live:
        return "live"
    return "deregistered" if agent.deregistered_at is not None else "stale"


def _runs(agent: AgentRead) -> str:
    if not agent.current_run_count:
        return "0"
    more = ", ..." if agent.current_run_count > len(agent.current_runs) else ""
    return f"{agent.current_run_count}: {', '.join(agent.current_runs)}{more}"


def _print_agents(found: Sequence[AgentRead], empty: str, title: str | None = None) -> None:
    rows = [(a.name, a.type, a.labels, a.last_seen, _status(a), _runs(a), a.id) for a in found]
    print_table(["name", "type", "labels", "last seen", "status", "current runs", "id"], rows, empty=empty, title=title)


@agents.command("list")
@click.option("--live", "only_live", is_flag=True, help="Only live agents (seen within the server's stale time).")
@_json_option
@api_options
@pass_state
def list_agents(state: CliState, only_live: bool, as_json: bool) -> None:
    """List the tenant's agents, oldest first: live (seen within the server's BATON__SERVER__AGENT_STALE_SECONDS,
    90 s by default), stale (unseen longer) or deregistered (stopped warmly), and the runs each holds (Pending,
    Submitted, Running, Cancelling)."""
    with state.client() as client:
        found = client.list_agents()
    if only_live:
        found = [agent for agent in found if agent.live]
    if as_json:
        echo_json(found)
        return
    _print_agents(found, empty="No agents." if not only_live else "No live agents.")


@agents.command()
@click.option(
    "--older-than",
    "older_than",
    type=click.FloatRange(min=0, min_open=True, max=10 * 365 * 86400),
    metavar="SECONDS",
    help="Only agents unseen for this long (at least, and by default, the server's agent stale time). "
    "Deregistered agents go whatever their age.",
)
@click.option("--yes", "-y", is_flag=True, help="Delete without asking.")
@_json_option
@api_options
@pass_state
def prune(state: CliState, older_than: float | None, yes: bool, as_json: bool) -> None:
    """Delete stale and deregistered agents that hold no run. Their ended runs keep their history, without the
    agent; an agent started again registers afresh. Lists them and asks first unless --yes."""
    with state.client() as client:
        only: list[str] | None = None
        if not yes:
            preview = client.prune_agents(older_than, dry_run=True)
            if not preview.pruned:
                _done(preview.pruned, as_json)
                return
            _print_agents(preview.pruned, empty="", title="Agents to delete")
            if not click.confirm(f"Delete these {len(preview.pruned)} agent(s)?", err=True):
                raise click.exceptions.Exit(1)
            only = [agent.id for agent in preview.pruned]  # what was shown, and still prunable: never more
        outcome = client.prune_agents(older_than, agent_ids=only)
    _done(outcome.pruned, as_json)


def _done(pruned: Sequence[AgentRead], as_json: bool) -> None:
    if as_json:
        echo_json(list(pruned))
        return
    if not pruned:
        click.echo("No agents to prune.")
        return
    click.echo(f"Deleted {len(pruned)} agent(s): {', '.join(agent.name for agent in pruned)}.")

"""``baton notify``: notification rules of the key's tenant (webhooks for run states, late runs, lost agents).

Usage::

    baton notify add --on Failed --on late --on agent-lost --webhook https://hooks.slack.com/services/...
    baton notify list
    baton notify test ID
    baton notify remove ID
"""

from __future__ import annotations

import click

from baton.cli.context import CliState, api_options, pass_state
from baton.cli.output import CliError, echo_json, format_time, print_fields, print_table
from baton.schemas.notifications import EVENTS, NotificationDeliveryRead

_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def _outcome(delivery: NotificationDeliveryRead) -> str:
    if delivery.status == "delivered":
        return f"HTTP {delivery.last_status_code}"
    return delivery.last_error or (f"HTTP {delivery.last_status_code}" if delivery.last_status_code else "-")


@click.group()
def notify() -> None:
    """Notification rules: the server POSTs JSON (with a Slack-compatible `text`) to a webhook on events."""


@notify.command()
@click.option(
    "--on",
    "events",
    multiple=True,
    required=True,
    metavar="EVENT",
    help=f"An event (repeat the option for several): {', '.join(EVENTS)}. `late`: a run still waiting "
    "--late-after seconds past its start time; `agent-lost`: an agent unseen for the server's stale time.",
)
@click.option("--webhook", required=True, metavar="URL", help="http(s) URL to POST to (kept secret: never shown).")
@click.option("--name", help="A name to recognise the rule by.")
@click.option("--flow", metavar="FLOW", help="Only runs of this flow (default: every flow).")
@click.option(
    "--late-after",
    type=click.IntRange(min=1),
    default=None,
    metavar="SECONDS",
    help="For `late`: how long past its start time a run is late (default 60).",
)
@_json_option
@api_options
@pass_state
def add(
    state: CliState,
    events: tuple[str, ...],
    webhook: str,
    name: str | None,
    flow: str | None,
    late_after: int | None,
    as_json: bool,
) -> None:
    """Add a rule to the key's tenant (admin or user key)."""
    with state.client() as client:
        rule = client.add_notification_rule(events, webhook, name=name, flow=flow, late_after_seconds=late_after)
    if as_json:
        echo_json(rule)
        return
    print_fields(
        [
            ("id", rule.id),
            ("name", rule.name),
            ("on", ", ".join(rule.on)),
            ("webhook", rule.webhook),
            ("flow", rule.flow or "(all)"),
            ("late after", f"{rule.late_after_seconds}s"),
        ]
    )


@notify.command("list")
@_json_option
@api_options
@pass_state
def list_rules(state: CliState, as_json: bool) -> None:
    """List the tenant's rules and their most recent deliveries (time, event, outcome, attempts)."""
    with state.client() as client:
        rules = client.list_notification_rules()
    if as_json:
        echo_json(rules)
        return
    rows = [(r.id, r.name, ", ".join(r.on), r.webhook, r.flow or "(all)", len(r.recent_deliveries)) for r in rules]
    print_table(["id", "name", "on", "webhook", "flow", "recent"], rows, empty="No notification rules.")
    deliveries = [(rule, d) for rule in rules for d in rule.recent_deliveries]
    if deliveries:
        print_table(
            ["rule", "time", "event", "status", "outcome", "attempts"],
            [
                (rule.name or rule.id[:8], format_time(d.created), d.event, d.status, _outcome(d), d.attempts)
                for rule, d in deliveries
            ],
            title="Recent deliveries",
        )


@notify.command()
@click.argument("rule_id", metavar="ID")
@_json_option
@api_options
@pass_state
def remove(state: CliState, rule_id: str, as_json: bool) -> None:
    """Remove rule ID (see `baton notify list`); its pending deliveries are dropped."""
    with state.client() as client:
        rule = client.remove_notification_rule(rule_id)
    if as_json:
        echo_json(rule)
        return
    click.echo(f"Removed notification rule {rule.id} ({', '.join(rule.on)} -> {rule.webhook}).")


@notify.command()
@click.argument("rule_id", metavar="ID")
@_json_option
@api_options
@pass_state
def test(state: CliState, rule_id: str, as_json: bool) -> None:
    """Send a test event to rule ID's webhook now and show the result (exit 1 when it was not delivered)."""
    with state.client() as client:
        delivery = client.test_notification_rule(rule_id)
    if as_json:
        echo_json(delivery)
    else:
        print_fields(
            [
                ("delivery", delivery.id),
                ("status", delivery.status),
                ("outcome", _outcome(delivery)),
                ("took", f"{delivery.attempt_log[-1].duration_ms} ms" if delivery.attempt_log else "-"),
                ("answer", delivery.attempt_log[-1].response_excerpt if delivery.attempt_log else None),
            ]
        )
    if delivery.status != "delivered":
        raise CliError(f"the test notification was not delivered: {_outcome(delivery)}")

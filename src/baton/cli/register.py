"""``baton register PATH``: register every flow found in a Python file.

Usage::

    baton register examples/hello.py --label dev
    baton register flows/etl.py --storage local --json
"""

from __future__ import annotations

from pathlib import Path

import click

from baton.cli.context import CliState, api_options, pass_state
from baton.cli.output import CliError, echo_json, parse_labels, print_table
from baton.schemas.core import StorageType


@click.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-l",
    "--label",
    "labels",
    multiple=True,
    metavar="LABEL",
    help="A label added to the flows' labels (repeatable).",
)
@click.option(
    "--storage",
    type=click.Choice([storage.value for storage in StorageType]),
    default=None,
    help="Overrides the flow's own storage (default: api). api: the server keeps the source, so any agent can "
    "run it; local: this path on this host (adds the hostname label); docker: inside the run config's image; "
    "git: from a repository.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the registered flows as JSON.")
@api_options
@pass_state
def register(state: CliState, path: Path, labels: tuple[str, ...], storage: str | None, as_json: bool) -> None:
    """Register the flows defined in the Python file PATH.

    A flow whose code changed since its last registration gets a new version.
    """
    extra_labels = parse_labels(labels) or []
    from baton.sdk.registration import build_flow_payload, load_flows

    flows = load_flows(path)
    if not flows:
        raise CliError(f"no flows found in {path}: decorate a function with @flow")
    payloads = [build_flow_payload(flow, path, storage=storage, extra_labels=extra_labels) for flow in flows]
    with state.client() as client:
        registered = [client.register_flow(payload) for payload in payloads]
    if as_json:
        echo_json(registered)
        return
    rows = [(flow.name, flow.version, flow.id, flow.labels, flow.storage.type.value) for flow in registered]
    print_table(["flow", "version", "id", "labels", "storage"], rows)

"""``baton register PATH...``: register every flow found in Python files and directories.

A directory stands for the ``*.py`` files directly in it (not its subdirectories); one of them that defines no
flow is skipped, while a file named on its own that defines none is an error. Every file is loaded, and every
payload built, before anything is registered: one bad file registers nothing.

Usage::

    baton register examples/hello.py --label dev
    baton register flows/ extra/etl.py --storage local --json
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from baton.cli.context import CliState, api_options, pass_state
from baton.cli.output import CliError, echo_json, parse_labels, print_table
from baton.schemas.core import StorageType

if TYPE_CHECKING:
    from baton.sdk.flows import Flow


@click.command()
@click.argument("paths", metavar="PATH...", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
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
def register(
    state: CliState, paths: tuple[Path, ...], labels: tuple[str, ...], storage: str | None, as_json: bool
) -> None:
    """Register the flows defined in the Python files PATH... (a directory: each *.py file directly in it).

    A flow whose code changed since its last registration gets a new version. All files are loaded first: if one
    fails, or a file named explicitly defines no flow, nothing is registered.
    """
    extra_labels = parse_labels(labels) or []
    from baton.sdk.registration import build_flow_payload

    found = _flows_in(paths)
    payloads = [build_flow_payload(flow, path, storage=storage, extra_labels=extra_labels) for path, flow in found]
    with state.client() as client:
        registered = [client.register_flow(payload) for payload in payloads]
    if as_json:
        echo_json(registered)
        return
    rows = [(flow.name, flow.version, flow.id, flow.labels, flow.storage.type.value) for flow in registered]
    print_table(["flow", "version", "id", "labels", "storage"], rows)


def _flows_in(paths: tuple[Path, ...]) -> list[tuple[Path, Flow[..., Any]]]:
    """Every (file, flow) of ``paths``, in order.

    Raises:
        CliError: a file named explicitly has no flow, no flow at all was found, or two files define one name.
        FlowLoadError: a file cannot be loaded.
    """
    from baton.sdk.registration import load_flows

    found: list[tuple[Path, Flow[..., Any]]] = []
    seen: dict[str, Path] = {}
    for path, explicit in _files(paths):
        flows = load_flows(path)
        if not flows and explicit:
            raise CliError(f"no flows found in {path}: decorate a function with @flow")
        for flow in flows:
            if flow.name in seen and seen[flow.name] != path:
                raise CliError(f"flow {flow.name!r} is defined in both {seen[flow.name]} and {path}")
            seen[flow.name] = path
            found.append((path, flow))
    if not found:
        raise CliError(f"no flows found in {', '.join(map(str, paths))}: decorate a function with @flow")
    return found


def _files(paths: tuple[Path, ...]) -> list[tuple[Path, bool]]:
    """The Python files ``paths`` name, each once, with whether it was named explicitly (not through a directory)."""
    files: dict[Path, bool] = {}
    for path in paths:
        if path.is_dir():
            for child in sorted(path.glob("*.py")):
                if child.is_file():
                    files.setdefault(child.resolve(), False)
        else:
            files[path.resolve()] = True
    return list(files.items())

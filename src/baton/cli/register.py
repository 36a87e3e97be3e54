"""``baton register PATH...``: register every flow found in Python files and directories.

A directory stands for the ``*.py`` files directly in it (not its subdirectories); one of them that defines no
flow is skipped, while a file named on its own that defines none is an error. Every file is loaded, and every
payload and bundle built, before anything is sent: one bad file registers nothing. Each bundle is uploaded once,
and only when the server does not have it yet (``baton.sdk.registration.register_prepared``).

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
    from baton.bundles import Bundle
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
    help="Overrides the flow's own storage (default: api). api: the server keeps the flow's folder as a bundle "
    "(less hidden files, .gitignore and .batonignore), so any agent can run it; local: this path on this host "
    "(adds the hostname label); docker: the file in an image (the flow's DockerStorage, else /opt/flows/FILE in "
    "the run config's image); git: the repository of the flow's GitStorage.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the registered flows as JSON.")
@api_options
@pass_state
def register(
    state: CliState, paths: tuple[Path, ...], labels: tuple[str, ...], storage: str | None, as_json: bool
) -> None:
    """Register the flows defined in the Python files PATH... (a directory: each *.py file directly in it).

    With api storage each flow's folder travels with it (its modules and packages import on the agent). A flow
    whose code or folder changed since its last registration gets a new version. All files are loaded first: if
    one fails, or a file named explicitly defines no flow, nothing is registered.
    """
    extra_labels = parse_labels(labels) or []
    from baton.sdk.registration import prepare_registrations, register_prepared

    registrations = prepare_registrations(_flows_in(paths), storage=storage, extra_labels=extra_labels)
    with state.client() as client:
        registered = register_prepared(client, registrations)
    if as_json:
        echo_json(registered)
        return
    rows = [
        (flow.name, flow.version, flow.id, flow.labels, _shipped(flow.storage.type.value, registration.bundle))
        for flow, registration in zip(registered, registrations, strict=True)
    ]
    print_table(["flow", "version", "id", "labels", "storage"], rows)


def _shipped(storage: str, bundle: Bundle | None) -> str:
    """The storage, and for a bundle what travelled: ``api (12 files, 34.5 KB)``."""
    if bundle is None:
        return storage
    return f"{storage} ({len(bundle.files)} files, {bundle.size / 1024:.1f} KB)"


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

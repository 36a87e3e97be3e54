"""Helpers every command shares: JSON and table output, the one-line error, ``KEY=VALUE`` parsing.

Machine output (``--json``) is plain ``json.dumps`` on stdout; human output is rich tables. User-supplied text
(flow names, log lines, labels) is always printed as :class:`rich.text.Text`, never as markup, so a log line
containing ``[bold]`` prints as written.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import IO, Any

import click
from pydantic import BaseModel
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from baton.exceptions import InvalidLabelError
from baton.labels import normalize_labels

# Exit codes, documented in `baton --help`: scripts can tell "the run failed" from "the server is down".
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_REFUSED = 4
EXIT_INTERRUPTED = 130

_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Wide enough for a runs table when stdout is a pipe or a file, where rich would otherwise assume 80 columns.
_PIPE_WIDTH = 200


def one_line(message: str) -> str:
    """Collapse a message onto one line: errors print as exactly one line on stderr."""
    return " ".join(message.split())


class CliError(click.ClickException):
    """An error that prints ``Error: <message>`` on one line of stderr; each subclass has its exit code."""

    exit_code = EXIT_FAILURE

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"Error: {self.format_message()}", err=True, file=file)


class InputError(CliError):
    """Bad input or configuration (``--param``, ``--env``, labels, config file) that click cannot check."""

    exit_code = EXIT_USAGE


class UnavailableError(CliError):
    """The API server cannot be reached."""

    exit_code = EXIT_UNAVAILABLE


class RefusedError(CliError):
    """The API refused the key (unknown or revoked) or its role."""

    exit_code = EXIT_REFUSED


class WatchInterrupted(CliError):
    """Ctrl-C while watching a run (which goes on): the exit code of a process ended by SIGINT."""

    exit_code = EXIT_INTERRUPTED


class AnyCaseChoice(click.Choice[str]):
    """A choice typed in any case (``--log-level debug``), shown and returned as written (``DEBUG``)."""

    def __init__(self, choices: Sequence[str]) -> None:
        super().__init__(choices, case_sensitive=False)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"[{'|'.join(self.choices)}]"


LOG_LEVELS = AnyCaseChoice(["DEBUG", "INFO", "WARNING", "ERROR"])


# --- output -------------------------------------------------------------------------------------


def stdout_console() -> Console:
    """A console on stdout (looked up at each write, so click's test runner captures it); wide in pipes."""
    width = None if os.environ.get("COLUMNS") else _PIPE_WIDTH
    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal and width:
        console.width = width
    return console


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def to_jsonable(data: Any) -> Any:
    """Pydantic models (and lists of them) as JSON-compatible values; anything else unchanged."""
    if isinstance(data, BaseModel):
        return data.model_dump(mode="json")
    if isinstance(data, list | tuple):
        return [to_jsonable(item) for item in data]
    return data


def echo_json(data: Any) -> None:
    """Print ``data`` (a model, a list of models, or plain JSON values) as indented JSON on stdout."""
    click.echo(json.dumps(to_jsonable(data), indent=2, default=str))


def format_time(value: datetime | None) -> str:
    """A timestamp in the local timezone, to the second; ``-`` for none."""
    if value is None:
        return "-"
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def cell(value: Any) -> Text:
    """One table cell as plain text (never markup)."""
    if value is None:
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, datetime):
        text = format_time(value)
    elif isinstance(value, list | tuple | set):
        text = ", ".join(str(item) for item in value) or "-"
    else:
        text = str(value)
    return Text(text)


def print_table(
    columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None, empty: str = ""
) -> None:
    """Print a rich table; ``empty`` is printed instead when there are no rows."""
    materialised = [list(row) for row in rows]
    console = stdout_console()
    if not materialised and empty:
        console.print(Text(empty))
        return
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", show_edge=False, pad_edge=False)
    for name in columns:
        table.add_column(name, overflow="fold")
    for row in materialised:
        table.add_row(*(cell(value) for value in row))
    console.print(table)


def print_fields(pairs: Iterable[tuple[str, Any]]) -> None:
    """Print ``name: value`` pairs aligned, for the human view of one object."""
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in pairs:
        table.add_row(Text(name), cell(value))
    stdout_console().print(table)


def level_name(level: int) -> str:
    """``INFO`` for 20; ``Level 25`` for levels without a name."""
    return str(logging.getLevelName(level))


# --- input --------------------------------------------------------------------------------------


def split_key_value(item: str, option: str) -> tuple[str, str]:
    """Split ``KEY=VALUE`` at the first ``=``.

    Raises:
        InputError: there is no ``=`` or the key is empty.
    """
    key, sep, value = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InputError(f"{option} expects KEY=VALUE, got {item!r}")
    return key, value


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """``--param k=v`` values: JSON when the value is valid JSON (``k=5`` is 5), else the string itself."""
    params: dict[str, Any] = {}
    for item in items:
        key, raw = split_key_value(item, "--param")
        try:
            params[key] = json.loads(raw)
        except ValueError:
            params[key] = raw
    return params


def parse_env(items: Iterable[str]) -> dict[str, str]:
    """``--env K=V`` values; the key must be a valid environment variable name."""
    env: dict[str, str] = {}
    for item in items:
        key, value = split_key_value(item, "--env")
        if not _ENV_NAME_RE.match(key):
            raise InputError(f"--env {item!r}: {key!r} is not a valid environment variable name")
        env[key] = value
    return env


def parse_labels(items: Sequence[str]) -> list[str] | None:
    """Validated, sorted, de-duplicated labels; ``None`` when none were given (settings or defaults apply).

    Raises:
        InputError: a label is invalid.
    """
    if not items:
        return None
    try:
        return normalize_labels(items)
    except InvalidLabelError as exc:
        raise InputError(f"--label: {exc}") from exc

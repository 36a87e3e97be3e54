"""Where the CLI builds its settings and client: once, at the edge, from ``-a/--api`` and ``-k/--key``.

``-a`` and ``-k`` may be given to the root group (``baton -a URL runs list``) or to a command
(``baton runs list -a URL``); the command's value wins. Options left out are ``None`` so that the environment
(``BATON__API__URL``, ``BATON__API__KEY``), then ``$BATON_HOME/config.toml``, then the defaults apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from baton.settings import BatonSettings, load_settings

if TYPE_CHECKING:
    from baton.client.http import Client

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class CliState:
    """What the root group and the command's own options say about the API."""

    api: str | None = None
    key: str | None = None

    def settings(self, **overrides: Any) -> BatonSettings:
        """Build the settings; ``overrides`` are per-section dicts, e.g. ``server={"port": 4300}``.

        Raises:
            ConfigurationError: the config file, an environment variable or an option is malformed.
        """
        api: dict[str, Any] = {"url": self.api, "key": self.key}
        api.update({name: value for name, value in overrides.pop("api", {}).items() if value is not None})
        return load_settings(api=api, **overrides)

    def client(self) -> Client:
        """A client for these settings (imported here: commands that never call the API start faster).

        Raises:
            ConfigurationError: there is no API key anywhere.
        """
        from baton.client.http import Client

        return Client.from_settings(self.settings())


pass_state = click.make_pass_decorator(CliState, ensure=True)


def _store(field: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def callback(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
        if value is not None:
            setattr(ctx.ensure_object(CliState), field, value)

    return callback


def api_options(func: F) -> F:
    """Add ``-a/--api`` and ``-k/--key`` to a command or group; their values land in :class:`CliState`."""
    func = click.option(
        "-k",
        "--key",
        expose_value=False,
        callback=_store("key"),
        help="API key. Default: $BATON__API__KEY, then $BATON_HOME/config.toml.",
    )(func)
    func = click.option(
        "-a",
        "--api",
        expose_value=False,
        callback=_store("api"),
        help="API URL. Default: $BATON__API__URL, then $BATON_HOME/config.toml, then http://127.0.0.1:4200.",
    )(func)
    return func

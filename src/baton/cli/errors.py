"""Turn Baton's exceptions into one clear line on stderr and an exit code (never a traceback).

The table is ordered most specific first, because the exceptions form a hierarchy
(``AuthenticationError`` is a ``ClientError`` is a ``BatonError``).
"""

from __future__ import annotations

from baton.cli.output import CliError, InputError, RefusedError, UnavailableError
from baton.exceptions import (
    AuthenticationError,
    BatonError,
    ClientError,
    ConfigurationError,
    ConflictError,
    DatabaseUnavailableError,
    FlowLoadError,
    InvalidLabelError,
    InvalidScheduleError,
    NotFoundError,
    ParameterValidationError,
    PermissionDeniedError,
    PlatformUnavailableError,
    RateLimitedError,
    ServerUnavailableError,
)

# (exception class, message template, CLI error class); ``{error}`` is the exception's message.
_MAPPING: tuple[tuple[type[BatonError], str, type[CliError]], ...] = (
    (DatabaseUnavailableError, "{error}", UnavailableError),
    (PlatformUnavailableError, "{error}", UnavailableError),
    # Before ServerUnavailableError, its base: the server is up, and refuses this address's keys for now.
    (RateLimitedError, "{error}: too many failed authentications from this address", RefusedError),
    (
        ServerUnavailableError,
        "{error} (is the server running? Start one with `baton server start`, or point --api at it)",
        UnavailableError,
    ),
    (AuthenticationError, "the API refused the key: {error}; pass --key or set BATON__API__KEY", RefusedError),
    (PermissionDeniedError, "permission denied: {error}", RefusedError),
    # The server's 404 and 409 details already say what was not found or what conflicts.
    (NotFoundError, "{error}", CliError),
    (ConflictError, "{error}", CliError),
    (ConfigurationError, "configuration: {error}", InputError),
    (InvalidLabelError, "{error}", InputError),
    (ParameterValidationError, "invalid parameters: {error}", InputError),
    (InvalidScheduleError, "cannot register: {error}", InputError),
    (FlowLoadError, "cannot load flows: {error}", CliError),
)


def to_cli_error(exc: BatonError) -> CliError:
    """The CLI error (message and exit code) for one of Baton's exceptions."""
    for error_class, template, cli_error in _MAPPING:
        if isinstance(exc, error_class):
            return cli_error(template.format(error=exc))
    if isinstance(exc, ClientError) and exc.status_code == 422:
        return InputError(f"invalid request: {exc}")
    return CliError(str(exc) or type(exc).__name__)

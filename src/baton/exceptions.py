"""Every exception Baton raises on purpose, in one place, so callers can catch the specific one."""

from __future__ import annotations


class BatonError(Exception):
    """Base of every Baton error."""


class ConfigurationError(BatonError):
    """Settings are missing or malformed (bad config file, bad env var, no API key)."""


class InvalidLabelError(BatonError, ValueError):
    """A label is empty, too long or contains characters a label may not contain."""


class IllegalTransitionError(BatonError):
    """A state transition that the state machine does not allow (the API answers 409)."""

    def __init__(self, current: str, requested: str, reason: str = "") -> None:
        self.current = current
        self.requested = requested
        message = f"cannot move a flow run from {current} to {requested}"
        super().__init__(f"{message}: {reason}" if reason else message)


class FlowLoadError(BatonError):
    """A flow's source could not be loaded (missing file, import error, no such flow in it)."""


class InvalidScheduleError(FlowLoadError, ValueError):
    """A flow's schedule is invalid (bad cron, unknown time zone, a clock that never fires...): bad input."""


class ParameterValidationError(BatonError, ValueError):
    """Flow-run parameters do not match the flow's signature."""


# --- errors raised by the HTTP client -----------------------------------------------------------


class ClientError(BatonError):
    """The API answered, but refused the request."""

    def __init__(self, status_code: int, detail: str) -> None:
        self.status_code = status_code
        self.detail = detail
        super().__init__(f"{detail} (HTTP {status_code})")


class AuthenticationError(ClientError):
    """The API key or run token is missing, unknown or revoked (401)."""


class PermissionDeniedError(ClientError):
    """The key's role does not allow this request (403)."""


class NotFoundError(ClientError):
    """The object does not exist in the key's tenant (404)."""


class ConflictError(ClientError):
    """The request conflicts with the object's current state, e.g. an illegal transition (409).

    ``current_state``: for a refused state change, the run's state when it was refused (servers since issue 12
    send it; None from older ones, and for other conflicts).
    """

    def __init__(self, status_code: int, detail: str, current_state: str | None = None) -> None:
        super().__init__(status_code, detail)
        self.current_state = current_state


class ServerUnavailableError(BatonError):
    """The API could not be reached, timed out or answered with a 5xx: worth retrying."""


class RateLimitedError(ServerUnavailableError):
    """The API refuses this address for a while after too many failed authentications (429): retry later."""


class DatabaseUnavailableError(ServerUnavailableError):
    """A server-side command could not reach or use its database."""


class PlatformUnavailableError(BatonError):
    """An agent's platform (the Docker daemon, the Kubernetes API) cannot be reached."""


class DockerUnavailableError(PlatformUnavailableError):
    """No Docker daemon answers at the configured address."""


class ImageBuildError(BatonError):
    """An image could not be built: no source tree, wheels that do not build, or the daemon refused the build."""


class DeploymentError(BatonError):
    """An agent could not deploy a flow run; the message becomes the run's Failed message."""


class ExecutorError(BatonError):
    """A flow run's executor cannot start: a dask scheduler address that is malformed or where nothing answers."""

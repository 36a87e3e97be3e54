"""How the API's answers, and the failures to get one, become Baton's exceptions (``baton.exceptions``), for
:class:`baton.client.http.Client`.

Transient failures (no connection, a timeout, a 5xx, a 429) are :class:`ServerUnavailableError`; callers retry them.
Whether the failed request may still have been carried out matters to a retry (a claim, a state change whose
answer was lost): :func:`may_have_reached_the_server` tells.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from baton.client.transport import ConnectFailed, Response, TimedOut, TransportError
from baton.exceptions import (
    AuthenticationError,
    ClientError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerUnavailableError,
)

_ERRORS_BY_STATUS: dict[int, type[ClientError]] = {
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
}


def may_have_reached_the_server(exc: BaseException) -> bool:
    """Whether a request that failed with ``exc`` may have been carried out although its answer never arrived.

    False only when the connection was never made: the server cannot have seen the request. A connection lost
    while waiting for the answer, a read timeout or a 5xx may follow a change the server made (it committed, then
    died or answered late): a retry may then meet the consequences (a 409, a revoked run token).
    """
    return not isinstance(exc.__cause__, ConnectFailed)


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the API did not answer at all (no connection, a timeout), rather than answered 5xx."""
    return isinstance(exc.__cause__, TransportError)


def _detail(response: Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    detail = body.get("detail") if isinstance(body, dict) else body
    if isinstance(detail, list):  # FastAPI validation errors: keep them short and readable
        parts = []
        for err in detail:
            if isinstance(err, dict):
                loc = ".".join(str(p) for p in err.get("loc", []) if p != "body")
                parts.append(f"{loc}: {err.get('msg')}" if loc else str(err.get("msg")))
        return "; ".join(parts) or str(detail)
    return str(detail)


def _current_state(response: Response) -> str | None:
    """The run's state named by a refused state change's 409 (``ErrorDetail.current_state``), if any."""
    try:
        body = response.json()
    except ValueError:
        return None
    state = body.get("current_state") if isinstance(body, dict) else None
    return state if isinstance(state, str) else None


def _wrong_base_hint(api_url: str, response: Response) -> str | None:
    """A clearer 404 when the API URL is not the server's root (``-a http://host:4200/api`` gave a bare "Not Found").

    Routes answer 404 with a detail naming what was not found; an unknown path answers FastAPI's bare "Not Found".
    """
    if response.status_code != 404 or _detail(response) != "Not Found":
        return None
    path = urlsplit(api_url).path.rstrip("/")
    if not path:
        return None
    root = api_url[: len(api_url) - len(path)] if api_url.endswith(path) else api_url
    return (
        f"Not Found: no such route under {api_url}; the API URL must be the server's root "
        f"(e.g. {root}), not .../{path.lstrip('/')}"
    )


def unavailable(api_url: str, exc: TransportError) -> ServerUnavailableError:
    """The error of a request to ``api_url`` that got no answer (raise it ``from exc``)."""
    if isinstance(exc, TimedOut):
        return ServerUnavailableError(f"the API at {api_url} did not answer in time ({exc})")
    return ServerUnavailableError(f"cannot reach the API at {api_url}: {exc}")


def checked(api_url: str, response: Response) -> Response:
    """``response`` when it is a 2xx or 3xx answer.

    Raises:
        ServerUnavailableError: a 5xx (transient); RateLimitedError: a 429 (transient too).
        ClientError: any other 4xx, as its specific subclass where there is one.
    """
    status = response.status_code
    if status >= 500:
        raise ServerUnavailableError(f"the API at {api_url} failed: HTTP {status} {_detail(response)}")
    if status == 429:
        # Too many requests (the server limits failed authentications per address): "later", not "never".
        # An agent that shares an address with misbehaving clients must back off, not die of a 4xx.
        wait = response.headers.get("Retry-After")
        after = f"; retry after {wait} s" if wait else ""
        raise RateLimitedError(f"the API at {api_url} asks to slow down: HTTP 429 {_detail(response)}{after}")
    if status == 409:
        raise ConflictError(409, _detail(response), _current_state(response))
    if status >= 400:
        error_class = _ERRORS_BY_STATUS.get(status, ClientError)
        raise error_class(status, _wrong_base_hint(api_url, response) or _detail(response))
    return response

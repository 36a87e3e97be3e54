"""Maps Baton's exceptions to clean 4xx/503 answers, so bad input never shows as a 500 or a traceback, and says so in
the OpenAPI document: every answer an operation can give is documented there (docs/design.md §7), which the API's
fuzz test (tests/server/api/test_fuzz.py) holds the server to.

Usage::

    install_error_handlers(app)                     # before or after the routers: the document is built lazily
    @router.post("/x", responses=error_responses(409))  # answers particular to one route
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, OperationalError

from baton.exceptions import IllegalTransitionError, InvalidLabelError
from baton.schemas.responses import ErrorDetail
from baton.server.access import AccessDenied
from baton.server.models.errors import (
    Conflict,
    InvalidRequest,
    ObjectNotFound,
    RevokedToken,
    StaleState,
)

logger = logging.getLogger("baton.server")

# The status of each error the models raise: REST answers it as JSON, the web UI as a page (ui/routing.py).
ERROR_STATUS: dict[type[Exception], int] = {
    ObjectNotFound: 404,
    AccessDenied: 403,
    Conflict: 409,
    InvalidRequest: 422,
    InvalidLabelError: 422,
    IllegalTransitionError: 409,
    StaleState: 409,
    RevokedToken: 401,
}


def _detail_handler(status: int):  # type: ignore[no-untyped-def]
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handler


async def _illegal_transition(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IllegalTransitionError)
    return JSONResponse({"detail": str(exc), "current_state": exc.current}, status_code=409)


async def _validation_handler(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = []
    for err in exc.errors():
        # Inputs may be undecodable bytes or huge: keep the location and message only.
        errors.append({"loc": list(err.get("loc", ())), "msg": str(err.get("msg", "")), "type": err.get("type")})
    return JSONResponse({"detail": errors}, status_code=422)


async def _database_busy(_request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database operation failed: %s", exc)
    return JSONResponse({"detail": "the database is busy or unavailable; retry"}, status_code=503)


async def _value_refused(_request: Request, exc: Exception) -> JSONResponse:
    """The database refused a value (e.g. PostgreSQL and a NUL byte): the request's input is at fault, not the server.

    Validation refuses what it knows no database stores; this is the net for a value it let through.
    """
    assert isinstance(exc, DataError)
    reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
    logger.warning("the database refused a value of the request: %s", reason)
    return JSONResponse({"detail": f"the database refused a value of this request: {reason}"}, status_code=422)


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    for exc_class, status in ERROR_STATUS.items():
        app.add_exception_handler(exc_class, _detail_handler(status))
    app.add_exception_handler(IllegalTransitionError, _illegal_transition)  # with the run's state (ErrorDetail)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(OperationalError, _database_busy)
    app.add_exception_handler(DataError, _value_refused)
    app.add_exception_handler(Exception, _unexpected)
    _document_errors_in_openapi(app)


# --- the errors in the OpenAPI document ------------------------------------------------------------------

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be read as JSON text (e.g. it is not UTF-8).",
    401: "Missing, malformed or unknown API key or run token.",
    403: "The key's role, or the run token's scope, does not allow this.",
    404: "No such object in the caller's tenant (other tenants' ids look unknown too).",
    409: "Illegal state transition, the object changed while the request was handled (retry), it clashes with "
    "what exists (an agent registered with another key, an Idempotency-Key used for another request), or logs "
    "sent to a run that ended.",
    408: "The request body did not arrive in time (the server's body timeout).",
    413: "Request body larger than the server's limit.",
    422: "Invalid input: a list of the invalid fields, or one message.",
    429: "Too many failed authentications from this address; retry after Retry-After seconds.",
    503: "The database is busy or unavailable; retry.",
}
_ERROR_SCHEMA = {"$ref": "#/components/schemas/ErrorDetail"}
_VALIDATION_SCHEMA = {"anyOf": [{"$ref": "#/components/schemas/HTTPValidationError"}, _ERROR_SCHEMA]}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: the error answers particular to it (e.g. 409 of a state change)."""
    return {status: {"model": ErrorDetail, "description": ERROR_DESCRIPTIONS[status]} for status in statuses}


def _error_statuses(operation: dict[str, Any]) -> set[int]:
    """The error answers the stack around the handler can give to ``operation``.

    Every operation: 503 (database busy). With a body: 400 (undecodable), 408 (sent too slowly, ``limits.Admission``),
    413 (too large, refused by ``limits.BodySizeLimit``), 422. With the Authorization header: 401, 403, 429
    (``authentication.AuthenticateFirst``, ``access``). With a path parameter: 404 (an id names nothing in the
    caller's tenant).
    """
    statuses = {503}
    parameters = operation.get("parameters", [])
    if "requestBody" in operation:
        statuses |= {400, 408, 413, 422}
    if any(p.get("in") == "header" and p.get("name", "").lower() == "authorization" for p in parameters):
        statuses |= {401, 403, 429}
    if any(p.get("in") == "path" for p in parameters):
        statuses |= {404}
    return statuses


def document_error_responses(openapi: dict[str, Any]) -> dict[str, Any]:
    """Add the error answers of :func:`_error_statuses` to every operation of ``openapi`` (in place; returned).

    FastAPI documents only a route's own answers and its 422 for schema violations, whose ``detail`` is a list;
    the handlers above answer 422 with one message too (``InvalidRequest``, ``InvalidLabelError``), so every 422
    is documented as either form.
    """
    schemas = openapi.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("ErrorDetail", ErrorDetail.model_json_schema())
    for path_item in openapi.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            for status in sorted(_error_statuses(operation)):
                responses.setdefault(str(status), _documented(status, _ERROR_SCHEMA))
            if "422" in responses:
                responses["422"] = _documented(422, _VALIDATION_SCHEMA)
    return openapi


def _documented(status: int, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": ERROR_DESCRIPTIONS[status], "content": {"application/json": {"schema": schema}}}


def _document_errors_in_openapi(app: FastAPI) -> None:
    """FastAPI's documented way to extend the document: replace ``app.openapi``, which builds it once."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_error_responses(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

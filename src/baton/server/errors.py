"""Maps Baton's exceptions to clean 4xx/503 answers, so bad input never shows as a 500 or a traceback."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from baton.exceptions import IllegalTransitionError, InvalidLabelError
from baton.server.models.errors import Forbidden, InvalidRequest, ObjectNotFound, StaleState

logger = logging.getLogger("baton.server")

_STATUS: dict[type[Exception], int] = {
    ObjectNotFound: 404,
    Forbidden: 403,
    InvalidRequest: 422,
    InvalidLabelError: 422,
    IllegalTransitionError: 409,
    StaleState: 409,
}


def _detail_handler(status: int):  # type: ignore[no-untyped-def]
    async def handler(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handler


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


async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled error", exc_info=exc)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    for exc_class, status in _STATUS.items():
        app.add_exception_handler(exc_class, _detail_handler(status))
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(OperationalError, _database_busy)
    app.add_exception_handler(Exception, _unexpected)

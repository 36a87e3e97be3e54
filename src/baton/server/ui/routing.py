"""The route class of every web UI page: the models' errors become pages, not the REST API's JSON.

The statuses are REST's own (``server.errors.ERROR_STATUS``): a page refuses what REST refuses, with the same
code and message. Not being signed in sends a page to the sign-in form (and back afterwards), and tells htmx to go
there (``HX-Redirect``), since a fragment cannot show a form.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.responses import Response

from baton.server.errors import ERROR_STATUS
from baton.server.ui.web import SECURITY_HEADERS, BadForm, CsrfRefused, NotSignedIn, render

logger = logging.getLogger("baton.server.ui")

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def sign_in_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET":  # after sign-in the browser GETs ``next``: send it back to the page of the form
        referer = urlsplit(request.headers.get("referer", ""))
        target = referer.path if referer.path.startswith("/") and not referer.path.startswith("//") else "/"
    location = "/login?next=" + quote(target, safe="")
    if request.headers.get("hx-request") == "true":
        return Response(status_code=401, headers={"HX-Redirect": location, **SECURITY_HEADERS})
    return Response(status_code=303, headers={"Location": location, **SECURITY_HEADERS})


def error_page(request: Request, status: int, message: str) -> Response:
    return render(request, "error.html", None, status_code=status, status=status, message=message)


def page_status(exc: Exception) -> tuple[int, str] | None:
    """The status and message of the error page for ``exc``; None for an error that is a bug (500)."""
    if isinstance(exc, CsrfRefused):
        return 403, str(exc)
    if isinstance(exc, BadForm):
        return 400, str(exc)
    if isinstance(exc, RequestValidationError):
        return 422, "this address is not valid"
    if isinstance(exc, OperationalError | DBAPIError):
        logger.warning("database operation failed: %s", exc)
        return 503, "the database is busy or unavailable: try again in a moment"
    for kind, status in ERROR_STATUS.items():
        if isinstance(exc, kind):
            return status, str(exc)
    return None


class UiRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except NotSignedIn:
                return sign_in_redirect(request)
            except Exception as exc:
                shown = page_status(exc)
                if shown is None:
                    raise
                return error_page(request, *shown)

        return handler

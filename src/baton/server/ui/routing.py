"""The route class of every web UI page: the models' errors become pages, not the REST API's JSON.

The statuses are REST's own (``server.errors.ERROR_STATUS``): a page refuses what REST refuses, with the same
code and message. Not being signed in sends a page to the sign-in form (and back afterwards), and tells htmx to go
there (``HX-Redirect``), since a fragment cannot show a form.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.responses import Response

from baton.server.errors import ERROR_STATUS
from baton.server.ui.web import SECURITY_HEADERS, BadForm, CsrfRefused, NotSignedIn, render

logger = logging.getLogger("baton.server.ui")

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def sign_in_redirect(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    location = "/login?next=" + quote(target, safe="")
    if request.headers.get("hx-request") == "true":
        return Response(status_code=401, headers={"HX-Redirect": location, **SECURITY_HEADERS})
    return Response(status_code=303, headers={"Location": location, **SECURITY_HEADERS})


def error_page(request: Request, status: int, message: str) -> Response:
    return render(request, "error.html", None, status_code=status, status=status, message=message)


class UiRoute(APIRoute):
    def get_route_handler(self) -> Handler:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            try:
                return await original(request)
            except NotSignedIn:
                return sign_in_redirect(request)
            except CsrfRefused as exc:
                return error_page(request, 403, str(exc))
            except BadForm as exc:
                return error_page(request, 400, str(exc))
            except RequestValidationError:
                return error_page(request, 422, "this address is not valid")
            except tuple(ERROR_STATUS) as exc:
                status = next(code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind))
                return error_page(request, status, str(exc))

        return handler

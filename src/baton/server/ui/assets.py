"""The web UI's static files and the Swagger page, served by Baton itself so that neither needs the internet.

Wiring (in the app factory)::

    app.mount(STATIC_PREFIX, static_files())
    app.get("/api/docs", include_in_schema=False)(lambda: swagger_page(app.openapi_url, app.title))

Templates link assets with :func:`asset_url`, whose ``?v=`` changes with the file's content, so browsers may keep a
file for the hour ``Cache-Control`` allows and still fetch a new one as soon as Baton ships it. The vendored
third-party files, their versions, licences and checksums are listed in ``static/vendor/README.md``.
"""

from __future__ import annotations

import hashlib
import html
from functools import lru_cache
from pathlib import Path
from urllib.parse import quote

from fastapi.openapi.docs import get_swagger_ui_html
from starlette.datastructures import MutableHeaders
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_PREFIX = "/ui/static"
STATIC_DIR: Path = Path(__file__).resolve().parent / "static"

CACHE_CONTROL = "public, max-age=3600"
SWAGGER_JS = "vendor/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = "vendor/swagger-ui/swagger-ui.css"
SWAGGER_FAVICON = "vendor/swagger-ui/favicon-32x32.png"

# Swagger UI's default validatorUrl (validator.swagger.io) makes the page call out to the internet to draw a badge.
_SWAGGER_PARAMETERS = {"validatorUrl": None}
_VERSION_LENGTH = 12


class _StaticHeaders:
    """Adds the caching and no-sniffing headers to every response of the wrapped app.

    ``nosniff`` makes browsers trust the declared content type, so a file can never be run as a script it is not.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Cache-Control"] = CACHE_CONTROL
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self.app(scope, receive, send_with_headers)


def static_files() -> ASGIApp:
    """The ASGI app that serves ``STATIC_DIR``, to mount at ``STATIC_PREFIX``.

    Files only: a directory answers 404 (no listing, no index.html), and a path leading outside ``STATIC_DIR``
    (``..``, encoded or not; a symlink out) answers 404, as Starlette's ``StaticFiles`` checks.

    Returns:
        The app; every response carries ``Cache-Control: public, max-age=3600`` and ``X-Content-Type-Options:
        nosniff``.
    """
    return _StaticHeaders(StaticFiles(directory=STATIC_DIR, html=False, check_dir=True))


def asset_url(relative: str) -> str:
    """The URL of a static file, with a ``?v=`` that changes when the file's content does.

    The version is the first 12 hex digits of the file's sha256, read once per file and process (the files are part
    of the installed package and do not change under a running server).

    Args:
        relative: The file's path under ``STATIC_DIR``, with ``/`` separators, e.g. ``"vendor/htmx/htmx.min.js"``.

    Returns:
        For example ``"/ui/static/vendor/htmx/htmx.min.js?v=d6fdc75f204e"``.

    Raises:
        ValueError: ``relative`` leads outside ``STATIC_DIR``.
        FileNotFoundError: no such file (a typo in a template fails when the page is built, not in the browser).
    """
    root = STATIC_DIR.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"{relative!r} is outside the static directory")
    if not path.is_file():
        raise FileNotFoundError(f"no static file {relative!r} in {root}")
    return f"{STATIC_PREFIX}/{quote(path.relative_to(root).as_posix())}?v={_content_version(path)}"


@lru_cache(maxsize=256)
def _content_version(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:_VERSION_LENGTH]


def swagger_page(openapi_url: str, title: str) -> HTMLResponse:
    """The Swagger UI page for the API, loading its script, style sheet and icon from Baton, not a CDN.

    Args:
        openapi_url: Where the page fetches the OpenAPI document, a same-origin path such as ``/api/openapi.json``.
        title: The page's title (escaped here).

    Returns:
        The page; besides its assets and ``openapi_url`` it makes no request (no validator badge).
    """
    return get_swagger_ui_html(
        openapi_url=openapi_url,
        title=html.escape(title),
        swagger_js_url=asset_url(SWAGGER_JS),
        swagger_css_url=asset_url(SWAGGER_CSS),
        swagger_favicon_url=asset_url(SWAGGER_FAVICON),
        swagger_ui_parameters=_SWAGGER_PARAMETERS,
    )

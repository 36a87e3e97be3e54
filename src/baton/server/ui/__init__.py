"""The web UI, served by the API server: server-rendered pages (Jinja2, htmx, SVG charts drawn here).

See docs/design.md, "Web UI". Each page module owns its routes; ``ui_routers`` lists them for ``server.app``.
"""

from __future__ import annotations

from fastapi import APIRouter


def ui_routers() -> list[APIRouter]:
    # Imported here: the page modules import this package's own modules (web, charts), which import this file.
    from baton.server.ui import log_stream, pages_auth, pages_flows, pages_home, pages_runs

    return [pages_auth.router, pages_home.router, pages_flows.router, pages_runs.router, log_stream.router]

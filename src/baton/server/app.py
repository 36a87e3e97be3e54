"""The API server's FastAPI application.

Usage::

    app = create_app(load_settings())   # runs migrations and the background services in its lifespan
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from baton import __version__
from baton.server.access import POLICY, Action, Scope, route_action
from baton.server.api import (
    agents,
    bundles,
    flow_runs,
    flows,
    limits,
    logs,
    meta,
    notifications,
    reruns,
    schedules,
)
from baton.server.auth_limits import FailedAuthLimiter
from baton.server.authentication import AuthenticateFirst
from baton.server.database.connection import (
    create_database_engine,
    create_read_session_factory,
    create_session_factory,
    read_only_engine,
)
from baton.server.database.migrate import upgrade
from baton.server.errors import install_error_handlers
from baton.server.graphql import PATH as GRAPHQL_PATH
from baton.server.graphql import graphql_endpoint
from baton.server.json_body import JsonRoute
from baton.server.limits import Admission, BodySizeLimit
from baton.server.models.lost_runs import RecoveryPolicy
from baton.server.models.schedules import schedule_policy
from baton.server.notifier import RunNotifier
from baton.server.services.lateness import LatenessService
from baton.server.services.leases import LeaseExpiryService
from baton.server.services.notifications import NotificationService
from baton.server.services.recovery import RecoveryService
from baton.server.services.run_counts import RunCountService
from baton.server.services.runner import run_periodically
from baton.server.services.scheduler import SchedulerService
from baton.server.services.wakeups import PostgresWakeups
from baton.server.ui import ui_routers
from baton.server.ui.assets import STATIC_PREFIX, static_files, swagger_page
from baton.settings import BatonSettings, ServerSettings

logger = logging.getLogger("baton.server")

API_PREFIX = "/api"
DOCS_PATH = f"{API_PREFIX}/docs"
# Agents' claims wait for runs (long polls), and the web UI's log streams stay open while a run goes on: neither
# is counted among the requests in flight.
LONG_POLL = re.compile(rf"^(?:{API_PREFIX}/agents/[^/]+/claim|/runs/[^/]+/logs/stream)$")
# In the order a request is matched: FastAPI tries each router's routes in turn (with a regex and a scope copy
# each), and then the chosen router's again, so the routes of a run's life come first. A claim was matched after
# 23 routes, ~75 us of the server's CPU; first, ~15 us. No path of one router is matched by another's routes, so
# the order changes nothing else (the OpenAPI document lists them in this order).
ROUTERS = (
    flow_runs.router,
    logs.router,
    agents.router,
    meta.router,
    flows.router,
    reruns.router,
    notifications.router,
    limits.router,
    schedules.router,
    bundles.router,
)


def _services(
    server: ServerSettings, factory: sessionmaker[Session], notifier: RunNotifier
) -> list[tuple[str, Callable[[], None]]]:
    """The background services, by name: each one's ``run_once`` runs every ``services_interval_seconds``."""
    margin = server.outage_grace_margin_seconds
    leases = LeaseExpiryService(factory, notifier, server.max_lease_returns, server.claim_lease_seconds + margin)
    policy = RecoveryPolicy(
        run_heartbeat_timeout_seconds=server.run_heartbeat_timeout_seconds,
        reschedule_running=server.reschedule_lost_runs,
        max_returns=server.max_lease_returns,
    )
    recovery = RecoveryService(factory, notifier, policy, margin)
    notify = NotificationService(factory, server)
    lateness = LatenessService(factory)
    counts = RunCountService(factory)
    return [
        ("lease-expiry", leases.run_once),
        ("recovery", recovery.run_once),
        ("lateness", lateness.run_once),
        ("notifications", notify.run_once),
        ("run-counts", counts.run_once),
    ]


def _timed_services(
    server: ServerSettings, factory: sessionmaker[Session]
) -> list[tuple[str, Callable[[], None], float]]:
    """Services with their own interval."""
    scheduler = SchedulerService(factory, schedule_policy(server))
    return [("scheduler", scheduler.run_once, server.scheduler_interval_seconds)]


def check_json_routes(router: APIRouter) -> None:
    """Every route parses bodies with ``json_body`` (no NaN, bounded nesting): a router that forgot
    ``route_class=JsonRoute`` would let those bodies through, so it stops the server from starting."""
    plain = [route.path for route in router.routes if isinstance(route, APIRoute) and not isinstance(route, JsonRoute)]
    if plain:
        raise RuntimeError(f"routes without route_class=JsonRoute: {', '.join(plain)}")


def create_app(settings: BatonSettings, engine: Engine | None = None) -> FastAPI:
    engine = engine or create_database_engine(settings.database_url(), settings.server.database_pool_size)
    factory = create_session_factory(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(upgrade, engine)  # a no-op when the database is already at head
        loop = asyncio.get_running_loop()
        wakeups = PostgresWakeups(engine) if engine.dialect.name == "postgresql" else None
        app.state.notifier = RunNotifier(loop, publish=wakeups.publish if wakeups else None)
        app.state.wakeups = wakeups
        app.state.loop_time = loop.time
        if wakeups is not None:
            wakeups.start(app.state.notifier)
        stop = asyncio.Event()
        services = [
            asyncio.create_task(run_periodically(name, run_once, settings.server.services_interval_seconds, stop))
            for name, run_once in _services(settings.server, factory, app.state.notifier)
        ] + [
            asyncio.create_task(run_periodically(name, run_once, interval, stop))
            for name, run_once, interval in _timed_services(settings.server, factory)
        ]
        try:
            yield
        finally:
            stop.set()
            app.state.notifier.notify_all()
            await asyncio.gather(*services, return_exceptions=True)
            if wakeups is not None:
                await asyncio.to_thread(wakeups.stop)
            engine.dispose()

    app = FastAPI(
        title="Baton API",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/api/openapi.json",
        # FastAPI's native OpenTelemetry: Baton configures none, and with it on, every request asked the global
        # OpenTelemetry providers whether one had been set since (~4% of the CPU of a cheap request).
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,  # served below from this server's own files: FastAPI's page loads them from a CDN
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.session_factory = factory
    app.state.read_session_factory = create_read_session_factory(engine)
    app.state.read_engine = read_only_engine(engine)  # authentication's: one Core query per request
    app.state.database_kind = engine.dialect.name
    app.state.auth_limiter = FailedAuthLimiter(
        settings.server.failed_auth_limit, settings.server.failed_auth_window_seconds
    )
    install_error_handlers(app)
    for router in ROUTERS:
        check_json_routes(router)
        app.include_router(router, prefix=API_PREFIX)
    # Prefect 1's GraphQL API (issue 13): not in the OpenAPI document; AuthenticateFirst checks its credentials as the
    # REST API's and answers a refused one as Prefect 1's client expects.
    app.add_api_route(GRAPHQL_PATH, graphql_endpoint, methods=["POST"], include_in_schema=False)
    # The web UI: its pages sign in with a session cookie (``ui.web``), not the Authorization header.
    for router in ui_routers():
        app.include_router(router)
    app.mount(STATIC_PREFIX, static_files(), name="static")

    @app.get(DOCS_PATH, include_in_schema=False)
    def swagger() -> HTMLResponse:
        return swagger_page(app.openapi_url or "", app.title)

    # Middleware added last is outermost: a declared oversize body is refused first (it costs nothing), then no body
    # is read before the credential is checked.
    server = settings.server
    public = public_paths(app)
    app.add_middleware(
        Admission,
        max_requests=server.max_requests_in_flight,
        max_bytes_in_flight=server.max_body_bytes_in_flight,
        body_timeout_seconds=server.body_timeout_seconds,
        max_body_bytes=server.max_body_bytes,
        long_poll=LONG_POLL,
        exempt=public,
    )
    app.add_middleware(
        AuthenticateFirst, public_paths=public, protected_prefix=API_PREFIX + "/", graphql_path=GRAPHQL_PATH
    )
    app.add_middleware(BodySizeLimit, max_bytes=server.max_body_bytes)
    return app


def api_routes() -> list[tuple[str, APIRoute]]:
    """Every route of the API with its full path, as the OpenAPI document names it (``{label}``, not
    ``{label:path}``)."""
    return [
        (API_PREFIX + route.path_format, route)
        for router in ROUTERS
        for route in router.routes
        if isinstance(route, APIRoute)
    ]


def declared_action(route: APIRoute) -> Action | None:
    """The action ``route`` declares through ``access.allow`` or ``access.Public`` (None: it declares none)."""
    return route_action([dep.call for dep in route.dependant.dependencies])


def public_paths(app: FastAPI) -> frozenset[str]:
    """Paths that need no credential: routes whose action is public, and the API's own documentation."""
    paths = {
        path
        for path, route in api_routes()
        if (action := declared_action(route)) is not None and POLICY[action].scope == Scope.PUBLIC
    }
    docs = [app.openapi_url, DOCS_PATH]
    return frozenset(paths | {path for path in docs if path})

"""The API server's FastAPI application.

Usage::

    app = create_app(load_settings())   # runs migrations and the background services in its lifespan
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from sqlalchemy import Engine

from baton import __version__
from baton.server.api import agents, flow_runs, flows, logs, meta
from baton.server.database.connection import create_database_engine, create_session_factory
from baton.server.database.migrate import upgrade
from baton.server.errors import install_error_handlers
from baton.server.limits import BodySizeLimit
from baton.server.notifier import RunNotifier
from baton.server.services.leases import LeaseExpiryService
from baton.server.services.runner import run_periodically
from baton.settings import BatonSettings

logger = logging.getLogger("baton.server")


def create_app(settings: BatonSettings, engine: Engine | None = None) -> FastAPI:
    engine = engine or create_database_engine(settings.database_url(), settings.server.database_pool_size)
    factory = create_session_factory(engine)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(upgrade, engine)  # a no-op when the database is already at head
        loop = asyncio.get_running_loop()
        app.state.notifier = RunNotifier(loop)
        app.state.loop_time = loop.time
        stop = asyncio.Event()
        leases = LeaseExpiryService(factory, app.state.notifier, settings.server.max_lease_returns)
        services = [
            asyncio.create_task(
                run_periodically("lease-expiry", leases.run_once, settings.server.services_interval_seconds, stop)
            )
        ]
        try:
            yield
        finally:
            stop.set()
            app.state.notifier.notify_all()
            await asyncio.gather(*services, return_exceptions=True)
            engine.dispose()

    app = FastAPI(
        title="Baton API",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.session_factory = factory
    app.state.database_kind = engine.dialect.name
    install_error_handlers(app)
    for module in (meta, flows, flow_runs, logs, agents):
        app.include_router(module.router, prefix="/api")
    app.add_middleware(BodySizeLimit, max_bytes=settings.server.max_body_bytes)
    return app

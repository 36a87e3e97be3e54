"""``baton server start``: migrate, bootstrap the first tenant, serve with uvicorn."""

from __future__ import annotations

import logging

from baton.settings import BatonSettings

logger = logging.getLogger("baton.server")


def serve(settings: BatonSettings, log_level: str = "info") -> None:
    """Run the API server until SIGINT/SIGTERM. Blocks."""
    import uvicorn

    from baton.server.app import create_app
    from baton.server.bootstrap import ensure_default_tenant
    from baton.server.database.connection import create_database_engine, create_session_factory, database_errors
    from baton.server.database.migrate import upgrade

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    engine = create_database_engine(settings.database_url(), settings.server.database_pool_size)
    with database_errors(settings.database_url()):
        upgrade(engine)
        ensure_default_tenant(create_session_factory(engine), settings)
    app = create_app(settings, engine)
    logger.info(
        "Baton API on http://%s:%s (database: %s)",
        settings.server.host,
        settings.server.port,
        engine.dialect.name,
    )
    trusted = ",".join(settings.server.forwarded_allow_ips)
    if trusted:
        logger.info("Trusting X-Forwarded-For and X-Forwarded-Proto from: %s", trusted)
    uvicorn.run(
        app,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: a local client could then pick the
        # address it is rate limited as. Only the proxies the operator names are believed.
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or "",
        host=settings.server.host,
        port=settings.server.port,
        log_level=log_level.lower(),
        # Long-polling claims hold requests open: do not let them delay a stop for their full wait.
        timeout_graceful_shutdown=3,
        access_log=False,
    )

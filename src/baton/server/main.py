"""``baton server start``: migrate, bootstrap the first tenant, serve with uvicorn."""

from __future__ import annotations

import logging
from types import FrameType

import uvicorn

from baton.settings import BatonSettings, baton_home, ensure_private_home

logger = logging.getLogger("baton.server")


class DrainingServer(uvicorn.Server):
    """uvicorn's server, which also ends the long-polling claims as soon as a stop signal arrives.

    uvicorn waits for open requests before it runs the app's shutdown: agents long-polling for up to a minute would
    hold the stop until its graceful timeout cancelled them, with ASGI tracebacks in the log. Ending the polls first
    (each answers "no runs") lets every connection close cleanly within milliseconds.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        # uvicorn (0.29+) raises the signal again once it has stopped, so the process dies of SIGTERM (exit -15);
        # a stop we asked for and completed is a clean exit, 0, for supervisors and shells alike.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()
        state = getattr(self.config.app, "state", None)
        notifier = getattr(state, "notifier", None)
        if notifier is not None:
            notifier.close_threadsafe()


def serve(settings: BatonSettings, log_level: str = "info") -> None:
    """Run the API server until SIGINT/SIGTERM. Blocks."""
    from baton.server.app import create_app
    from baton.server.bootstrap import ensure_default_tenant
    from baton.server.database.connection import create_database_engine, create_session_factory, database_errors
    from baton.server.database.migrate import upgrade

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic announces each of its plugins at INFO whenever it loads: seven lines of noise per start.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    ensure_private_home(baton_home())
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
    config = uvicorn.Config(
        app,
        # uvicorn believes X-Forwarded-For from 127.0.0.1 unless told otherwise: a local client could then pick the
        # address it is rate limited as. Only the proxies the operator names are believed.
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or "",
        host=settings.server.host,
        port=settings.server.port,
        log_level=log_level.lower(),
        # Long polls end at once when the stop begins (DrainingServer); this only bounds other slow requests.
        timeout_graceful_shutdown=10,
        timeout_keep_alive=settings.server.keep_alive_seconds,
        access_log=False,
    )
    DrainingServer(config).run()

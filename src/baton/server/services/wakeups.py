"""Long-poll wake-ups across server replicas that share one PostgreSQL: ``NOTIFY`` out, ``LISTEN`` in.

A replica that makes runs claimable publishes the tenant id on the ``baton_runs`` channel after its commit; every
replica listens on a dedicated connection, in a thread, and wakes its own waiting claims for that tenant. The
payload carries the publishing replica's id so a replica does not wake itself twice.

Losing the listening connection loses nothing for good: waiting claims re-check every few seconds anyway
(``server.claim_recheck_seconds``), and after reconnecting the listener wakes every waiter once, for the
notifications it may have missed.
"""

from __future__ import annotations

import logging
import threading
import uuid

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from baton.backoff import Backoff
from baton.server.notifier import RunNotifier

logger = logging.getLogger("baton.server.services.wakeups")

CHANNEL = "baton_runs"
# How often the listener looks up from the socket to see whether it must stop.
_POLL_SECONDS = 0.5


class PostgresWakeups:
    """Publishes and listens for "runs of tenant T became claimable" between replicas.

    Usage::

        wakeups = PostgresWakeups(engine)
        notifier = RunNotifier(loop, publish=wakeups.publish)
        wakeups.start(notifier)
        ...
        wakeups.stop()
    """

    def __init__(self, engine: Engine, replica_id: str | None = None) -> None:
        self._engine = engine
        self.replica_id = replica_id or uuid.uuid4().hex
        # psycopg takes the URL libpq understands: no "+psycopg" driver suffix.
        self._conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._stop = threading.Event()
        self.listening = threading.Event()
        self._thread: threading.Thread | None = None
        self._publish_failing = False

    def publish(self, tenant_id: str) -> None:
        """Tell the other replicas; a failure is logged, not raised: their periodic re-check still finds the run."""
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    text("SELECT pg_notify(:channel, :payload)"),
                    {"channel": CHANNEL, "payload": f"{tenant_id}:{self.replica_id}"},
                )
        except SQLAlchemyError as exc:
            if not self._publish_failing:
                logger.warning("could not notify other replicas (%s); they will find the run at their re-check", exc)
            self._publish_failing = True
            return
        self._publish_failing = False

    def start(self, notifier: RunNotifier) -> None:
        self._thread = threading.Thread(target=self._listen, args=(notifier,), name="baton-wakeups", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_POLL_SECONDS + 5)

    def _listen(self, notifier: RunNotifier) -> None:
        import psycopg

        backoff = Backoff(base_seconds=0.5, max_seconds=10.0)
        failures = 0
        while not self._stop.is_set():
            try:
                # Keepalives: a half-open connection (the database host vanished) is noticed within about a minute.
                with psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=10,
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,
                ) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    if failures:
                        logger.info("listening for other replicas' runs again")
                    failures = 0
                    self.listening.set()
                    # Whatever was published while nobody listened is lost: every waiter looks once more.
                    notifier.wake_all_threadsafe()
                    while not self._stop.is_set():
                        for note in connection.notifies(timeout=_POLL_SECONDS):
                            self._deliver(notifier, note.payload)
            except Exception as exc:
                self.listening.clear()
                failures += 1
                delay = backoff.delay(failures)
                # A psycopg error is routine (the database went away); anything else is a bug worth its traceback.
                routine = isinstance(exc, psycopg.Error)
                logger.warning(
                    "listening for other replicas' runs failed (%s); retrying in %.1fs",
                    exc,
                    delay,
                    exc_info=not routine,
                )
                self._stop.wait(delay)
        self.listening.clear()

    def _deliver(self, notifier: RunNotifier, payload: str) -> None:
        tenant_id, _, origin = payload.partition(":")
        if tenant_id and origin != self.replica_id:
            notifier.wake_threadsafe(tenant_id)

"""Engine and session factory for SQLite (default, WAL mode) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from baton.exceptions import ConfigurationError, DatabaseUnavailableError


def normalize_database_url(url: str) -> str:
    """Accept ``postgresql://`` and ``postgres://`` and use psycopg 3 for them.

    Raises:
        ConfigurationError: the URL does not parse (its password masked in the message), or names another database.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: a port that is not a number
        raise ConfigurationError(f"invalid database URL {masked_url(url)!r}: {exc}") from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if not parsed.drivername.startswith(("sqlite", "postgresql")):
        raise ConfigurationError(f"unsupported database {parsed.drivername!r}: use sqlite:/// or postgresql://")
    return parsed.render_as_string(hide_password=False)


def masked_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***``, for a URL that may not parse at all."""
    at = url.rfind("@")
    if at < 0:
        return url
    start = url.find("://")
    start = start + 3 if 0 <= start < at else 0
    colon = url.find(":", start, at)
    return url if colon < 0 else f"{url[: colon + 1]}***{url[at:]}"


def _configure_sqlite(dbapi_connection: Any, busy_timeout: float) -> None:
    # The driver's own transaction handling is off: it would BEGIN a deferred transaction only before the first
    # write, and savepoints and reads outside it would see other snapshots. ``WriterQueue.begin`` begins instead.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; busy_timeout makes writers queue instead of failing.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


# The execution option of read-only sessions (``create_read_session_factory``).
READ_ONLY = "baton_read_only"
# How long a writer waits for SQLite's write lock before the request fails (503).
BUSY_TIMEOUT_SECONDS = 30
# ``Connection.info`` key: this connection's transaction holds its engine's writer lock (``WriterQueue``).
_HOLDS_WRITER_LOCK = "baton_holds_writer_lock"


class WriterQueue:
    """One SQLite writer at a time within this process, queued on a lock rather than on SQLite's busy handler.

    Every SQLite transaction but a read-only session's takes the write lock when it begins (``BEGIN IMMEDIATE``):
    a deferred transaction that read and then writes fails at once with SQLITE_BUSY (no waiting) whenever another
    writer committed since its read, which under load was a 503 for a plain request. Taking the lock first makes
    transactions queue instead; SQLite has one writer at a time anyway, and transactions here are short. (The choice
    of Rails and of Django's ``transaction_mode`` for SQLite web servers.)

    Left to SQLite, the queue is its busy handler: a waiting writer sleeps 1, 2, 5, 10, ... then 100 ms between
    tries, so under load the lock sat free while the next writer slept (profiled under ``bench/chaos.py``: the
    server's threads spent most of their time in ``BEGIN IMMEDIATE``). The server's own writers now wait on a
    ``threading.Lock``, taken before ``BEGIN IMMEDIATE`` and released once ``COMMIT`` or ``ROLLBACK`` is done, so
    the next one starts at once. Other processes on the same file (the CLI's admin commands) still meet the busy
    handler. A thread never holds two write transactions at once: the second would wait for the first until its
    timeout and fail, as it did before this lock existed.
    """

    def __init__(self, timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout

    def begin(self, connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY, False):
            connection.exec_driver_sql("BEGIN")  # in WAL mode it reads beside the writer, never queueing
            return
        info = connection.info  # first: on a connection being re-established this may raise, and no lock is held yet
        if not self._lock.acquire(timeout=self._timeout):
            raise OperationalError("BEGIN IMMEDIATE", None, sqlite3.OperationalError("database is locked"))
        info[_HOLDS_WRITER_LOCK] = True
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            self._release(info)
            raise

    def commit(self, connection: Any) -> None:
        self._end(connection, "COMMIT")

    def rollback(self, connection: Any) -> None:
        self._end(connection, "ROLLBACK")

    def checkin(self, _dbapi_connection: Any, record: Any) -> None:
        # A connection returned to the pool holds no transaction: the pool rolled it back (never expected to be
        # needed, as every transaction ends through ``commit`` or ``rollback``; a lock leaked here would stop every
        # writer).
        self._release(record.info)

    def _end(self, connection: Any, statement: str) -> None:
        """End the transaction here, then let the next writer in: SQLAlchemy's own COMMIT or ROLLBACK, which follows
        this event, is then a no-op (the driver skips it outside a transaction)."""
        if connection.invalidated:
            return  # the pool took the connection back (its check-in released the lock); its rollback is moot
        info = connection.info
        if not info.get(_HOLDS_WRITER_LOCK):
            return
        dbapi_connection = connection.connection.dbapi_connection
        try:
            if dbapi_connection is not None and dbapi_connection.in_transaction:
                dbapi_connection.execute(statement)
        except sqlite3.Error as exc:
            # A failed COMMIT (disk full, I/O error) leaves the transaction open: end it before the next writer
            # comes in, and keep the driver's error class (an integrity error is not "database busy").
            with contextlib.suppress(sqlite3.Error):
                if dbapi_connection is not None and dbapi_connection.in_transaction:
                    dbapi_connection.execute("ROLLBACK")
            raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc
        finally:
            self._release(info)

    def _release(self, info: dict[str, Any]) -> None:
        if info.pop(_HOLDS_WRITER_LOCK, False):
            self._lock.release()


def _private_sqlite_file(path: Path) -> None:
    """Create the database file readable by its owner only (0600; its folder 0700 when made here): it holds
    run-config env values, which are often secrets. An existing file and its WAL files are tightened too."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    # SQLite gives the -wal and -shm files the database file's mode; older files may predate this rule.
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError, PermissionError):
            if file.stat().st_mode & 0o077:
                file.chmod(0o600)


def create_database_engine(url: str, pool_size: int = 10, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> Engine:
    """``busy_timeout``: how long a SQLite writer waits for the write lock, in seconds."""
    # hide_parameters: database errors are logged, and their parameters may hold run-config env values (secrets).
    url = normalize_database_url(url)
    parsed = make_url(url)
    if parsed.drivername.startswith("sqlite"):
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            _private_sqlite_file(Path(parsed.database))
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout}, hide_parameters=True
        )
        writers = WriterQueue(busy_timeout)
        event.listen(
            engine, "connect", lambda dbapi_connection, _record: _configure_sqlite(dbapi_connection, busy_timeout)
        )
        event.listen(engine, "begin", writers.begin)
        event.listen(engine, "commit", writers.commit)
        event.listen(engine, "rollback", writers.rollback)
        event.listen(engine.pool, "checkin", writers.checkin)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, hide_parameters=True)


def create_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def read_only_engine(engine: Engine) -> Engine:
    """``engine`` for work that only reads: on SQLite its transactions never wait for the write lock. A write in one
    may fail at once when another writer got in first: use ``engine`` itself to write."""
    return engine.execution_options(**{READ_ONLY: True})


def create_read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for work that only reads (the access check, the web UI's pages, the API's read routes:
    ``api.deps.ReadDb``), on :func:`read_only_engine`."""
    return sessionmaker(read_only_engine(engine), expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction, committed on leaving the block (rolled back if it raises).

    API handlers commit inside their own body, before the response exists: a client that reads right after a
    write must see it, and a long-polling agent must be woken only once the run is visible.
    """
    with factory() as session, session.begin():
        yield session


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """Turn a database that cannot be reached or used into one clear error naming it (password hidden)."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    try:
        yield
    except (OperationalError, DBAPIError) as exc:
        shown = make_url(normalize_database_url(url)).render_as_string(hide_password=True)
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise DatabaseUnavailableError(f"cannot use the database {shown}: {reason}") from exc


def upsert_insert(session: Session, table: Any) -> Any:
    """``INSERT`` of the session's database, with its ``ON CONFLICT`` clauses (``on_conflict_do_nothing``,
    ``on_conflict_do_update``, ``excluded``): PostgreSQL's or SQLite's, the two Baton runs on."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect: Any = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    return dialect.insert(table)

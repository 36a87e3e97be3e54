"""SQLite's writers queue on the engine's lock (``connection.WriterQueue``), not on SQLite's busy handler.

Each test turns SQLite's own busy handler off (``busy_timeout=0`` on every connection) after the engine's setup: a
writer that reached ``BEGIN IMMEDIATE`` while another held the write lock would then fail at once with "database is
locked", so every write below succeeds only if the lock let one writer in at a time and let the next in only after
the last one's COMMIT or ROLLBACK.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.exc import OperationalError

from baton.server.database.connection import (
    create_database_engine,
    create_read_session_factory,
    create_session_factory,
    transaction,
)


def _no_busy_handler(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.execute("PRAGMA busy_timeout=0")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_database_engine(f"sqlite:///{tmp_path}/queue.db", busy_timeout=2.0)
    event.listen(engine, "connect", _no_busy_handler)  # after the engine's own setup
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)"))
        connection.execute(text("INSERT INTO counter VALUES (1, 0)"))
    yield engine
    engine.dispose()


def _count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT n FROM counter")).scalar_one())


def _increment(engine: Engine) -> None:
    factory = create_session_factory(engine)
    with transaction(factory) as session:
        n = session.execute(text("SELECT n FROM counter")).scalar_one()
        session.execute(text("UPDATE counter SET n = :n"), {"n": n + 1})


def test_concurrent_writers_queue_and_none_is_refused_or_lost(engine: Engine) -> None:
    errors: list[BaseException] = []

    def write(times: int) -> None:
        try:
            for _ in range(times):
                _increment(engine)
        except BaseException as exc:  # reported below: a thread's exception is otherwise lost
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(25,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Each read-then-write saw the one before it: no increment was lost.
    assert _count(engine) == 200


def test_a_rolled_back_transaction_lets_the_next_writer_in(engine: Engine) -> None:
    factory = create_session_factory(engine)
    with pytest.raises(ZeroDivisionError), transaction(factory) as session:
        session.execute(text("UPDATE counter SET n = 99"))
        _ = 1 / 0
    done = threading.Event()
    writer = threading.Thread(target=lambda: (_increment(engine), done.set()))
    writer.start()
    writer.join(5)
    assert done.is_set()
    assert _count(engine) == 1  # the rolled-back 99 is gone


def test_a_failed_statement_then_rollback_releases_the_lock(engine: Engine) -> None:
    factory = create_session_factory(engine)
    with pytest.raises(OperationalError, match="no such table"), transaction(factory) as session:
        session.execute(text("UPDATE missing SET n = 1"))
    _increment(engine)
    assert _count(engine) == 1


def test_readers_do_not_queue_behind_a_writer_and_a_writer_waits_out_its_timeout(engine: Engine) -> None:
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction(create_session_factory(engine)) as session:
            session.execute(text("UPDATE counter SET n = 5"))
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(5)
        # A read-only session begins beside the writer and sees the last committed value.
        with transaction(create_read_session_factory(engine)) as session:
            assert session.execute(text("SELECT n FROM counter")).scalar_one() == 0
        # A second writer waits for the lock (2 s here) and then fails as SQLite's busy handler did: the API
        # answers 503 for it (``errors._database_busy``).
        with pytest.raises(OperationalError, match="database is locked"):
            _increment(engine)
    finally:
        release.set()
        holder.join()
    _increment(engine)
    assert _count(engine) == 6

"""``python -m baton.server`` takes no arguments: ``--help`` explains, anything else is refused, and neither starts a
server (one started by a mistyped option wrote a home and a tenant of its own). Bad settings are one line, with the
CLI's exit codes, and never show a database password."""

from __future__ import annotations

import http.client
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from baton.server.database.connection import masked_url
from baton.server.database.orm import Log
from baton.server.models import logs
from support import ServerProcess, clean_env


@pytest.mark.parametrize(
    ("args", "code", "said"),
    [(["--help"], 0, "takes options too"), (["--port", "5"], 2, "unrecognized arguments: --port 5")],
)
def test_the_module_entry_point_explains_or_refuses_its_arguments_without_starting(
    tmp_path: Path, args: list[str], code: int, said: str
) -> None:
    home = tmp_path / "home"
    done = subprocess.run(
        [sys.executable, "-m", "baton.server", *args],
        env=clean_env(home),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == code, done.stderr
    assert said in done.stdout + done.stderr
    assert not home.exists()  # no server started: no home, no database, no key written


@pytest.mark.parametrize(
    ("env", "code", "said"),
    [
        ({"BATON__SERVER__DATABASE_POOL_SIZE": "-5"}, 2, "BATON__SERVER__DATABASE_POOL_SIZE"),
        ({"BATON__SERVER__DATABASE_URL": "mysql://u@127.0.0.1/x"}, 2, "unsupported database 'mysql'"),
        ({"BATON__SERVER__DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:1/x"}, 3, "cannot use the database"),
        ({"BATON__SERVER__DATABASE_URL": "postgres ql://u:hunter2@127.0.0.1/x"}, 2, "invalid database URL"),
        ({"BATON__SERVER__DATABASE_URL": "postgresql://u:hunter2@127.0.0.1:abc/x"}, 2, "invalid database URL"),
    ],
    ids=["bad setting", "unsupported database", "unreachable database", "unparsable URL", "port not a number"],
)
def test_bad_settings_and_an_unusable_database_are_one_line_with_the_clis_exit_code(
    tmp_path: Path, env: dict[str, str], code: int, said: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "baton.server"],
        env=clean_env(tmp_path / "home", **env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert done.returncode == code, done.stderr
    # Log lines of the start may come first; the error is one line at the end, and no traceback
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert [line for line in lines if line.startswith("Error: ")] == lines[-1:], done.stderr
    assert said in lines[-1]
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgres ql://u:s3cret@h/db", "postgres ql://u:***@h/db"),
        ("postgresql://u:p:w/@d@h:abc/db", "postgresql://u:***@h:abc/db"),
        ("u:s3cret@h/db", "u:***@h/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("sqlite:///x.db", "sqlite:///x.db"),
    ],
)
def test_a_url_in_an_error_message_has_its_password_masked(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_the_postgresql_log_insert_names_every_column_of_the_logs_table_but_its_id() -> None:
    # The array insert is raw SQL: a column added to the model must be added there too
    assert set(logs._COLUMNS) == {column.name for column in Log.__table__.columns} - {"id"}
    assert all(f":{column}s" in str(logs._POSTGRESQL_INSERT) for column in logs._COLUMNS)


def test_an_idle_connection_stays_open_for_the_keep_alive_setting_and_no_longer(
    start_server: Callable[..., ServerProcess],
) -> None:
    # The default (20 s) outlasts the 5 s between agents' and flow runs' heartbeats; here 1 s, to see both sides.
    server = start_server(BATON__SERVER__KEEP_ALIVE_SECONDS="1")
    port = int(server.url.rsplit(":", 1)[1])

    def idle_then_closed(seconds: float) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            connection.request("GET", "/api/health")
            answer = connection.getresponse()
            assert (answer.status, answer.read()[:1]) == (200, b"{")  # read whole: the connection is idle now
            time.sleep(seconds)
            assert connection.sock is not None
            connection.sock.settimeout(0.3)
            try:
                return connection.sock.recv(1) == b""  # the server closed it
            except TimeoutError:
                return False  # still open
        finally:
            connection.close()

    assert not idle_then_closed(0.5)
    assert idle_then_closed(1.5)

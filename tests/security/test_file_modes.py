"""Item 12: the server's files hold secrets (keys in config.toml, run-config env values in the SQLite database):
readable by their owner only, in a $BATON_HOME of mode 0700, also when an older, looser home is reused."""

from __future__ import annotations

import stat
from pathlib import Path

from baton.client import Client
from support import ServerProcess, register_source_flow


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_home_and_its_files_are_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = ServerProcess(home).start()
    try:
        with Client(server.url, server.admin_key) as admin:
            register_source_flow(admin, run_config={"env": {"DB_PASSWORD": "hunter2"}})
        database = home / "baton.db"
        assert _mode(home) == 0o700
        assert _mode(home / "config.toml") == 0o600
        assert _mode(database) == 0o600
        for suffix in ("-wal", "-shm"):
            wal = database.with_name(database.name + suffix)
            if wal.exists():
                assert _mode(wal) == 0o600, suffix
    finally:
        server.stop()


def test_a_loose_existing_home_is_tightened(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    (home / "baton.db").touch()
    (home / "baton.db").chmod(0o644)
    server = ServerProcess(home).start()
    try:
        assert _mode(home) == 0o700
        assert _mode(home / "baton.db") == 0o600
    finally:
        server.stop()

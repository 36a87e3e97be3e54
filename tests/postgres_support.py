"""A throwaway PostgreSQL cluster for the tests: initdb into a temporary directory, pg_ctl start on a free port
on 127.0.0.1, one database per server, stopped and deleted afterwards.

initdb refuses to run as root: as root, the cluster's commands run as the ``postgres`` OS user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from support import free_port, migrate_to_head

BINARIES = ("initdb", "pg_ctl", "postgres")


def find_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: on PATH, else Debian's /usr/lib/postgresql/*/bin."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).parent] if on_path else []
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    for directory in candidates:
        if all((directory / name).exists() for name in BINARIES):
            return directory
    return None


class PostgresCluster:
    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        # Not under pytest's tmp_path: that is private to root, and the cluster may run as another user.
        self.root = Path(tempfile.mkdtemp(prefix="baton-pg-"))
        self.data = self.root / "data"
        self.user = "baton"
        self._databases = 0
        self._migrated: str | None = None  # the database that create_migrated_database copies
        self._admin: Any = None  # psycopg.Connection to the "postgres" database, opened on first use
        self._lock = threading.Lock()

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin_dir / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({result.returncode}): {result.stderr or result.stdout}")
        return result

    def start(self) -> PostgresCluster:
        if os.geteuid() == 0:
            shutil.chown(self.root, user="postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", self.user, "-E", "UTF8", "--no-sync")
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "postgres.log"), "-w", "start")
        return self

    def create_database(self, template: str = "template1") -> str:
        """A new database, a copy of ``template`` (by default empty); its SQLAlchemy URL."""
        import psycopg

        with self._lock:
            self._databases += 1
            name = f"baton_{self._databases}"
            if self._admin is None:  # one connection for every CREATE DATABASE: a backend start is ~50 ms of CPU
                self._admin = psycopg.connect(
                    f"host=127.0.0.1 port={self.port} user={self.user} dbname=postgres", autocommit=True
                )
            self._admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def create_migrated_database(self) -> str:
        """A new database already migrated to head: a copy of one migrated once per cluster (~70 ms, where a
        database created and migrated took ~200 ms)."""
        if self._migrated is None:
            url = self.create_database()
            migrate_to_head(url)  # and closed: a template has no other connection while it is copied
            self._migrated = url.rsplit("/", 1)[1]
        return self.create_database(self._migrated)

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def throwaway_database() -> Iterator[str]:
    """The URL of a fresh database in a cluster started for it and deleted afterwards (the benchmarks' PostgreSQL);
    exits with what to install when there are no PostgreSQL binaries."""
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise SystemExit("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    cluster = PostgresCluster(bin_dir).start()
    try:
        yield str(cluster.create_database())
    finally:
        cluster.stop()

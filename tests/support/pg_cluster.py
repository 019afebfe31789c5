"""A second PostgreSQL cluster of the test's own: ``initdb`` into a temporary directory as the
``postgres`` user, started with ``pg_ctl`` on a free port of 127.0.0.1, stopped (and removed) at the end.

The machine's shared server on 5432 is never touched. ``read_only=True`` starts the cluster with
``default_transaction_read_only = on``, which libpq's ``target_session_attrs=read-write`` check
(``SHOW transaction_read_only``) sees as a server that does not take writes: a stand-in for a hot
standby without setting up replication.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

from ops.harness.daemon import free_port

START_TIMEOUT_S = 60


def _bin(tool: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return found[-1] if found else shutil.which(tool)


def _as_postgres(command: list[str]) -> list[str]:
    """initdb and the server refuse to run as root: run them as the ``postgres`` user."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


class PgCluster:
    def __init__(self, datadir: Path, port: int, pg_ctl: str) -> None:
        self.datadir = datadir
        self.port = port
        self.host = "127.0.0.1"
        self.pg_ctl = pg_ctl

    def url(self, dbname: str) -> str:
        return f"postgresql://postgres@{self.host_port()}/{dbname}"

    def stop(self) -> None:
        """A fast shutdown, as a restart or a failover does: every session is told to go and closed."""
        subprocess.run(_as_postgres([self.pg_ctl, "-D", str(self.datadir), "-m", "fast", "-w", "stop"]),
                       check=True, capture_output=True)

    def start(self) -> None:
        """Start again with the options of the first start (pg_ctl keeps them in postmaster.opts)."""
        subprocess.run(_as_postgres([self.pg_ctl, "-D", str(self.datadir), "-l", str(self.datadir.parent / "server.log"),
                                     "-w", "-t", str(START_TIMEOUT_S), "restart"]),
                       check=True, capture_output=True)

    def host_port(self) -> str:
        return f"{self.host}:{self.port}"

    def admin(self, dbname: str = "postgres"):  # type: ignore[no-untyped-def]
        """An autocommit connection allowed to write even on a read-only cluster."""
        connection = psycopg2.connect(host=self.host, port=self.port, user="postgres", dbname=dbname,
                                      options="-c default_transaction_read_only=off")
        connection.autocommit = True
        return connection

    def create_database(self, name: str) -> None:
        connection = self.admin()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()


@contextmanager
def pg_cluster(read_only: bool = False) -> Iterator[PgCluster]:
    """Start a throwaway cluster; skip (fail under CI=true) where PostgreSQL's server tools are missing."""
    initdb, pg_ctl = _bin("initdb"), _bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        message = "PostgreSQL's initdb/pg_ctl are not installed"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    base = Path(tempfile.mkdtemp(prefix="retentiond-pg-"))
    datadir = base / "data"
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    subprocess.run(_as_postgres([initdb, "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                                 "--no-sync"]),
                   check=True, capture_output=True)
    port = free_port()
    options = [f"-p {port}", "-c listen_addresses=127.0.0.1", f"-c unix_socket_directories={base}",
               "-c fsync=off", "-c max_connections=30", "-c shared_buffers=16MB"]
    if read_only:
        options.append("-c default_transaction_read_only=on")
    cluster = PgCluster(datadir, port, pg_ctl)
    try:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(datadir), "-l", str(base / "server.log"), "-w",
                                     "-t", str(START_TIMEOUT_S), "-o", " ".join(options), "start"]),
                       check=True, capture_output=True)
        yield cluster
    finally:
        subprocess.run(_as_postgres([pg_ctl, "-D", str(datadir), "-m", "immediate", "-w", "stop"]),
                       check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)

"""Apply the numbered migrations in ``db/migrations`` (peewee's runner), once, under a lock.

Two daemons starting together on one database both call this: PostgreSQL serialises them with
an advisory lock, SQLite with its single writer (``BEGIN IMMEDIATE`` inside the runner) plus a
lock file beside the database, so the second one finds everything applied and does nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import peewee
from playhouse.migrations import Runner

from db.database import database, is_postgres

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
HISTORY_TABLE = "schema_migration"
_PG_LOCK_KEY = 0x7265_7465  # 'rete': any constant shared by every retentiond process


def pending_migrations() -> list[str]:
    runner = Runner(database.obj, str(MIGRATIONS_DIR), table_name=HISTORY_TABLE)
    return [m.name for m in runner.status() if not m.applied and m.path]


def migrate() -> list[str]:
    """Apply pending migrations; return the names applied (empty when up to date)."""
    with _exclusive():
        runner = Runner(database.obj, str(MIGRATIONS_DIR), table_name=HISTORY_TABLE)
        return list(runner.up())


@contextlib.contextmanager
def _exclusive() -> Iterator[None]:
    engine = database.obj
    if is_postgres():
        with engine.connection_context():
            engine.execute_sql("SELECT pg_advisory_lock(%s)", (_PG_LOCK_KEY,))
            try:
                yield
            finally:
                engine.execute_sql("SELECT pg_advisory_unlock(%s)", (_PG_LOCK_KEY,))
        return
    assert isinstance(engine, peewee.SqliteDatabase)
    if engine.database == ":memory:":
        yield
        return
    with open(os.path.abspath(engine.database) + ".migrate.lock", "w") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file, fcntl.LOCK_UN)

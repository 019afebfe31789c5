"""The database proxy and the URL that initialises it.

Models bind to ``database`` and never know which engine they are on. SQLite gets WAL, normal
sync, a busy timeout, foreign keys and ``BEGIN IMMEDIATE`` transactions (a writer takes the lock
up front instead of failing to upgrade a read lock half-way). PostgreSQL gets a bounded pool:
processes x pool size must stay far below the server's ``max_connections``. Its URL may list
several hosts (libpq multi-host), for a failover without restarting the daemon.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import peewee
from playhouse.pool import PooledPostgresqlDatabase

from ground.urls import postgres_params

database = peewee.DatabaseProxy()


def is_sqlite() -> bool:
    return isinstance(database.obj, peewee.SqliteDatabase)


def is_postgres() -> bool:
    return isinstance(database.obj, peewee.PostgresqlDatabase)


def sqlite_path(url: str) -> str:
    """``sqlite:///var/x.db`` is the relative path ``var/x.db``; ``sqlite:////abs/x.db`` is absolute."""
    parts = urlsplit(url)
    path = unquote(parts.netloc + parts.path)
    return path[1:] if path.startswith("/") and not parts.netloc else path


def open_database(url: str, *, pool_size: int = 3, timeout_s: float = 10.0) -> peewee.Database:
    """Build the engine object for a database URL (not connected yet)."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = sqlite_path(url)
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return peewee.SqliteDatabase(
            path,
            timeout=timeout_s,
            lock_type="IMMEDIATE",
            pragmas={
                "journal_mode": "wal",
                "synchronous": "normal",
                "busy_timeout": int(timeout_s * 1000),
                "foreign_keys": 1,
                "cache_size": -16_000,  # 16 MiB page cache
            },
        )
    if parts.scheme in ("postgresql", "postgres"):
        params = postgres_params(url)
        dbname = params.pop("dbname")
        params.setdefault("application_name", "retentiond")
        params.setdefault("connect_timeout", str(max(1, int(timeout_s))))  # per host when several
        return PooledPostgresqlDatabase(
            dbname,
            max_connections=pool_size,
            stale_timeout=300,
            timeout=timeout_s,  # wait this long for a free pooled connection
            **params,
        )
    raise ValueError(f"unsupported database URL scheme {parts.scheme!r}")


# libpq's values (PostgreSQL 14+); libpq itself only checks them when it connects.
def init_database(url: str, *, pool_size: int = 3, timeout_s: float = 10.0) -> peewee.Database:
    """Point the global proxy at the database behind ``url`` and return the engine object."""
    engine = open_database(url, pool_size=pool_size, timeout_s=timeout_s)
    database.initialize(engine)
    return engine


def close_database() -> None:
    engine = database.obj
    if engine is None:
        return
    if isinstance(engine, PooledPostgresqlDatabase):
        engine.close_all()
    elif not engine.is_closed():
        engine.close()


def db_session() -> contextlib.AbstractContextManager[object]:
    """A connection for the duration of a block of work.

    PostgreSQL: borrowed from the bounded pool and given back at the end, so worker threads never
    sit on scarce connections while they wait on a provider. SQLite: the thread keeps its
    connection open (opening one costs more than the work, and there is no server to spare).

    After a PostgreSQL restart or failover the pool never hands out a dead connection: on checkout
    playhouse's pool discards one whose state is unknown or that fails a ``SELECT 1`` (one round
    trip: ~0.1 ms on loopback, measured 112 us per checkout against 10 us without), and on check-in
    one whose transaction broke off with the connection (``is_connection_reusable``). That cost buys
    "no connection error after the database is back"; tests/test_database_failover.py holds it.
    """
    engine = database.obj
    if isinstance(engine, PooledPostgresqlDatabase):
        return engine.connection_context()
    engine.connect(reuse_if_open=True)
    return _NoClose()


class _NoClose:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def rows(query: Any) -> list[tuple[Any, ...]]:
    """A query's rows as plain tuples (Peewee's ``.tuples()``, typed for mypy), driver errors raised
    while fetching mapped to Peewee's like those raised while executing (see ``sql_rows``)."""
    with peewee.__exception_wrapper__:  # type: ignore[attr-defined]  # public in peewee, not in its stubs
        return list(query.tuples())


def sql_rows(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run raw SQL and fetch all its rows. On SQLite a statement with RETURNING does its work as its
    rows are fetched, outside Peewee's mapping of driver errors: a full disk raised the driver's own
    ``sqlite3.OperationalError``, which no outage handling (written for Peewee's errors) caught."""
    with peewee.__exception_wrapper__:  # type: ignore[attr-defined]
        return list(database.execute_sql(sql, params).fetchall())


def pool_in_use() -> int:
    """Connections this process has checked out of its PostgreSQL pool (0 on SQLite)."""
    engine = database.obj
    return len(getattr(engine, "_in_use", {})) if isinstance(engine, PooledPostgresqlDatabase) else 0


@contextlib.contextmanager
def transaction_waiting_at_most(ms: int) -> Iterator[None]:
    """One transaction that waits at most ``ms`` for a lock, else ``peewee.OperationalError``, on
    either engine: a request waiting for its answer is better served by a 503 it can retry than by a
    202 a minute later. SQLite: this thread's connection's busy timeout, restored afterwards (the
    connection stays with the thread, which serves other work too). PostgreSQL: ``SET LOCAL`` lock
    and statement timeouts, for this transaction only (the pooled connection goes back unchanged)."""
    if is_postgres():
        with database.atomic():
            database.execute_sql(f"SET LOCAL lock_timeout = {int(ms)}; SET LOCAL statement_timeout = {int(ms)}")
            yield
        return
    ((usual,),) = sql_rows("PRAGMA busy_timeout")
    database.execute_sql(f"PRAGMA busy_timeout = {int(ms)}")
    try:
        with database.atomic():
            yield
    finally:
        database.execute_sql(f"PRAGMA busy_timeout = {int(usual)}")

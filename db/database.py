"""The database proxy and the URL that initialises it.

Models bind to ``database`` and never know which engine they are on. SQLite gets WAL, normal
sync, a busy timeout, foreign keys and ``BEGIN IMMEDIATE`` transactions (a writer takes the lock
up front instead of failing to upgrade a read lock half-way). PostgreSQL gets a bounded pool:
processes x pool size must stay far below the server's ``max_connections``.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import peewee
from playhouse.pool import PooledPostgresqlDatabase

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
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        return PooledPostgresqlDatabase(
            unquote(parts.path.lstrip("/")),
            user=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            host=parts.hostname,
            port=parts.port,
            max_connections=pool_size,
            stale_timeout=300,
            timeout=timeout_s,  # wait this long for a free pooled connection
            connect_timeout=max(1, int(timeout_s)),
            application_name=options.pop("application_name", "retentiond"),
            **options,
        )
    raise ValueError(f"unsupported database URL scheme {parts.scheme!r}")


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
    """A query's rows as plain tuples (Peewee's ``.tuples()``, typed for mypy)."""
    return list(query.tuples())


def pool_in_use() -> int:
    """Connections this process has checked out of its PostgreSQL pool (0 on SQLite)."""
    engine = database.obj
    return len(getattr(engine, "_in_use", {})) if isinstance(engine, PooledPostgresqlDatabase) else 0

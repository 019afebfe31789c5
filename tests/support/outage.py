"""A migrated PostgreSQL database reached through a TCP proxy the test controls (cut, restore)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from db.database import close_database, init_database
from db.migrate import migrate
from ops.harness.tcp_proxy import TcpProxy
from tests.support.services import POSTGRES


@contextmanager
def proxied_postgres(pg_url: str) -> Iterator[tuple[str, TcpProxy]]:
    """Migrate ``pg_url``, then yield its URL through a fresh proxy, and the proxy (closed after)."""
    init_database(pg_url)
    migrate()
    close_database()
    proxy = TcpProxy(POSTGRES)
    try:
        yield pg_url.replace(f"{POSTGRES[0]}:{POSTGRES[1]}", proxy.url_host_port()), proxy
    finally:
        proxy.close()

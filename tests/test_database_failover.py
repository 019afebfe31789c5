"""Several PostgreSQL hosts in ``DATABASE_URL`` (libpq multi-host), and a daemon that outlives a
PostgreSQL restart or failover: real servers, a second cluster of the test's own, a TCP proxy the
test controls to cut every connection."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, closing
from pathlib import Path

import psycopg2
import pytest

from db.database import close_database, database, db_session, init_database, open_database, pool_in_use
from db.migrate import migrate
from db.models import Contact, InboundEvent
from ops.harness.daemon import DaemonProcess, base_env, cli, free_port
from ops.harness.signing import STANDARD_SECRET
from ops.harness.tcp_proxy import TcpProxy
from tests.support.pg_cluster import PgCluster, pg_cluster
from tests.support.sends import console_keys, plan_sends, status_counts
from tests.support.services import POSTGRES
from tests.support.waiting import wait_until
from tests.support.webhooks import fire

REAL = f"{POSTGRES[0]}:{POSTGRES[1]}"
OUTAGE_S = 6.0  # the stimulus, not a synchronisation
# What a dead pooled connection says when it is used again (psycopg2 through peewee)
CONNECTION_ERRORS = re.compile(r"connection already closed|server closed the connection|InterfaceError|"
                               r"OperationalError|could not connect|Connection refused")


def dbname_of(pg_url: str) -> str:
    return pg_url.rsplit("/", 1)[1]


def multi_host(pg_url: str, *host_ports: str, query: str = "") -> str:
    return f"postgresql://postgres@{','.join(host_ports)}/{dbname_of(pg_url)}{query}"


def tables_on(host: str, port: int, dbname: str, **options: str) -> set[str]:
    connection = psycopg2.connect(host=host, port=port, user="postgres", dbname=dbname, **options)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {name for (name,) in cursor.fetchall()}
    finally:
        connection.close()


# -- the URL -----------------------------------------------------------------------------------------


def test_several_hosts_reach_libpq_as_its_lists_with_read_write_by_default() -> None:
    engine = open_database("postgresql://app:s%40cret@db1:5432,db2:5433/retentiond?sslmode=prefer")
    params = engine.connect_params
    assert engine.database == "retentiond"
    assert (params["host"], params["port"]) == ("db1,db2", "5432,5433")
    assert params["target_session_attrs"] == "read-write"  # said in the README: the default with several hosts
    assert (params["user"], params["password"], params["sslmode"]) == ("app", "s@cret", "prefer")
    # an explicit choice is kept, and one host gets no default at all
    assert open_database("postgresql://db1,db2/r?target_session_attrs=any").connect_params[
        "target_session_attrs"] == "any"
    assert "target_session_attrs" not in open_database("postgresql://db1:5432/r").connect_params


# -- the pool after its connections died -------------------------------------------------------------


def test_pooled_connections_killed_by_the_server_are_dropped_not_handed_out_again(pg_url: str) -> None:
    # Given a pool of 3 whose connections have all been used, and sit idle in the pool
    init_database(pg_url, pool_size=3)
    try:
        migrate()
        barrier = threading.Barrier(3)

        def use() -> None:
            with db_session():
                barrier.wait(timeout=10)  # all three checked out at once: three connections
                Contact.select().count()
        threads = [threading.Thread(target=use) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)
        database.close()  # the main thread's migration connection, back to the pool
        # When the server ends every one of those sessions (a restart or a failover does)
        admin = psycopg2.connect(host=POSTGRES[0], port=POSTGRES[1], user="postgres", dbname="postgres")
        admin.autocommit = True
        with admin.cursor() as cursor:
            cursor.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = %s AND pid <> pg_backend_pid()", (dbname_of(pg_url),))
            assert cursor.fetchone()[0] >= 3
        admin.close()
        # Then the next blocks of work, more of them than the pool holds, each get a live connection
        for i in range(6):
            with db_session():
                Contact.create(external_id=f"after-{i}")
        assert pool_in_use() == 0
        with db_session():
            assert Contact.select().count() == 6
    finally:
        close_database()


# -- a first host that is down ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_first_host_that_is_down_is_skipped_by_migrate_and_by_the_daemon(
        pg_url: str, amqp_url: str, tmp_path: Path, daemons: list) -> None:
    # Given a URL whose first host refuses connections (a closed port) and whose second is the server
    url = multi_host(pg_url, f"127.0.0.1:{free_port()}", REAL)
    env = base_env(DATABASE_URL=url, BROKER_URL=amqp_url, RATE_SMS="unlimited", DB_TIMEOUT_S="2",
                   SOURCE_APP_SECRET=STANDARD_SECRET)
    # When the operator migrates and runs the daemon
    migrated = cli("migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr
    init_database(pg_url)
    try:
        assert "send" in tables_on(POSTGRES[0], POSTGRES[1], dbname_of(pg_url))
        daemon = DaemonProcess(env, tmp_path, "--processes", "1")
        daemons.append(daemon.start())
        daemon.wait_for("/health/ready", 200, 10)
        # Then sends go out and webhooks are taken and processed
        plan_sends(5)
        assert set(asyncio.run(fire(daemon.port, 5, 5, "mh")).values()) == {202}
        wait_until(lambda: status_counts()["sent"] == 5, 30, "5 sends sent")
        wait_until(lambda: InboundEvent.select().where(InboundEvent.status == "processed").count() == 5, 30,
                   "5 processed events")
        assert console_keys(daemon) == Counter({f"s{i}": 1 for i in range(5)})
        assert daemon.stop() == 0
    finally:
        close_database()


# -- a read-only server listed first ----------------------------------------------------------------


@pytest.fixture
def read_only_cluster() -> Iterator[PgCluster]:
    with pg_cluster(read_only=True) as cluster:
        yield cluster


@pytest.mark.slow
def test_read_write_skips_a_read_only_server_listed_first(pg_url: str, read_only_cluster: PgCluster) -> None:
    # Given a read-only server (a standby, as libpq sees it) with the same database, listed first
    name = dbname_of(pg_url)
    read_only_cluster.create_database(name)
    hosts = (read_only_cluster.host_port(), REAL)
    # Without read-write, libpq takes the first server that answers, and the migration cannot write
    refused = cli("migrate", env=base_env(DATABASE_URL=multi_host(pg_url, *hosts, query="?target_session_attrs=any"),
                                          DB_TIMEOUT_S="2"))
    assert refused.returncode != 0
    # When the URL lists both, with target_session_attrs=read-write or with none (the default)
    for query in ("?target_session_attrs=read-write", ""):
        migrated = cli("migrate", env=base_env(DATABASE_URL=multi_host(pg_url, *hosts, query=query),
                                               DB_TIMEOUT_S="2"))
        assert migrated.returncode == 0, migrated.stderr
    init_database(multi_host(pg_url, *hosts))
    try:
        Contact.create(external_id="written-here")
    finally:
        close_database()
    # Then every write went to the read-write server, none to the read-only one
    assert "send" in tables_on(POSTGRES[0], POSTGRES[1], name)
    assert tables_on(read_only_cluster.host, read_only_cluster.port, name) == set()
    connection = psycopg2.connect(host=POSTGRES[0], port=POSTGRES[1], user="postgres", dbname=name)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM contact WHERE external_id = 'written-here'")
            assert cursor.fetchone() == (1,)
    finally:
        connection.close()


# -- a restart or a failover under a running daemon --------------------------------------------------


def outage_subjects(text: str) -> Counter:
    """How often each of our loops said it started failing (OutageLog's first line)."""
    return Counter(m.group(1) for m in re.finditer(r"\] (?:\S+: )?(.+?) failed: .*\(logged once until", text))


class Fault:
    """Where the daemon's database is, and how the test takes it away and gives it back."""

    def __init__(self, kind: str, pg_url: str, stack: ExitStack) -> None:
        self.kind = kind
        if kind == "server restart":
            # a real fast shutdown and start of a cluster of the test's own: PostgreSQL itself
            # terminates every session ("terminating connection due to administrator command")
            self.cluster = stack.enter_context(pg_cluster())
            self.cluster.create_database(dbname_of(pg_url))
            self.url = self.daemon_url = self.cluster.url(dbname_of(pg_url))
            return
        # through a proxy the test controls; "failover": the URL also lists a second host, the server
        # the first one fails over to (the same server behind another proxy, so the data is there)
        self.primary = stack.enter_context(closing(TcpProxy(POSTGRES)))
        self.standby = stack.enter_context(closing(TcpProxy(POSTGRES)))
        hosts = [self.primary.url_host_port()] + ([self.standby.url_host_port()] if kind == "failover" else [])
        self.url, self.daemon_url = pg_url, multi_host(pg_url, *hosts)

    def cut(self) -> None:
        if self.kind == "server restart":
            self.cluster.stop()
        else:
            self.primary.cut()

    def restore(self) -> None:
        if self.kind == "server restart":
            self.cluster.start()
        elif self.kind == "proxy cut":
            self.primary.restore()
        # a failover never gives the first host back


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["proxy cut", "server restart", "failover"])
def test_sends_and_webhooks_work_again_after_postgresql_returns_without_a_restart(
        kind: str, pg_url: str, amqp_url: str, tmp_path: Path, daemons: list) -> None:
    with ExitStack() as stack:
        stack.callback(close_database)
        fault = Fault(kind, pg_url, stack)
        init_database(fault.url)
        migrate()
        # Given a daemon whose pooled connections all go to a server the test can take away
        env = base_env(DATABASE_URL=fault.daemon_url, BROKER_URL=amqp_url, RATE_SMS="unlimited",
                       DB_TIMEOUT_S="2", SOURCE_APP_SECRET=STANDARD_SECRET)
        daemon = DaemonProcess(env, tmp_path, "--processes", "1")
        daemons.append(daemon.start())
        daemon.wait_for("/health/ready", 200, 10)
        # ...that has used its pool everywhere: sends, webhooks, their processing
        plan_sends(5, prefix="before-")
        assert set(asyncio.run(fire(daemon.port, 6, 6, "before")).values()) == {202}
        wait_until(lambda: status_counts()["sent"] == 5, 30, "the sends before the outage")
        wait_until(lambda: InboundEvent.select().where(InboundEvent.status == "processed").count() == 6, 30,
                   "the events before the outage")
        before = len(daemon.stderr())

        # When every connection to the first host dies (a restart: it comes back after a while;
        # a failover: it never does, and the second host takes over), right after a burst of
        # webhooks, so that the event processor is busy with them when it happens
        assert set(asyncio.run(fire(daemon.port, 300, 30, "burst")).values()) == {202}
        fault.cut()
        if kind != "failover":
            daemon.wait_for("/health/ready", 503, 15)
            ends = time.monotonic() + OUTAGE_S
            while time.monotonic() < ends:
                asyncio.run(fire(daemon.port, 2, 2, f"during{int(ends - time.monotonic())}"))
                time.sleep(0.5)
            fault.restore()
        daemon.wait_for("/health/ready", 200, 30)
        during = daemon.stderr()[before:]
        close_database()  # the test's own connection (outside any pool checkout) died with the others
        init_database(fault.url)
        wait_until(lambda: "recovered after" in daemon.stderr()[before:] or kind == "failover", 30,
                   "the recovery line")
        after_recovery = len(daemon.stderr())

        # Then, with no restart, webhooks are taken and processed and sends go out...
        answers = asyncio.run(fire(daemon.port, 12, 6, "after"))
        assert set(answers.values()) == {202}, Counter(answers.values())
        plan_sends(8, prefix="after-")
        wait_until(lambda: status_counts()["sent"] == 13, 30, "the sends after the outage")
        wait_until(lambda: InboundEvent.select().where(InboundEvent.event_id.startswith("after"),
                                                       InboundEvent.status == "processed").count() == 12, 30,
                   "the events after the outage")
        wait_until(lambda: InboundEvent.select().where(InboundEvent.event_id.startswith("burst"),
                                                       InboundEvent.status == "processed").count() == 300, 60,
                   "the events accepted just before the outage")
        assert console_keys(daemon) == Counter({f"{p}{i}": 1 for p, n in (("before-", 5), ("after-", 8))
                                                for i in range(n)})
        # ...no connection error surfaces once the database is back (a dead pooled connection
        # handed out again would say "connection already closed")...
        after = daemon.stderr()[after_recovery:]
        assert not CONNECTION_ERRORS.search(after), after[-3000:]
        assert "Traceback" not in after, after[-3000:]
        # ...and the outage was told once per failing part, in a few lines
        lines = [line for line in during.splitlines() if line.strip()]
        assert len(lines) <= 15, f"{len(lines)} lines for one outage:\n{during[-5000:]}"
        assert all(n == 1 for n in outage_subjects(during).values()), outage_subjects(during)
        assert daemon.stop() == 0

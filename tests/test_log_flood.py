"""A broker outage is told once, not once per attempt: under a real daemon whose RabbitMQ is cut
off by a TCP proxy, the log carries a line when a part of the daemon loses the broker, a summary
while the outage lasts, and a line when it comes back."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from db.database import close_database, init_database
from db.migrate import migrate
from ground.outage_log import CollapseRepeats, Family, OutageLog
from ops.harness.daemon import DaemonProcess, base_env
from ops.harness.signing import STANDARD_SECRET
from ops.harness.tcp_proxy import TcpProxy
from tests.support.outage import proxied_postgres
from tests.support.rabbitmq import amqp_url_for
from tests.support.sends import plan_sends, status_counts
from tests.support.services import RABBITMQ
from tests.support.waiting import wait_until
from tests.support.webhooks import fire

OUTAGE_S = 13.0  # the length of the outage in the report: the stimulus, not a synchronisation


@pytest.mark.slow
def test_a_broker_outage_is_logged_once_not_once_per_attempt(
        pg_url: str, rabbitmq_vhost: str, amqp_url: str, tmp_path: Path, daemons: list) -> None:
    init_database(pg_url)
    migrate()
    proxy = TcpProxy(RABBITMQ)
    try:
        # Given a daemon with a worker process, on RabbitMQ behind a proxy the test controls
        env = base_env(DATABASE_URL=pg_url, SOURCE_APP_SECRET=STANDARD_SECRET, RATE_SMS="unlimited",
                       BROKER_URL=amqp_url_for(rabbitmq_vhost, proxy.url_host_port()))
        daemon = DaemonProcess(env, tmp_path, "--processes", "1")
        daemons.append(daemon.start())
        daemon.wait_for("/health/ready", 200, 10)
        before = len(daemon.stderr())

        # When RabbitMQ is away for 13 s while sends are planned and webhooks arrive every second
        proxy.cut()
        daemon.wait_for("/health/ready", 503, 15)
        ends = time.monotonic() + OUTAGE_S
        round_ = 0
        while time.monotonic() < ends:
            plan_sends(2, prefix=f"out{round_}-")
            assert set(asyncio.run(fire(daemon.port, 3, 3, f"out{round_}")).values()) == {202}
            round_ += 1
            time.sleep(1.0)
        during = daemon.stderr()[before:]
        proxy.restore()
        daemon.wait_for("/health/ready", 200, 30)
        wait_until(lambda: status_counts()["sent"] == 2 * round_, 60, "the sends planned during the outage")
        after = daemon.stderr()[before:]

        # Then the outage is told in a few lines, not in one line (and one traceback) per attempt
        lines = [line for line in during.splitlines() if line.strip()]
        tracebacks = during.count("Traceback (most recent call last)")
        assert tracebacks <= 2, f"{tracebacks} tracebacks in a {OUTAGE_S:.0f} s outage:\n{during[-5000:]}"
        assert len(lines) <= 12, f"{len(lines)} lines in a {OUTAGE_S:.0f} s outage:\n{during[-5000:]}"
        # ...and it says so when the broker is back
        assert "recovered after" in after[len(during):], after[-3000:]
        assert daemon.stop() == 0
    finally:
        proxy.close()
        close_database()


@pytest.mark.slow
def test_a_database_outage_is_logged_once_not_once_per_tick_or_batch(
        pg_url: str, amqp_url: str, tmp_path: Path, daemons: list) -> None:
    with proxied_postgres(pg_url) as (proxied, proxy):
        # Given a daemon whose PostgreSQL is behind a proxy the test controls
        env = base_env(DATABASE_URL=proxied, BROKER_URL=amqp_url, DB_TIMEOUT_S="2",
                       SOURCE_APP_SECRET=STANDARD_SECRET)
        daemon = DaemonProcess(env, tmp_path, "--processes", "1")
        daemons.append(daemon.start())
        daemon.wait_for("/health/ready", 200, 10)
        before = len(daemon.stderr())
        # When the database is away for 13 s while webhooks keep arriving
        proxy.cut()
        daemon.wait_for("/health/ready", 503, 15)
        ends, round_ = time.monotonic() + OUTAGE_S, 0
        while time.monotonic() < ends:
            assert set(asyncio.run(fire(daemon.port, 3, 3, f"db{round_}")).values()) == {503}
            round_ += 1
            time.sleep(1.0)
        during = daemon.stderr()[before:]
        proxy.restore()
        daemon.wait_for("/health/ready", 200, 30)
        # Then a few lines tell it, not one per tick and one per refused batch
        lines = [line for line in during.splitlines() if line.strip()]
        tracebacks = during.count("Traceback (most recent call last)")
        assert tracebacks <= 2, f"{tracebacks} tracebacks in a {OUTAGE_S:.0f} s outage:\n{during[-5000:]}"
        assert len(lines) <= 12, f"{len(lines)} lines in a {OUTAGE_S:.0f} s outage:\n{during[-5000:]}"
        assert "committing inbound events failed" in during
        # ...and one line says when the database is back
        wait_until(lambda: "scheduler tick recovered after" in daemon.stderr()[before:], 30, "the recovery line")
        assert daemon.stop() == 0

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_outage_is_one_line_a_summary_a_minute_and_one_line_when_it_ends(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.outage")
    clock = Clock()
    outage = OutageLog(logging.getLogger("test.outage"), "relaying sends", summary_every_s=60, clock=clock)
    # Given a retry loop that fails 4 times a second for 150 s
    for _ in range(600):
        outage.failed(ConnectionRefusedError(111, "Connection refused"))
        clock.now += 0.25
    # When it works again, and again
    outage.succeeded()
    outage.succeeded()
    # Then the log has the start, two summaries, and the end; no traceback for a refused connection
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 4, messages
    assert messages[0].startswith("relaying sends failed: ConnectionRefusedError")
    assert "still failing after 60 s: 240 more failure(s)" in messages[1]
    assert "still failing after 120 s" in messages[2]
    assert messages[3] == "relaying sends recovered after 150 s (600 failed attempt(s))"
    assert not any(r.exc_info for r in caplog.records)


def test_an_unexpected_error_keeps_its_traceback_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="test.outage")
    outage = OutageLog(logging.getLogger("test.outage"), "the tick", clock=Clock())
    for _ in range(5):
        try:
            {}["missing"]
        except KeyError as exc:
            outage.failed(exc)
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None


def test_third_party_reconnect_lines_collapse_into_bursts() -> None:
    clock = Clock()
    collapse = CollapseRepeats((Family("pika", logging.ERROR),), summary_every_s=60, quiet_s=30, clock=clock)

    def record(name: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, "Connection refused", (), None)

    passed = []
    for _ in range(244):  # a reconnect loop logging 8 lines a second for 61 s
        for name in ("pika.adapters.blocking_connection", "pika.adapters.utils.connection_workflow"):
            line = record(name)
            if collapse.filter(line):
                passed.append(line.getMessage())
        clock.now += 0.25
    assert len(passed) == 2, passed  # the first line, then one summary after 60 s
    assert "479 similar pika line(s) in the last 60 s; repeating for 60 s" in passed[1]
    assert collapse.filter(record("daemon.jobs"))  # other loggers untouched
    warning = record("pika.channel")
    warning.levelno = logging.WARNING
    assert collapse.filter(warning) and warning.getMessage() == "Connection refused"  # below ERROR: untouched
    clock.now += 31  # quiet for longer than a reconnect interval: the next line starts a new burst
    assert collapse.filter(record("pika.connection"))


def test_actor_failures_collapse_only_when_a_server_is_away() -> None:
    import peewee

    collapse = CollapseRepeats(clock=Clock())

    def failure(exc: BaseException) -> logging.LogRecord:
        try:
            raise exc
        except BaseException as raised:
            info = (type(raised), raised, raised.__traceback__)
        return logging.LogRecord("dramatiq.worker.WorkerThread", logging.ERROR, __file__, 1,
                                 "Failed to process message with unhandled exception.", (), info)

    # an actor's bug is told every time, with its traceback
    bugs = [failure(KeyError("x")) for _ in range(3)]
    assert all(collapse.filter(r) and r.exc_info for r in bugs)
    # the database away: the first failure is told (without a traceback), the rest are counted
    away = [failure(peewee.OperationalError("connection refused")) for _ in range(3)]
    assert [collapse.filter(r) for r in away] == [True, False, False]
    assert away[0].exc_info is None

"""Webhook ingress on a running daemon: durable before the 2xx through a kill -9, and accepting
while RabbitMQ is away, processing once it is back, with no restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from db.database import close_database, init_database
from db.migrate import migrate
from db.models import Contact, InboundEvent
from ops.harness.daemon import DaemonProcess, base_env
from ops.harness.signing import STANDARD_SECRET
from ops.harness.tcp_proxy import TcpProxy
from tests.support.rabbitmq import amqp_url_for
from tests.support.services import RABBITMQ
from tests.support.waiting import wait_until
from tests.support.webhooks import fire


@pytest.mark.slow
def test_every_202_survives_a_kill_9_and_is_processed(pg_url: str, amqp_url: str, tmp_path: Path,
                                                       daemons: list) -> None:
    init_database(pg_url)
    migrate()
    try:
        env = base_env(DATABASE_URL=pg_url, BROKER_URL=amqp_url, SOURCE_APP_SECRET=STANDARD_SECRET)
        first = DaemonProcess(env, tmp_path, "--processes", "1", name="first")
        daemons.append(first.start())
        # When 1,000 signed webhooks arrive 32 at a time and the daemon dies right after the last answer
        answered = asyncio.run(fire(first.port, 1000, 32, "k9"))
        first.kill()
        accepted = {event_id for event_id, status in answered.items() if status == 202}
        assert len(accepted) == 1000
        # Then every accepted event is in the database...
        stored = {e.event_id for e in InboundEvent.select(InboundEvent.event_id)}
        assert accepted <= stored
        # ...and a new daemon processes them all
        second = DaemonProcess(env, tmp_path, "--processes", "1", name="second")
        daemons.append(second.start())
        wait_until(lambda: InboundEvent.select().where(InboundEvent.status == "processed").count() == 1000, 120,
                   "1,000 processed events")
        assert Contact.select().count() == 1000
        assert second.stop() == 0
    finally:
        close_database()


@pytest.mark.slow
def test_webhooks_are_accepted_while_rabbitmq_is_away(pg_url: str, rabbitmq_vhost: str, amqp_url: str,
                                                      tmp_path: Path, daemons: list) -> None:
    init_database(pg_url)
    migrate()
    proxy = TcpProxy(RABBITMQ)
    try:
        env = base_env(DATABASE_URL=pg_url, SOURCE_APP_SECRET=STANDARD_SECRET,
                       BROKER_URL=amqp_url_for(rabbitmq_vhost, proxy.url_host_port()))
        daemon = DaemonProcess(env, tmp_path, "--processes", "1")
        daemons.append(daemon.start())
        proxy.cut()
        daemon.wait_for("/health/ready", 503, 15)
        # When webhooks arrive with the broker away, they are still accepted and stored
        answered = asyncio.run(fire(daemon.port, 50, 8, "out"))
        assert set(answered.values()) == {202}
        assert InboundEvent.select().where(InboundEvent.status == "pending").count() == 50
        # Then once RabbitMQ is back they are processed, with no restart
        proxy.restore()
        wait_until(lambda: InboundEvent.select().where(InboundEvent.status == "processed").count() == 50, 60,
                   "50 processed events")
        assert json.loads(json.dumps(daemon.get("/health/ready")[1]))["status"] == "ready"
        assert daemon.stop() == 0
    finally:
        proxy.close()
        close_database()


def test_every_webhook_batch_wakes_the_event_processor_not_only_the_first_in_50_ms(
        pg_url: str, amqp_url: str, tmp_path: Path, daemons: list) -> None:
    # Given a daemon on RabbitMQ whose scheduler ticks once an hour: only the side server's wakes
    # (at most one message per 50 ms) start the event processor
    init_database(pg_url)
    migrate()
    try:
        env = base_env(DATABASE_URL=pg_url, BROKER_URL=amqp_url, SOURCE_APP_SECRET=STANDARD_SECRET,
                       SCHEDULER_INTERVAL_S="3600")
        daemon = DaemonProcess(env, tmp_path, "--processes", "1")
        daemons.append(daemon.start())
        # When 200 webhooks arrive 8 at a time (many group commits, several within 50 ms of a wake)
        answered = asyncio.run(fire(daemon.port, 200, 8, "wake"))
        assert sorted(set(answered.values())) == [202]
        # Then every one is processed within seconds: a commit inside the 50 ms gets the next wake
        # (it was dropped, and its events waited for the tick)
        wait_until(lambda: InboundEvent.select().where(InboundEvent.status == "processed").count() == 200, 15,
                   "200 processed events")
        assert daemon.stop() == 0
    finally:
        close_database()
